"""`vlft megatron sft` against `vlft sft` on one GPU (issue 23): full fine-tuning and LoRA (all-linear, the
experts too, r8) of a Qwen3-VL-30B-A3B-shaped random model cut to its first --layers decoder layers (128 experts
of 768, top-8; the whole 27-block vision tower, frozen), on the same packed rows of images and text; tokens/s over
the steps after --warmup, peak GPU memory, the loss curve's ends. Prints a table.

    source bench/device_env.sh   # with megatron-core's wheel carried in .whl_mcore/ (bench/stage_wheels.sh)
    python3 bench/megatron_sft.py --layers 2 --workdir /tmp/msft

Both run bf16 with recomputation (vlft sft: gradient checkpointing; megatron sft: --recompute_granularity, full
unless --recompute says otherwise), one packed row of --max_length per step, lr 1e-5 (full) or 1e-4 (LoRA). vlft
sft keeps AdamW's state in the weights' dtype (bf16, 8 bytes a parameter with the weights and gradients);
Megatron-Core keeps float32 gradients, master weights and moments (18 bytes a parameter): the memory columns of
full fine-tuning differ by that design, not by waste.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_mcore import make_source  # noqa: E402
from sft_qwen3_vl_4b import write_data  # noqa: E402


def run_logged(argv: list[str], log: Path) -> float:
    started = time.time()
    with open(log, "w") as out:
        code = subprocess.call(argv, stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        print(log.read_text()[-6000:], flush=True)
        raise RuntimeError(f"{argv[3]} failed with code {code}: {log}")
    return time.time() - started


def summary(name: str, run_dir: Path, warmup: int, wall: float) -> dict:
    records = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in records if "loss" in r]
    measured = [r["tokens_per_second"] for r in steps if r["step"] > warmup]
    return {"name": name, "tokens_per_second": statistics.mean(measured), "steps_measured": len(measured),
            "memory_gib": max(r.get("memory_gib", 0.0) for r in steps), "loss_first": steps[0]["loss"],
            "loss_last": steps[-1]["loss"], "wall_s": wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/msft"))
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--max_length", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--peers", default="megatron,vlft,megatron_lora,vlft_lora")
    parser.add_argument("--recompute", default="full", choices=["full", "selective", "none"],
                        help="megatron sft's --recompute_granularity")
    args = parser.parse_args()
    model_dir = args.workdir / f"qwen3-vl-30b-a3b-{args.layers}layers"
    if not (model_dir / "model.safetensors.index.json").is_file() and not (model_dir / "model.safetensors").is_file():
        make_source(model_dir, "30b-a3b", args.layers)
    data = write_data(args.workdir / "data", args.samples)
    common = ["--model", str(model_dir), "--dataset", str(data), "--packing", "true", "--max_length",
              str(args.max_length), "--torch_dtype", "bfloat16", "--add_version", "false"]
    vlft = [sys.executable, "-m", "vlft.cli.main"]
    results = []
    lora = ["--train_type", "lora", "--target_modules", "all-linear", "--lora_rank", "8", "--lora_alpha", "32",
            "--lora_dropout", "0"]
    for peer in args.peers.split(","):
        out = args.workdir / f"run_{peer}"
        tuned = lora if peer.endswith("_lora") else ["--train_type", "full"]
        lr = "1e-4" if peer.endswith("_lora") else "1e-5"
        if peer.startswith("megatron"):
            argv = [*vlft, "megatron", "sft", *common, *tuned, "--save", str(out), "--train_iters", str(args.steps),
                    "--global_batch_size", "1", "--log_interval", "1", "--lr", lr, "--recompute_granularity",
                    args.recompute, "--num_workers", "4", "--no_save_optim", "true"]
            name = f"vlft megatron sft{' LoRA' if peer.endswith('_lora') else ''} (EP=TP=1, recompute {args.recompute})"
        elif peer.startswith("vlft"):
            argv = [*vlft, "sft", *common, *tuned, "--output_dir", str(out), "--max_steps", str(args.steps),
                    "--logging_steps", "1", "--learning_rate", lr, "--save_strategy", "no", "--report_to", "none",
                    "--dataloader_num_workers", "4"]
            name = f"vlft sft{' LoRA' if peer.endswith('_lora') else ''}"
        else:
            raise SystemExit(f"unknown peer {peer!r}: megatron, vlft, megatron_lora, vlft_lora")
        wall = run_logged(argv, args.workdir / f"{peer}.log")
        results.append(summary(name, out, args.warmup, wall))
        print(json.dumps(results[-1]), flush=True)
    print(f"\nQwen3-VL-30B-A3B shape, {args.layers} decoder layers, rows of {args.max_length}, "
          f"{args.steps} steps ({args.warmup} warm-up)\n")
    print("| metric | " + " | ".join(r["name"] for r in results) + " |")
    print("| --- |" + " --- |" * len(results))
    for key, label in (("tokens_per_second", "real tokens/s"), ("memory_gib", "peak GPU memory allocated, GiB"),
                       ("loss_first", "loss first"), ("loss_last", "loss last"), ("wall_s", "wall time (s)")):
        print(f"| {label} | " + " | ".join(f"{r[key]:,.2f}" for r in results) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
