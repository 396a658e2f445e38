"""QLoRA against bf16 LoRA on a Qwen3-VL-8B-shaped model (random weights): two short `vlft sft` runs on the same
packed synthetic data, one with `--quant_method bnb --quant_bits 4`, printing peak GPU memory and tokens/s side
by side. GPU machine (bitsandbytes installed: `pip install -e '.[qlora]'`); one command:

    python bench/qlora_memory.py --workdir /tmp/vlft-bench [--max_length 4096] [--max_steps 20]

`--tiny` runs the same two commands on the built-in tiny Qwen3-VL (CPU check of the script itself; its numbers
mean nothing). Both runs recompute activations in every layer and compile nothing, so that the memory compared is
the weights' and the optimizer's, not a different recomputation or compilation choice.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_mcore import qwen3_vl_8b_config  # noqa: E402
from sft_qwen3_vl_4b import write_data  # noqa: E402

MODES = {"bf16 LoRA": [], "QLoRA (nf4)": ["--quant_method", "bnb", "--quant_bits", "4"]}


def build_8b_model(model_dir: Path) -> None:
    """Random bf16 weights of the 8B shape (about 17 GB on disk), the real tokenizer and Qwen3-VL processor."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from vlft.model.tiny import build_processor
    from vlft.model.tokenizer import build_qwen_tokenizer

    if (model_dir / "config.json").is_file():
        return
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3VLForConditionalGeneration(qwen3_vl_8b_config()).to(torch.bfloat16)
    model.save_pretrained(model_dir)
    build_processor("qwen3_vl", build_qwen_tokenizer()).save_pretrained(model_dir)
    del model
    torch.cuda.empty_cache()


def sft_command(model: str, data: Path, output: Path, args, extra: list[str]) -> list[str]:
    """The `vlft sft` command of one mode: LoRA r8 on all linears, packed rows, every layer recomputed."""
    dtype = [] if args.tiny else ["--torch_dtype", "bfloat16"]
    return [sys.executable, "-m", "vlft.cli.main", "sft", "--model", model, "--dataset", str(data), *dtype,
            "--train_type", "lora", "--lora_rank", "8", "--lora_alpha", "32", "--target_modules", "all-linear",
            "--packing", "true", "--max_length", str(args.max_length), "--gradient_checkpointing", "true",
            "--torch_compile", "false", "--max_steps", str(args.max_steps), "--logging_steps", "1",
            "--save_steps", "100000", "--learning_rate", "1e-4", "--dataset_num_proc", str(args.num_proc),
            "--report_to", "none", "--output_dir", str(output), *extra]


def measured(run_dir: Path, warmup_steps: int) -> dict:
    """Peak memory, median tokens/s and the loss of one run, from its logging.jsonl."""
    log = [json.loads(line) for line in open(run_dir / "logging.jsonl")]
    steps = [e for e in log if "loss" in e]
    timed = [e for e in steps if e["step"] > warmup_steps] or steps
    return {"peak memory GiB": max(e["memory_gib"] for e in steps),
            "tokens/s (median)": statistics.median(e["tokens_per_second"] for e in timed),
            "loss first -> last": f"{steps[0]['loss']} -> {steps[-1]['loss']}", "steps timed": len(timed)}


def print_table(results: dict[str, dict], title: str) -> None:
    metrics = list(next(iter(results.values())))
    print(f"\n{title}\n\n| metric | " + " | ".join(results) + " |\n| --- |" + " --- |" * len(results))
    for metric in metrics:
        cells = [f"{r[metric]:,.0f}" if metric.startswith("tokens") else str(r[metric]) for r in results.values()]
        print(f"| {metric} | " + " | ".join(cells) + " |")
    bf16, qlora = (results[m]["peak memory GiB"] for m in MODES)
    print(f"\nQLoRA peak memory: {qlora / bf16:.2f}x bf16 LoRA's")


def add_run_arguments(parser: argparse.ArgumentParser, max_steps: int) -> None:
    """The arguments of a bench made of short `vlft sft` runs (this one, fsdp_vs_zero.py)."""
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vlft-bench"))
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--max_length", type=int, default=4096)
    parser.add_argument("--max_steps", type=int, default=max_steps)
    parser.add_argument("--warmup_steps", type=int, default=5, help="steps left out of the tokens/s median")
    parser.add_argument("--num_proc", type=int, default=8, help="--dataset_num_proc of the runs")
    parser.add_argument("--tiny", action="store_true", help="the built-in tiny Qwen3-VL on CPU (checks the script)")


def parse_run_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The parsed arguments, made small under --tiny, with the workdir created."""
    args = parser.parse_args()
    if args.tiny:
        args.samples, args.max_length, args.max_steps, args.warmup_steps, args.num_proc = 8, 1024, 2, 0, 1
    args.workdir.mkdir(parents=True, exist_ok=True)
    return args


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, max_steps=20)
    args = parse_run_arguments(parser)
    t0 = time.time()
    if args.tiny:
        model = "vlft/tiny-qwen3-vl"
    else:
        model = str(args.workdir / "qwen3-vl-8b-random")
        build_8b_model(Path(model))
    data = write_data(args.workdir / ("data-tiny" if args.tiny else "data"), args.samples)
    print(f"model and data ready in {time.time() - t0:.0f} s", flush=True)
    results = {}
    for mode, extra in MODES.items():
        output = args.workdir / ("runs-tiny" if args.tiny else "runs") / mode.split()[0].lower()
        started = time.time()
        subprocess.run(sft_command(model, data, output, args, extra), check=True)
        results[mode] = {**measured(sorted(output.iterdir())[-1], args.warmup_steps),
                         "wall time of vlft sft (s)": f"{time.time() - started:.0f}"}
    shape = "tiny Qwen3-VL, CPU" if args.tiny else "Qwen3-VL-8B shape, random bf16"
    print_table(results, f"{shape}: LoRA r8 all-linear, packed rows of {args.max_length}, gradient checkpointing")
    out = os.environ.get("OUT")
    if out:
        (Path(out) / "bench_qlora_memory.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
