"""FSDP2 against DeepSpeed ZeRO-2 and ZeRO-3 (and one process with neither) on one GPU: short `vlft sft` runs on
the same packed synthetic data, LoRA on a Qwen3-VL-8B-shaped model and full fine-tuning on a Qwen3-VL-2B-shaped
one (random bf16 weights; full fine-tuning under ZeRO and FSDP2 keeps float32 master weights, gradients and
moments, 16 bytes a parameter: the 4B shape ran out of memory on an 80 GB H100 in session 18, the 2B fits), printing tokens/s and peak GPU memory side by side. GPU machine with DeepSpeed installed
(bench/device_env.sh installs the carried .whl_ds); one command per train type (each run is a few minutes):

    python bench/fsdp_vs_zero.py --workdir /tmp/vlft-bench --train_type lora [--engines none,fsdp2,zero2,zero3]
    python bench/fsdp_vs_zero.py --workdir /tmp/vlft-bench --train_type full

Every run recomputes every layer and compiles nothing (FSDP refuses compile; the same for all), so that the
difference is the engine's. On one GPU nothing is sharded: the rows show each engine's overhead and memory
layout; with N GPUs (NPROC_PER_NODE=N) the same command compares the sharded runs. `--tiny` runs the commands on
the built-in tiny Qwen3-VL on CPU (checks the script; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qlora_memory import add_run_arguments, build_8b_model, measured, parse_run_arguments  # noqa: E402
from sft_qwen3_vl_4b import build_model, qwen3_vl_2b_config, write_data  # noqa: E402

ENGINES = {"none": [], "fsdp2": ["--fsdp", "fsdp2"], "zero2": ["--deepspeed", "zero2"],
           "zero3": ["--deepspeed", "zero3"]}
NAMES = {"none": "one process, no sharding", "fsdp2": "FSDP2", "zero2": "DeepSpeed ZeRO-2",
         "zero3": "DeepSpeed ZeRO-3"}


def sft_command(model: str, data: Path, output: Path, args, engine: list[str]) -> list[str]:
    """`vlft sft` of one engine: packed rows, every layer recomputed, nothing compiled, the plain loss."""
    dtype = [] if args.tiny else ["--torch_dtype", "bfloat16"]
    tuning = (["--train_type", "lora", "--lora_rank", "8", "--lora_alpha", "32", "--target_modules", "all-linear",
               "--learning_rate", "1e-4"] if args.train_type == "lora" else
              ["--train_type", "full", "--learning_rate", "1e-5"])
    return [sys.executable, "-m", "vlft.cli.main", "sft", "--model", model, "--dataset", str(data), *dtype, *tuning,
            "--packing", "true", "--max_length", str(args.max_length), "--gradient_checkpointing", "true",
            "--torch_compile", "false", "--chunked_loss", "false", "--max_steps", str(args.max_steps),
            "--logging_steps", "1", "--save_strategy", "no", "--dataset_num_proc", str(args.num_proc),
            "--report_to", "none", "--output_dir", str(output), *engine]


def drop_weights(output: Path) -> None:
    """A measured run's saved weights and optimizer states go (a full run of the 2B shape leaves tens of GB; four
    engines' filled a 64 GiB disk); its logs stay."""
    for path in output.rglob("*"):
        if path.is_file() and path.stat().st_size > 16 * 2**20:
            path.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_type", choices=["lora", "full"], default="lora")
    parser.add_argument("--engines", default="none,fsdp2,zero2,zero3", help="comma-separated: " + ", ".join(ENGINES))
    add_run_arguments(parser, max_steps=15)
    args = parse_run_arguments(parser)
    started = time.time()
    if args.tiny:
        model, shape = "vlft/tiny-qwen3-vl", "tiny Qwen3-VL, CPU"
    elif args.train_type == "lora":
        model, shape = str(args.workdir / "qwen3-vl-8b-random"), "Qwen3-VL-8B shape, random bf16"
        build_8b_model(Path(model))
    else:
        model, shape = str(args.workdir / "qwen3-vl-2b-random"), "Qwen3-VL-2B shape, random bf16"
        build_model(Path(model), qwen3_vl_2b_config())
    data = write_data(args.workdir / ("data-tiny" if args.tiny else "data"), args.samples)
    print(f"model and data ready in {time.time() - started:.0f} s", flush=True)
    results = {}
    for engine in args.engines.split(","):
        output = args.workdir / ("runs-tiny" if args.tiny else "runs") / f"{args.train_type}-{engine}"
        started = time.time()
        done = subprocess.run(sft_command(model, data, output, args, ENGINES[engine]))
        if done.returncode:
            results[NAMES[engine]] = {"peak memory GiB": f"failed (exit {done.returncode})"}
            drop_weights(output)
            continue
        results[NAMES[engine]] = {**measured(sorted(output.iterdir())[-1], args.warmup_steps),
                                  "wall time of vlft sft (s)": f"{time.time() - started:.0f}"}
        print(f"{NAMES[engine]}: {json.dumps(results[NAMES[engine]])}", flush=True)  # kept if a later run is cut off
        drop_weights(output)
    metrics = list(max(results.values(), key=len))
    print(f"\n{shape}: {args.train_type}, packed rows of {args.max_length}, gradient checkpointing, "
          f"{os.environ.get('NPROC_PER_NODE', '1')} process(es)\n")
    print("| metric | " + " | ".join(results) + " |\n| --- |" + " --- |" * len(results))
    for metric in metrics:
        cells = [f"{r[metric]:,.0f}" if metric.startswith("tokens") and metric in r else str(r.get(metric, ""))
                 for r in results.values()]
        print(f"| {metric} | " + " | ".join(cells) + " |")
    out = os.environ.get("OUT")
    if out:
        (Path(out) / f"bench_fsdp_vs_zero_{args.train_type}.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
