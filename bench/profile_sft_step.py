"""Where a `vlft sft` training step spends its time: the same model, data, LoRA and packed rows as
bench/sft_qwen3_vl_4b.py, stepped in-process (forward, backward, AdamW) and timed by part: collate,
host-to-device copy, vision tower, LLM forward, loss, backward, optimizer; then torch.profiler's top
CUDA kernels. GPU machine; one command:

    python bench/profile_sft_step.py --workdir /tmp/vlft-bench [--max_length 4096] [--steps 6]

`--shape qwen3-vl-30b-a3b` steps the MoE (LoRA on attention and experts; H200: 60 GB of weights).
`--tiny` runs the same code on the built-in tiny Qwen3-VL (CPU check of the script itself).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_qwen3_vl_4b import build_model, write_data  # noqa: E402


def qwen3_vl_30b_a3b_config():
    """Qwen3-VL-30B-A3B-Instruct's architecture: 48 layers, hidden 2048, 32 heads / 4 KV heads of 128, 128 experts
    of 768, top-8, untied embeddings; the 27-block SigLIP-2 vision tower of the Qwen3-VL 8B/30B models."""
    from transformers import Qwen3VLMoeConfig

    text = dict(vocab_size=151936, hidden_size=2048, num_hidden_layers=48, num_attention_heads=32,
                num_key_value_heads=4, head_dim=128, intermediate_size=6144, moe_intermediate_size=768,
                num_experts=128, num_experts_per_tok=8, decoder_sparse_step=1, max_position_embeddings=262144,
                rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151645, tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                                 "mrope_interleaved": True})
    vision = dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, patch_size=16,
                  temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=2304, out_hidden_size=2048,
                  deepstack_visual_indexes=[8, 16, 24], hidden_act="gelu_pytorch_tanh")
    return Qwen3VLMoeConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, image_token_id=151655,
                            video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)


def write_config_only(model_dir: Path, config) -> None:
    """A model dir with the config, the real tokenizer and the Qwen3-VL processor, and no weights."""
    from vlft.model.tiny import build_processor
    from vlft.model.tokenizer import build_qwen_tokenizer

    if (model_dir / "config.json").is_file():
        return
    config.save_pretrained(model_dir)
    build_processor("qwen3_vl_moe", build_qwen_tokenizer()).save_pretrained(model_dir)


def random_model(model_dir: Path, dtype, attention: str):
    """The model of `model_dir`'s config with random weights made on the GPU, set up as vlft's load_model does."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from vlft.train.attention import (ATTENTION_NAME, attach_row_boundaries, register_varlen_attention,
                                      use_varlen_in_vision_tower)

    if attention == ATTENTION_NAME:
        register_varlen_attention()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model_dir), dtype=dtype,
                                                        attn_implementation=attention)
    model.config.use_cache = False
    model.config.text_config.use_cache = False
    if attention == ATTENTION_NAME:
        attach_row_boundaries(model)
        use_varlen_in_vision_tower(model)
    return model


class PartTimer:
    """Forward time of named submodules, from CUDA events (or perf_counter on CPU) set by forward hooks."""

    def __init__(self, cuda: bool):
        self.cuda, self.open, self.spans = cuda, {}, defaultdict(list)

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def watch(self, name: str, module: torch.nn.Module) -> None:
        module.register_forward_pre_hook(lambda *_: self.open.__setitem__(name, self._now()))
        module.register_forward_hook(lambda *_: self.spans[name].append((self.open.pop(name), self._now())))

    def totals_ms(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
            out = {k: sum(a.elapsed_time(b) for a, b in v) for k, v in self.spans.items()}
        else:
            out = {k: 1000 * sum(b - a for a, b in v) for k, v in self.spans.items()}
        self.spans.clear()
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vlft-bench"))
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--max_length", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--no_gc", action="store_true", help="without gradient checkpointing")
    parser.add_argument("--lora_dropout", type=float, default=None, help="default: vlft's (0.05; 0 on experts)")
    parser.add_argument("--shape", choices=["qwen3-vl-4b", "qwen3-vl-30b-a3b"], default="qwen3-vl-4b",
                        help="30b-a3b: random bf16 weights made on the GPU (never written to disk)")
    parser.add_argument("--no_profile", action="store_true", help="skip the torch.profiler kernel table")
    parser.add_argument("--torch_compile", action="store_true", help="as `vlft sft --torch_compile true`")
    parser.add_argument("--cpp_wrapper", action="store_true",
                        help="with --torch_compile: Inductor's C++ launch wrapper instead of its Python one "
                             "(torch._inductor.config.cpp_wrapper), for a step the host bounds")
    parser.add_argument("--compile_vision", action="store_true",
                        help="with --torch_compile: also compile the frozen vision blocks, as `vlft sft "
                             "--torch_compile true` now does (without it: the decoder layers only)")
    parser.add_argument("--cuda_graphs", action="store_true",
                        help="with --torch_compile: rows padded to --max_length and the decoder layers replayed as "
                             "CUDA graphs, as `vlft sft --torch_compile_mode reduce-overhead`")
    parser.add_argument("--vision_per_image", action="store_true",
                        help="the vision tower as before session 4: one attention call per image, a host read per block")
    args = parser.parse_args()

    from vlft.arguments import SftArguments
    from vlft.cli.parsing import parse_args
    from vlft.data.collator import FixedRowShape, PaddingFreeCollator, VisionTokens
    from vlft.data.dataset import PixelsOnFetch
    from vlft.train.model import enable_gradient_checkpointing, load_model, resolve_attention, resolve_dtype
    from vlft.train.sft import encoded_samples, pack
    from vlft.train.tuners import prepare_trainable
    from vlft.data.pipeline import build_encoder

    cuda = torch.cuda.is_available()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        model = "vlft/tiny-qwen3-vl"
    elif args.shape == "qwen3-vl-30b-a3b":
        model = str(args.workdir / "qwen3-vl-30b-a3b-config")
        write_config_only(Path(model), qwen3_vl_30b_a3b_config())
    else:
        model = str(args.workdir / "qwen3-vl-4b-random")
        build_model(Path(model))
    data = write_data(args.workdir / "data", args.samples)
    dropout = [] if args.lora_dropout is None else ["--lora_dropout", str(args.lora_dropout)]
    sft = parse_args(SftArguments, ["--model", model, "--dataset", str(data), "--packing", "true",
                                    "--max_length", str(args.max_length), "--dataset_num_proc", "8", *dropout],
                     "profile")
    encoder, model_dir, family = build_encoder(sft)
    t0 = time.perf_counter()
    samples, _ = encoded_samples(sft, encoder, model_dir, sft.dataset)
    packed = PixelsOnFetch(pack(samples, args.max_length, seed=0), encoder)  # as `vlft sft` fetches them
    rows = [packed[i] for i in range(min(len(packed), args.warmup + args.steps))]
    print(f"encoded {len(samples)} samples into {len(packed)} rows in {time.perf_counter() - t0:.1f} s", flush=True)

    dtype = resolve_dtype(None, cuda)
    attention, _ = resolve_attention(None, True, cuda)
    if args.shape == "qwen3-vl-30b-a3b":
        net = random_model(model_dir, dtype, attention)
    else:
        net = load_model(model_dir, dtype, attention)
    if args.vision_per_image:
        from vlft.train.attention import ATTENTION_NAME

        net.model.visual.config._attn_implementation = ATTENTION_NAME
    enable_gradient_checkpointing(net, llm=not args.no_gc, vit=not args.no_gc)
    net = prepare_trainable(net, family, sft)
    if args.torch_compile:
        from vlft.train.compile import compile_decoder_layers, compile_frozen_vision_blocks

        if args.cpp_wrapper:
            from torch._inductor import config as inductor_config

            inductor_config.cpp_wrapper = True
        compile_decoder_layers(net, mode="reduce-overhead" if args.cuda_graphs else None)
        if args.compile_vision:
            compile_frozen_vision_blocks(net)
    device = torch.device("cuda" if cuda else "cpu")
    net.to(device).train()
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4, fused=cuda)
    tokens = VisionTokens(encoder.image_pad_id, encoder.video_pad_id, encoder.tokenizer.pad_token_id)
    fixed_shape = FixedRowShape.for_rows(packed.items, args.max_length, 1) if args.cuda_graphs else None
    collator = PaddingFreeCollator(family, tokens, getattr(net.config.vision_config, "tokens_per_second", None),
                                   fixed_shape)

    base = net.get_base_model()
    timer = PartTimer(cuda)
    timer.watch("vision tower (forward)", base.model.visual)
    timer.watch("LLM decoder (forward)", base.model.language_model)
    timer.watch("lm_head (forward)", base.lm_head)
    for name, module in base.named_modules():  # not inside compiled layers: a hook there breaks their graph
        if name.endswith("mlp.experts") and not args.torch_compile:
            timer.watch("MoE experts, all layers (forward)", module)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    table = defaultdict(list)
    real_tokens = []
    losses = []

    def step(row) -> None:
        if args.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # as SftTrainer.training_step
        t = time.perf_counter()
        batch = collator([row])
        table["collate (CPU)"].append(1000 * (time.perf_counter() - t))
        t = time.perf_counter()
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        sync()
        table["host-to-device"].append(1000 * (time.perf_counter() - t))
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):  # as the Trainer does
            loss = net(**batch).loss
        sync()
        table["forward total"].append(1000 * (time.perf_counter() - t))
        losses.append(loss.detach())
        t = time.perf_counter()
        loss.backward()
        sync()
        table["backward (incl. recompute)"].append(1000 * (time.perf_counter() - t))
        t = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        table["optimizer"].append(1000 * (time.perf_counter() - t))
        for name, ms in timer.totals_ms().items():
            table[name].append(ms)
        real_tokens.append(batch["input_ids"].numel() - batch.get("row_padding", 0))

    for row in rows[:args.warmup]:
        step(row)
    table.clear(), real_tokens.clear()
    started = time.perf_counter()
    for row in rows[args.warmup:args.warmup + args.steps]:
        step(row)
    elapsed = time.perf_counter() - started
    print("losses, every step:", " ".join(f"{float(v):.4f}" for v in losses))
    print(f"\n{args.steps} steps, {sum(real_tokens):,} tokens, {sum(real_tokens) / elapsed:,.0f} tokens/s "
          f"(in-process loop, no data-loader workers)")
    print("\n| part | ms per step (median) |\n| --- | --- |")
    for name, values in table.items():
        print(f"| {name} | {statistics.median(values):.1f} |")
    if cuda:
        print(f"\npeak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")

    if args.no_profile:
        return 0
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    profiled = rows[args.warmup:args.warmup + min(3, args.steps)]
    with profile(activities=activities) as prof:
        sync()
        started = time.perf_counter()
        for row in profiled:  # no syncs inside the step here: the GPU runs as far ahead as the host lets it
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                     for k, v in collator([row]).items()}
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                net(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync()
        wall_ms = 1000 * (time.perf_counter() - started)
    averages = prof.key_averages()
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(averages.table(sort_by=sort, row_limit=30, max_name_column_width=70))
    if cuda:
        from torch.autograd import DeviceType

        print(averages.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=70))
        # Kernels only: an operator's row repeats the time of the kernels it launched.
        kernels_ms = sum(e.self_device_time_total for e in averages if e.device_type == DeviceType.CUDA) / 1000
        print(f"\nGPU kernels {kernels_ms / len(profiled):.0f} ms per step of {wall_ms / len(profiled):.0f} ms wall "
              f"({100 * kernels_ms / wall_ms:.0f}% busy; the rest the GPU waits for the host)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
