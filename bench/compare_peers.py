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


def run_vlft(workdir: Path, max_length: int, steps: int, warmup_steps: int, num_workers: int,
             compiled: bool = False, lora_dropout: float = 0.05, logging_steps: int = 1,
             chunked_loss: bool = False, cuda_graphs: bool = False) -> dict:
    """`vlft sft` (packing, padding-free, varlen attention; `compiled`: --torch_compile true; `chunked_loss`:
    --chunked_loss true; `cuda_graphs`: --torch_compile_mode reduce-overhead) under measure.py's hooks."""
    from transformers import AutoConfig

    model, data = workdir / "qwen3-vl-4b-random", workdir / "data" / "train.jsonl"
    name = ("vlft --torch_compile" if compiled else "vlft") + (" --chunked_loss" if chunked_loss else "") + \
        (" --torch_compile_mode reduce-overhead" if cuda_graphs else "")
    output = workdir / ("runs_vlft" + ("_compiled" if compiled else "") + ("_chunked" if chunked_loss else "")
                        + ("_graphs" if cuda_graphs else ""))
    output.mkdir(parents=True, exist_ok=True)
    records, log = output / "records.json", output / "vlft.log"
    command = [sys.executable, str(HERE / "peers" / "measured_run.py"), str(records), "vlft.cli.main", "sft",
               "--model", str(model), "--dataset", str(data), "--train_type", "lora", "--lora_rank", "8",
               "--lora_alpha", "32", "--lora_dropout", str(lora_dropout), "--target_modules", "all-linear",
               "--freeze_vit", "true", "--freeze_aligner", "true", "--torch_dtype", "bfloat16",
               "--packing", "true", "--max_length", str(max_length), "--gradient_checkpointing", "true",
               "--max_steps", str(steps), "--learning_rate", "1e-4", "--logging_steps", str(logging_steps), "--save_steps", "100000",
               "--dataset_num_proc", "1", "--dataloader_num_workers", str(num_workers), "--report_to", "none",
               "--output_dir", str(output), "--torch_compile", str(compiled).lower(),
               "--chunked_loss", str(chunked_loss).lower(),
               *(["--torch_compile_mode", "reduce-overhead"] if cuda_graphs else [])]
    started = time.time()
    run_logged(command, log, "vlft sft", cwd=workdir)
    run_dir = max(output.glob("v*-*"), key=lambda p: p.stat().st_mtime)
    losses = [json.loads(line)["loss"] for line in open(run_dir / "logging.jsonl") if '"loss"' in line]
    result = summarize(json.loads(records.read_text()), warmup_steps, AutoConfig.from_pretrained(model))
    result.update(name=name, wall_s=time.time() - started, loss_first=losses[0], loss_last=losses[-1],
                  settings=f"packing + padding-free, torch varlen attention, batch 1 x {max_length} tokens, "
                           f"LoRA dropout {lora_dropout}" + (", chunked loss" if chunked_loss else "")
                           + (", CUDA graphs (rows padded to the full length)" if cuda_graphs else ""))
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
    ours = [r for r in results if r["name"].startswith("vlft")]
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
                        help="which to run, comma-separated (vlft-compile: vlft with --torch_compile true; "
                             "vlft-compile-chunked: also --chunked_loss true; vlft-graphs: --torch_compile_mode "
                             "reduce-overhead; vlft-graphs-chunked: also --chunked_loss true)")
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
        if peer in ("vlft", "vlft-compile", "vlft-compile-chunked", "vlft-graphs", "vlft-graphs-chunked"):
            results.append(run_vlft(args.workdir, args.max_length, args.max_steps, args.warmup_steps,
                                    args.num_workers, compiled=peer != "vlft",
                                    lora_dropout=args.lora_dropout, logging_steps=args.logging_steps,
                                    chunked_loss=peer.endswith("-chunked"), cuda_graphs="graphs" in peer))
        elif peer == "swift":
            from swift_sft import run_swift

            results.append(run_swift(args.workdir, args.max_length, args.max_steps, args.warmup_steps,
                                     num_workers=args.num_workers, lora_dropout=args.lora_dropout,
                                     logging_steps=args.logging_steps))
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
