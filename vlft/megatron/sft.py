"""`vlft megatron sft`, top to bottom, in each torchrun worker: the parallel groups, the data (vlft sft's pipeline:
encoded once, packed, drawn in vlft sft's order), the model (Megatron-Core's GPTModel with the HF vision tower,
filled from the HF files of --model or the checkpoint of --load), what trains, Megatron-Core's engine, the loop,
the checkpoints.

Everything that makes a step differ from Megatron-LM's own training loop, and where it lives:
  - the model: vlft/megatron/model.py (local layer spec; `packed_attention.py` keeps packed samples apart;
    Qwen3-VL's interleaved mRoPE); its TP weights marked as Megatron's initialisers would
    (`mark_tensor_parallel_attributes`).
  - the inputs: batches.py (`forward_step`: the row's sample boundaries as PackedSeqParams, mRoPE positions,
    shifted labels with ignored tokens masked) and vision.py (the vision tower's tokens scattered into the
    decoder input, deepstack features added by forward hooks).
  - what trains: engine.py (`freeze`: vlft's --freeze_vit / --freeze_aligner / --freeze_llm / --freeze_router).
  - on a machine without CUDA: cpu.py (`cpu_training`: Megatron-Core's hard-coded CUDA calls run on the CPU).
"""

from __future__ import annotations

import json
import logging
import os
import time
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch

from vlft.arguments import public_args
from vlft.errors import VlftError
from vlft.megatron.arguments import MegatronSftArguments
from vlft.megatron.batches import RowOrder, StepBatches, StepShape, VisionTokenIds, forward_step
from vlft.megatron.train_checkpoint import TrainingPosition

logger = logging.getLogger("vlft")


def local_device() -> torch.device:
    """This worker's GPU (by LOCAL_RANK), or the CPU on a machine without CUDA."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def run_megatron_sft(args: MegatronSftArguments, run_dir: Path) -> Path:
    """Train as the arguments say, writing checkpoints and logs into `run_dir`; returns it."""
    from vlft.megatron.convert import model_parallel
    from vlft.megatron.cpu import cpu_training
    from vlft.train.model import resolve_dtype

    device = local_device()
    dtype = resolve_dtype(args.torch_dtype, device.type == "cuda")
    with model_parallel(args.sizes, device, data_parallel=True), cpu_training(device):
        _train(args, Path(run_dir), device, dtype)
    return Path(run_dir)


def _train(args: MegatronSftArguments, run_dir: Path, device: torch.device, dtype: torch.dtype) -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from vlft.data.collator import FixedRowShape, PaddingFreeCollator, VisionTokens
    from vlft.data.dataset import PixelsOnFetch
    from vlft.data.pipeline import build_encoder
    from vlft.megatron import train_checkpoint
    from vlft.megatron.checkpoint import read_checkpoint
    from vlft.megatron.convert import Converter
    from vlft.megatron.engine import build_engine, freeze, moe_overrides, training_overrides
    from vlft.megatron.model import mark_tensor_parallel_attributes
    from vlft.megatron.plan import ConversionPlan, text_and_tied
    from vlft.train.sft import encoded_samples, pack, split_samples

    main = dist.get_rank() == 0
    source = read_checkpoint(Path(args.load)) if args.load else None

    # 1. Data: rank 0 encodes first, the others read its cache; rows are packed as vlft sft packs them.
    encoder, model_dir, family = build_encoder(args)
    if not main:
        dist.barrier()
    train, _ = encoded_samples(args, encoder, model_dir, args.dataset)
    val = encoded_samples(args, encoder, model_dir, args.val_dataset)[0] if args.val_dataset else []
    if main:
        dist.barrier()
    if args.split_dataset_ratio and not val:
        train, val = split_samples(train, args.split_dataset_ratio, args.seed)
    rows = pack(train, args.row_length, args.seed) if args.packing else train
    val_rows = pack(val, args.row_length, args.seed) if args.packing and val else val

    # 2. The model: this rank's shard, from the HF files of --model or the checkpoint of --load.
    hf_config = source.args["hf_config"] if source else json.loads((model_dir / "config.json").read_text())
    plan = ConversionPlan("to_mcore", family.name, hf_config, str(run_dir), str(dtype).removeprefix("torch."),
                          args.sizes, model_dir=str(model_dir))
    moe = family.has_moe_layers(text_and_tied(hf_config)[1])
    overrides = {**training_overrides(args, device.type == "cuda"), **(moe_overrides(args) if moe else {})}
    converter = Converter(plan, args.sizes, dtype, device, overrides)
    model = converter.model.train()
    if source is None:
        converter.fill_from_hf(model_dir, dtype)
    base_model = args.model or (source.args.get("model") if source else None) or str(model_dir)
    lora = (add_adapters(args, model, converter, family, base_model, dtype, device) if args.train_type == "lora"
            else None)
    if lora is None:
        freeze(model, family, args)
    mark_tensor_parallel_attributes(model)

    # 3. The engine, and where training stands.
    data_parallel, data_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    shape = StepShape(args.global_batch_size, args.micro_batch_size, data_parallel)
    train_iters = args.train_iters or max(1, len(rows) * args.max_epochs // args.global_batch_size)
    warmup = (round(args.lr_warmup_fraction * train_iters) if args.lr_warmup_fraction is not None
              else args.lr_warmup_iters)
    engine = build_engine(model, converter.config, args, dtype, train_iters, warmup, gloo_groups=device.type == "cuda")
    position = TrainingPosition()
    if source is not None:
        position = train_checkpoint.load(source, engine.ddp, engine.optimizer, engine.scheduler,
                                         weights_only=args.finetune, load_optimizer=not args.no_load_optim,
                                         distributed_optimizer=args.use_distributed_optimizer)
    if main:
        write_run_files(run_dir, args, plan, model_dir)
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.warning(f"megatron sft: {len(train)} samples in {len(rows)} rows, {train_iters} steps of "
                       f"{args.global_batch_size} rows ({shape.micro_batches} micro-batches of {args.micro_batch_size} "
                       f"on each of {data_parallel} data-parallel ranks); TP {args.tensor_model_parallel_size}, "
                       f"PP {args.pipeline_model_parallel_size}, EP {args.expert_model_parallel_size}; {trained:,} "
                       f"trained parameters on rank 0; from step {position.iteration}")

    # 4. The loop.
    tokens = VisionTokens(encoder.image_pad_id, encoder.video_pad_id, encoder.tokenizer.pad_token_id)
    # The allgather dispatcher gathers equally long rows from every expert-parallel rank: rows are padded to
    # --max_length x --micro_batch_size there (the padding is a segment of its own, with no loss).
    equal_rows = moe and args.expert_model_parallel_size > 1 and args.moe_token_dispatcher_type == "allgather"
    fixed = FixedRowShape(args.row_length * args.micro_batch_size, args.micro_batch_size * max(
        len(row) if isinstance(row, list) else 1 for row in rows + val_rows) + 2) if equal_rows else None
    collator = PaddingFreeCollator(family, tokens, getattr(converter.hf_config.vision_config, "tokens_per_second",
                                                           None), fixed)
    loader = torch.utils.data.DataLoader(
        PixelsOnFetch(rows, encoder), collate_fn=collator, num_workers=args.num_workers,
        batch_sampler=StepBatches(RowOrder(len(rows), args.seed), shape, data_rank, position.iteration, train_iters))
    batches = CountedBatches(iter(loader))
    step = partial(forward_step, VisionTokenIds(converter.hf_config.image_token_id,
                                                converter.hf_config.video_token_id), device,
                   args.calculate_per_token_loss)
    forward_backward = get_forward_backward_func()
    log = TrainingLog(run_dir / "logging.jsonl", main)
    applied = position.applied_steps
    for iteration in range(position.iteration, train_iters):
        started = time.perf_counter()
        engine.ddp.zero_grad_buffer()
        engine.optimizer.zero_grad()
        outputs = forward_backward(forward_step_func=step, data_iterator=batches, model=[engine.ddp],
                                   num_microbatches=shape.micro_batches, seq_length=args.row_length or 1,
                                   micro_batch_size=1, forward_only=False)
        ok, grad_norm, _ = engine.optimizer.step()
        if ok:
            engine.scheduler.step(1)
            applied += 1
        done = iteration + 1
        loss, real_tokens = step_loss(outputs, batches.take_tokens())
        if done % args.log_interval == 0 or done == train_iters:
            log.write({"step": done, "epoch": done * args.global_batch_size / len(rows), "loss": loss,
                       "grad_norm": float(grad_norm) if grad_norm is not None else None,
                       "learning_rate": engine.optimizer.param_groups[0]["lr"],
                       "tokens_per_second": real_tokens / (time.perf_counter() - started), "skipped_step": not ok,
                       **memory_record(device)})
        if val_rows and args.eval_interval and (done % args.eval_interval == 0 or done == train_iters):
            log.write({"step": done, "eval_loss": evaluate(val_rows, encoder, collator, shape, data_rank, step,
                                                          engine, args)})
        if (args.save_interval and done % args.save_interval == 0) or done == train_iters:
            path = train_checkpoint.save(run_dir, TrainingPosition(done, applied), engine.ddp, engine.optimizer,
                                         engine.scheduler, args.sizes, with_optimizer=not args.no_save_optim)
            if lora is not None:
                path = write_peft_checkpoint(run_dir / f"checkpoint-{done}", lora, model, converter, args, model_dir)
            if main:
                logger.warning(f"saved {path}")


class Lora(NamedTuple):
    settings: object  # lora.LoraSettings
    adapted: list[str]  # the HF modules adapted, relative to the decoder layers
    base_model: str  # as the written adapters name their base: --model, or the one --load was made from


def add_adapters(args: MegatronSftArguments, model, converter, family, base_model: str, dtype: torch.dtype,
                 device: torch.device) -> Lora:
    """LoRA adapters on the language model (everything else frozen), from --adapters or PEFT's initialisation
    (seeded by --seed, the same on every data-parallel rank)."""
    from vlft.megatron.lora import add_lora, lora_settings
    from vlft.megatron.peft_adapter import load_peft_tensors, read_adapter

    try:
        settings = lora_settings(args, converter.layout.layer)
    except ValueError as e:
        raise VlftError(str(e)) from None
    torch.manual_seed(args.seed)
    adapted = add_lora(model, converter.text_config, converter.layout.layer, family.modules.experts, settings, dtype,
                       device)
    if args.adapters:
        try:
            load_peft_tensors(model, family, converter.layout.layer, read_adapter(Path(args.adapters[0])),
                              args.adapters[0])
        except ValueError as e:
            raise VlftError(str(e)) from None
    return Lora(settings, adapted, base_model)


def write_peft_checkpoint(directory: Path, lora: Lora, model, converter, args: MegatronSftArguments,
                          model_dir: Path) -> Path:
    """The run's adapters as a PEFT adapter dir with vlft sft's checkpoint files (args.json naming the base model,
    the processor files), for vlft infer --adapters and vlft export --merge_lora (collective)."""
    import torch.distributed as dist

    from vlft.megatron.checkpoint import copy_processor_files
    from vlft.megatron.peft_adapter import peft_tensors, write_adapter

    tensors = peft_tensors(model, converter.family, converter.layout.layer,
                           getattr(converter.text_config, "num_experts", 0) or 0)
    if dist.get_rank() == 0:
        write_adapter(directory, tensors, lora.adapted, converter.family, converter.layout.layer, lora.settings,
                      lora.base_model, converter.config.params_dtype)
        copy_processor_files(model_dir, directory)
        (directory / "args.json").write_text(json.dumps({**public_args(args), "model": lora.base_model}, indent=2)
                                              + "\n")
    dist.barrier()
    return directory


class CountedBatches:
    """The loader's micro-batches, counting their tokens (real ones: rows are not padded)."""

    def __init__(self, batches):
        self.batches, self.tokens = batches, 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self.batches)
        self.tokens += batch["input_ids"].numel() - batch.get("row_padding", 0)
        return batch

    def take_tokens(self) -> int:
        tokens, self.tokens = self.tokens, 0
        return tokens


def step_loss(outputs: list[dict], tokens: int) -> tuple[float | None, int]:
    """(the step's mean loss over every trained token, the tokens read by every data-parallel rank)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    total = torch.zeros(3, dtype=torch.float64)
    if parallel_state.is_pipeline_last_stage():
        for output in outputs:
            total[:2] += output["lm loss"].detach().to("cpu", torch.float64)
    total[2] = tokens
    if torch.cuda.is_available():
        total = total.cuda()
    dist.all_reduce(total, group=parallel_state.get_data_parallel_group())
    loss = (total[0] / total[1]).item() if total[1] > 0 else None
    return loss, int(total[2].item())


def evaluate(val_rows: list, encoder, collator, shape: StepShape, data_rank: int, step, engine,
             args: MegatronSftArguments) -> float | None:
    """The mean loss over the validation rows (each data-parallel rank its share; --eval_iters micro-batches at
    most)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from vlft.data.dataset import PixelsOnFetch

    per_rank = len(val_rows) // (shape.micro * shape.data_parallel)
    micro_batches = per_rank if args.eval_iters < 0 else min(per_rank, args.eval_iters)
    if micro_batches == 0:
        return None
    indices = [[data_rank * shape.micro + m * shape.micro * shape.data_parallel + j for j in range(shape.micro)]
               for m in range(micro_batches)]
    loader = torch.utils.data.DataLoader(PixelsOnFetch(val_rows, encoder), batch_sampler=indices,
                                         collate_fn=collator, num_workers=0)
    engine.ddp.eval()
    try:
        with torch.no_grad():
            outputs = get_forward_backward_func()(
                forward_step_func=step, data_iterator=iter(loader), model=[engine.ddp], num_microbatches=micro_batches,
                seq_length=args.row_length or 1, micro_batch_size=1, forward_only=True)
    finally:
        engine.ddp.train()
    return step_loss(outputs, 0)[0]


def memory_record(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    return {"memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)}


class TrainingLog:
    """logging.jsonl (vlft sft's keys) and the console, on rank 0."""

    def __init__(self, path: Path, main: bool):
        self.path, self.main = path, main

    def write(self, record: dict) -> None:
        if not self.main:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        logger.warning(" ".join(f"{key} {value:.6g}" if isinstance(value, float) else f"{key} {value}"
                                for key, value in record.items()))


def write_run_files(run_dir: Path, args: MegatronSftArguments, plan, model_dir: Path) -> None:
    """args.json (the run's arguments, with what `vlft export --mcore_model RUN --to_hf true` reads: the family,
    dtype, parallel sizes and the model's config.json) and the processor files."""
    from vlft.megatron.checkpoint import copy_processor_files, write_args
    from vlft.megatron.plan import model_record

    run_dir.mkdir(parents=True, exist_ok=True)
    write_args(run_dir, {**public_args(args), **model_record(plan)})
    copy_processor_files(model_dir, run_dir)


def check_world(args: MegatronSftArguments, world_size: int) -> list[str]:
    """Problems of the parallel sizes and the batch against the number of processes."""
    from vlft.megatron.parallel import replica_problems

    problems = replica_problems(args.sizes, world_size)
    if problems:
        return problems
    data_parallel = world_size // (args.tensor_model_parallel_size * args.pipeline_model_parallel_size)
    if args.global_batch_size % (args.micro_batch_size * data_parallel):
        return [f"--global_batch_size {args.global_batch_size} is not a multiple of --micro_batch_size "
                f"{args.micro_batch_size} x {data_parallel} data-parallel ranks"]
    return []


def check_model(args: MegatronSftArguments, family, hf_config: dict, cuda: bool) -> list[str]:
    """Problems of the model against the arguments (family, parallel split, engine), before anything loads."""
    from vlft.megatron.layouts import layout_of
    from vlft.megatron.parallel import split_problems
    from vlft.megatron.plan import text_and_tied

    problems: list[str] = []
    try:
        layout_of(family)
    except VlftError as e:
        return [str(e)]
    _, text_config, tied = text_and_tied(hf_config)
    problems += split_problems(args.sizes, text_config, family, tied)
    if args.train_type == "lora" and family.hybrid:
        problems.append(f"--train_type lora on {family.name} is not in vlft megatron sft yet (its gated attention and "
                        "linear-attention projections are laid out otherwise): train it in full here, or with LoRA "
                        "in vlft sft")
    if args.train_type == "lora" and args.tensor_model_parallel_size > 1:
        problems.append("--train_type lora runs with --tensor_model_parallel_size 1 in vlft megatron sft (expert and "
                        "data parallelism split the work)")
    if args.pipeline_model_parallel_size > 1:
        problems.append("--pipeline_model_parallel_size above 1 is not in vlft megatron sft yet (tensor, expert and "
                        "data parallelism are)")
    moe = family.has_moe_layers(text_config)
    if moe and args.tensor_model_parallel_size > 1:
        problems.append("MoE layers train with --tensor_model_parallel_size 1 (Megatron-Core's local spec needs "
                        "sequence parallelism for MoE under TP, and its norms refuse it): use "
                        "--expert_model_parallel_size N for the experts, data parallelism for the rest")
    if moe and args.expert_model_parallel_size > 1 and args.moe_token_dispatcher_type == "allgather" and (
            args.max_length is None):
        problems.append("--expert_model_parallel_size above 1 with the allgather dispatcher pads rows to "
                        "--max_length: give it (or --moe_token_dispatcher_type alltoall on GPUs)")
    if moe and not cuda and args.moe_token_dispatcher_type == "alltoall":
        problems.append("--moe_token_dispatcher_type alltoall runs on GPUs only: use allgather on the CPU")
    return problems
