"""The two-process side of tests/train/test_sequence_parallel.py, started by it under torchrun (gloo, CPU): one launch
(one process group, the imports paid once) does two things.

1. For each case of CASES_FILE (a tiny model and a packed row the test collated), rank r of the 2-rank sequence group
   runs the LoRA model on its half of the row: it writes the whole row's per-token losses (gathered from both
   ranks) and the LoRA gradients after the backward of the sequence-parallel loss, averaged over the world as DDP
   does, to OUT/<case>.pt (rank 0). The cases of COMPILED again with the decoder layers compiled (compile.py, its
   aot_eager backend: dynamo's capture and autograd split without generating kernels) and gradient checkpointing on,
   one model per family over its rows in turn (the second row length recompiles with dynamic shapes), to
   OUT/<case>-compiled.pt with dynamo's graph breaks and how many layers compiled whole.
2. `vlft sft --sequence_parallel_size 2 SFT_ARGS...` three times (SFT_RUNS): with `--chunked_loss true` into OUT/sft
   (the chunked loss scores the shards in training, the model's logits in evaluation: both sequence-parallel loss
   paths), with `--deepspeed zero2 --chunked_loss true` into OUT/sft_zero2 and with `--deepspeed zero3` into
   OUT/sft_zero3.

    python -m torch.distributed.run --nproc_per_node 2 tests/train/sequence_parallel_worker.py OUT CASES SFT_ARGS...

`lora_model` builds the same model in this process and in the test's (the ground truth).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn.functional as F

LORA = SimpleNamespace(train_type="lora", freeze_vit=True, freeze_aligner=True, freeze_llm=False,
                       target_modules=["all-linear"], lora_rank=4, lora_alpha=8, lora_dropout=0.0, use_dora=False,
                       use_rslora=False, modules_to_save=[], freeze_router=True)


# The `vlft sft --sequence_parallel_size 2` runs: output dir under OUT -> their flags. The chunked loss where vlft
# allows it (not under ZeRO-3, which partitions the output head outside its forward): ZeRO-3 runs the model's logits.
SFT_RUNS = {"sft": ["--chunked_loss", "true"], "sft_zero2": ["--deepspeed", "zero2", "--chunked_loss", "true"],
            "sft_zero3": ["--deepspeed", "zero3"]}


# The families whose layers the launch also runs compiled, and their rows in the order they run (dense: text, then an
# image row of another length; MoE and the hybrid Qwen3.5: one row each).
COMPILED = {"qwen3_vl": ["text", "image"], "qwen3_vl_moe": ["image"], "qwen3_5": ["text"]}


def lora_model(model_dir: Path, checkpointing: bool = False):
    """The tiny model in float32 with LoRA on every LLM linear, both LoRA matrices drawn from one seeded generator
    (the same in every process; with B at zero, as PEFT starts it, A's gradients would be zero and prove nothing).
    A hybrid family's linear-attention convolutions train too: under sequence parallelism each rank convolves the
    whole row of its channels, so their gradients come together only in the average over the ranks. `checkpointing`:
    the decoder layers recompute their activations (as vlft sft's do; a compiled layer's graph holds its checkpoint)."""
    from vlft.families import detect_family
    from vlft.train.model import enable_gradient_checkpointing, load_model
    from vlft.train.tuners import prepare_trainable

    family = detect_family(model_dir)
    model = load_model(model_dir, torch.float32, "sdpa")
    enable_gradient_checkpointing(model, llm=checkpointing, vit=False)
    model = prepare_trainable(model, family, LORA)
    generator = torch.Generator().manual_seed(0)
    convolution = f".{family.modules.linear_attention}.conv1d."
    for name, param in sorted(model.named_parameters()):
        if "lora_" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.1
        elif convolution in name:
            param.requires_grad_(True)
    return model


def lora_grads(model) -> dict[str, torch.Tensor]:
    """The gradients of what trains: the LoRA matrices (and a hybrid family's convolutions, lora_model)."""
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def sequence_parallel_model(model_dir: Path, checkpointing: bool = False):
    """lora_model with this rank's SequenceParallel attached (a sequence group of 2)."""
    from vlft.families import family_of
    from vlft.train.sequence_parallel import SequenceParallel, new_sequence_group

    model = lora_model(model_dir, checkpointing)
    sequence = SequenceParallel(new_sequence_group(2), family_of(model).visual_token_inputs)
    sequence.attach(model)
    return model, sequence


def train_step(model, sequence, batch: dict) -> dict:
    """One forward and backward of the sequence-parallel loss on this rank's half of the row: the whole row's
    per-token losses (gathered from both ranks) and the gradients averaged over the world, as DDP does."""
    model.zero_grad(set_to_none=True)
    batch = dict(batch)
    targets = sequence.targets(batch.pop("labels"))
    logits = model(**batch).logits
    token_losses = F.cross_entropy(logits[0].float(), targets[0], ignore_index=-100, reduction="none")
    sequence.loss(token_losses.sum(), targets).backward()
    gathered = [torch.empty_like(token_losses) for _ in range(sequence.shard.size)]
    dist.all_gather(gathered, token_losses.detach(), group=sequence.shard.group)
    grads = lora_grads(model)
    for grad in grads.values():  # as DDP: the average over the world's ranks
        dist.all_reduce(grad)
        grad /= dist.get_world_size()
    return {"token_losses": torch.cat(gathered), "grads": grads}


def run_case(case: dict, out: Path) -> None:
    model, sequence = sequence_parallel_model(Path(case["model_dir"]))
    result = train_step(model, sequence, case["batch"])
    if dist.get_rank() == 0:
        torch.save(result, out / f"{case['name']}.pt")


def run_compiled(family: str, cases: dict[str, dict], out: Path) -> None:
    """The family's COMPILED rows through one model whose decoder layers compile (aot_eager), with what dynamo
    counted: its graph breaks, and (layers, layers compiled whole)."""
    from vlft.train.compile import compile_decoder_layers

    rows = [cases[f"{family}-{row}"] for row in COMPILED[family]]
    model, sequence = sequence_parallel_model(Path(rows[0]["model_dir"]), checkpointing=True)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    layers = compile_decoder_layers(model, backend="aot_eager")
    for case in rows:
        result = train_step(model, sequence, case["batch"])
        counters = torch._dynamo.utils.counters
        result.update(graph_breaks=dict(counters["graph_break"]), graphs=counters["stats"]["unique_graphs"],
                      layers=layers)
        if dist.get_rank() == 0:
            torch.save(result, out / f"{case['name']}-compiled.pt")


if __name__ == "__main__":
    out, cases, *sft_args = sys.argv[1:]
    out = Path(out)
    dist.init_process_group("gloo")
    cases = {case["name"]: case for case in torch.load(cases, weights_only=False)}
    for case in cases.values():
        run_case(case, out)
    for family in COMPILED:
        run_compiled(family, cases, out)
    from accelerate.state import AcceleratorState
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from vlft.cli.main import main

    for name, extra in SFT_RUNS.items():
        # Each run its own accelerate state: an initialised AcceleratorState keeps the first run's (no) DeepSpeed
        # plugin, and transformers' global DeepSpeed config the last run's ZeRO stage.
        AcceleratorState._reset_state(True)
        unset_hf_deepspeed_config()
        argv = ["sft", *sft_args, "--sequence_parallel_size", "2", *extra, "--output_dir", str(out / name),
                "--add_version", "false"]
        if main(argv) != 0:
            sys.exit(f"vlft {' '.join(argv)} failed")
