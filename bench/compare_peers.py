"""Side by side on one GPU: `vlft sft`, ms-swift 4.6's `swift sft` and plain transformers + PEFT (padded
batches), on the same Qwen3-VL-4B-shaped model, the same synthetic data and the same LoRA settings,
each measured from outside its trainer by bench/peers/measure.py (step ends, data-loader waits, batch
contents, peak memory). ms-swift is installed into its own directory first (bench/peers/install_swift.sh);
vlft's own stack is untouched. One command on a GPU machine:

    bash bench/peers/install_swift.sh && python bench/compare_peers.py --workdir /tmp/vb --samples 2000

`--lora_dropout 0` (for every peer) lets `vlft --torch_compile` compile whole decoder layers (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))
from sft_qwen3_vl_4b import build_model, write_data  # noqa: E402
from measure import run_logged, summarize  # noqa: E402


# The seed page's `swift sft` command for Qwen3-VL-4B (ms-swift's Qwen3-VL best practices), `swift` -> `vlft`, with
# the benchmark's model and data in place of the hub's; one GPU, so no NPROC_PER_NODE=2 and no `--deepspeed zero2`
# (the GPU image has no DeepSpeed); `--attn_impl flash_attn` without flash-attn installed runs the varlen kernel.
SEED_FLAGS = ["--train_type", "lora", "--torch_dtype", "bfloat16", "--num_train_epochs", "1",
              "--per_device_train_batch_size", "1", "--per_device_eval_batch_size", "1", "--attn_impl", "flash_attn",
              "--padding_free", "true", "--learning_rate", "1e-4", "--lora_rank", "8", "--lora_alpha", "32",
              "--target_modules", "all-linear", "--freeze_vit", "true", "--freeze_aligner", "true",
              "--packing", "true", "--gradient_checkpointing", "true", "--vit_gradient_checkpointing", "false",
              "--gradient_accumulation_steps", "2", "--save_total_limit", "2", "--warmup_ratio", "0.05",
              "--dataset_num_proc", "4"]
# The old defaults, given by hand: the seed command as it ran before the fast path was the default.
PLAIN_PATH = ["--torch_compile", "false", "--chunked_loss", "false"]
# vlft's peers: name -> (the flags that make it, a note for the table)
VLFT_PEERS = {
    "vlft": (["--gradient_checkpointing", "true", *PLAIN_PATH], "eager, every layer recomputed"),
    "vlft-compile": (["--gradient_checkpointing", "true", "--torch_compile", "true", "--chunked_loss", "false"],
                     "--torch_compile true"),
    "vlft-compile-chunked": (["--gradient_checkpointing", "true", "--torch_compile", "true", "--chunked_loss", "true"],
                             "--torch_compile true --chunked_loss true"),
    "vlft-graphs": (["--gradient_checkpointing", "true", "--torch_compile_mode", "reduce-overhead",
                     "--chunked_loss", "false"], "CUDA graphs"),
    "vlft-graphs-chunked": (["--gradient_checkpointing", "true", "--torch_compile_mode", "reduce-overhead",
                             "--chunked_loss", "true"], "CUDA graphs, chunked loss"),
    "vlft-default": ([], "no speed flag: the default fast path and memory plan"),
}


def run_vlft(workdir: Path, peer: str, max_length: int, steps: int, warmup_steps: int, num_workers: int,
             lora_dropout: float | None = 0.05, logging_steps: int = 1) -> dict:
    """`vlft sft` under measure.py's hooks as the peer `peer` of VLFT_PEERS (packed rows of max_length, LoRA r8
    all-linear, the benchmark's settings), or the seed page's command: `seed-before` (with the old defaults given
    by hand) or `seed-after` (as typed). `lora_dropout` None: the command's own default."""
    from transformers import AutoConfig

    model, data = workdir / "qwen3-vl-4b-random", workdir / "data" / "train.jsonl"
    output = workdir / f"runs_{peer}"
    output.mkdir(parents=True, exist_ok=True)
    records, log = output / "records.json", output / "vlft.log"
    dropout = [] if lora_dropout is None else ["--lora_dropout", str(lora_dropout)]
    common = ["--model", str(model), "--dataset", str(data), "--max_length", str(max_length),
              "--max_steps", str(steps), "--logging_steps", str(logging_steps), "--save_steps", "100000",
              "--dataloader_num_workers", str(num_workers), "--report_to", "none", "--output_dir", str(output)]
    if peer.startswith("seed-"):
        flags = [*SEED_FLAGS, *(PLAIN_PATH if peer == "seed-before" else []), *dropout]
        settings = ("the seed page's command on one GPU (no DeepSpeed), " +
                    ("old defaults (--torch_compile false --chunked_loss false)" if peer == "seed-before"
                     else "as typed (fast path by default)"))
    else:
        extra, settings = VLFT_PEERS[peer]
        flags = ["--train_type", "lora", "--lora_rank", "8", "--lora_alpha", "32", "--target_modules", "all-linear",
                 "--freeze_vit", "true", "--freeze_aligner", "true", "--torch_dtype", "bfloat16", "--packing", "true",
                 "--learning_rate", "1e-4", "--dataset_num_proc", "1", *dropout, *extra]
        settings = f"packed rows of {max_length}, {settings}, LoRA dropout {lora_dropout}"
    command = [sys.executable, str(HERE / "peers" / "measured_run.py"), str(records), "vlft.cli.main", "sft",
               *flags, *common]
    started = time.time()
    run_logged(command, log, "vlft sft", cwd=workdir)
    run_dir = max(output.glob("v*-*"), key=lambda p: p.stat().st_mtime)
    losses = [json.loads(line)["loss"] for line in open(run_dir / "logging.jsonl") if '"loss"' in line]
    result = summarize(json.loads(records.read_text()), warmup_steps, AutoConfig.from_pretrained(model))
    chosen = [line.split("WARNING", 1)[-1].strip(" :-") for line in log.read_text().splitlines()
              if "fast path:" in line or "memory plan" in line or "gradient checkpointing: all" in line]
    result.update(name=peer, wall_s=time.time() - started, loss_first=losses[0], loss_last=losses[-1],
                  settings=settings + ("; " + " / ".join(chosen) if chosen else ""))
    return result


def table(results: list[dict]) -> str:
    rows = [("settings", "settings", "{}"), ("real tokens/s", "tokens_per_second", "{:,.0f}"),
            ("samples/s", "samples_per_second", "{:.2f}"), ("MFU (datasheet 989 TFLOP/s)", "mfu", "{:.1%}"),
            ("MFU (measured bf16 matmul peak)", "mfu_measured_peak", "{:.1%}"),
            ("peak GPU memory, allocated (GiB)", "peak_memory_gib", "{:.2f}"),
            ("data-loader stall (ms/step)", "loader_stall_ms_per_step", "{:.1f}"),
            ("real tokens per step", "tokens_per_step", "{:,.0f}"), ("steps measured", "steps_measured", "{}"),
            ("loss first -> last", None, None), ("wall time (s)", "wall_s", "{:.0f}")]
    lines = ["| metric | " + " | ".join(r["name"] for r in results) + " |",
             "| --- |" + " --- |" * len(results)]
    for label, key, fmt in rows:
        cells = []
        for r in results:
            if key is None:
                cells.append(f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}")
            else:
                cells.append(fmt.format(r[key]) if r.get(key) is not None else "n/a")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    ours = [r for r in results if r["name"].startswith(("vlft", "seed-"))]
    for base in ours:
        for r in results:
            if r not in ours:
                lines.append(f"\n{base['name']} / {r['name']}: {base['tokens_per_second'] / r['tokens_per_second']:.2f}x "
                             f"tokens/s at {base['peak_memory_gib'] / r['peak_memory_gib']:.2f}x the memory")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vlft-bench"))
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--max_length", type=int, default=4096)
    parser.add_argument("--max_steps", type=int, default=45)
    parser.add_argument("--warmup_steps", type=int, default=5)
    parser.add_argument("--num_workers", type=int, default=4)
    parser.add_argument("--lora_dropout", type=float, default=0.05,
                        help="every peer's (0 lets --torch_compile compile whole layers on torch 2.11)")
    parser.add_argument("--logging_steps", type=int, default=1,
                        help="every peer's; a log reads the loss back to the host, a sync in a host-bound step")
    parser.add_argument("--peers", default="vlft,vlft-compile,swift,plain",
                        help="which to run, comma-separated: " + ", ".join(VLFT_PEERS) + ", seed-before, "
                             "seed-after (the seed page's command with the old defaults given by hand / as typed; "
                             "its own LoRA dropout), swift (flash-attn packing if installed), swift-padded "
                             "(sdpa, padded batches), swift-liger (--use_liger_kernel true), plain")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    from matmul_peak import measured_bf16_peak

    measured_peak = measured_bf16_peak()
    print(f"measured bf16 matmul peak: {measured_peak / 1e12:.0f} TFLOP/s", flush=True)
    build_model(args.workdir / "qwen3-vl-4b-random")
    write_data(args.workdir / "data", args.samples)
    results = []
    for peer in args.peers.split(","):
        started = time.time()
        if peer in VLFT_PEERS or peer in ("seed-before", "seed-after"):
            results.append(run_vlft(args.workdir, peer, args.max_length, args.max_steps, args.warmup_steps,
                                    args.num_workers, lora_dropout=None if peer.startswith("seed-") else
                                    args.lora_dropout, logging_steps=args.logging_steps))
        elif peer in ("swift", "swift-liger", "swift-padded"):
            from swift_sft import run_swift

            results.append(run_swift(args.workdir, args.max_length, args.max_steps, args.warmup_steps,
                                     num_workers=args.num_workers, lora_dropout=args.lora_dropout,
                                     logging_steps=args.logging_steps, liger=peer == "swift-liger",
                                     attn_impl="sdpa" if peer == "swift-padded" else None))
        elif peer == "plain":
            from plain_hf_peft import run_plain

            results.append(run_plain(args.workdir, args.max_length, args.max_steps, args.warmup_steps,
                                     num_workers=args.num_workers, lora_dropout=args.lora_dropout,
                                     logging_steps=args.logging_steps))
        if results[-1].get("flops_per_second"):
            results[-1]["mfu_measured_peak"] = results[-1]["flops_per_second"] / measured_peak
        print(f"{peer}: done in {time.time() - started:.0f} s", flush=True)
        print(json.dumps(results[-1], default=str), flush=True)
    print(f"\nmeasured bf16 matmul peak (bench/matmul_peak.py): {measured_peak / 1e12:.0f} TFLOP/s\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
