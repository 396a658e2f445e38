"""ms-swift 4.6 (`swift sft`) as a benchmark peer of vlft, on the workdir that
bench/sft_qwen3_vl_4b.py makes (qwen3-vl-4b-random/ and data/train.jsonl). ms-swift runs from its own
target dir (bench/peers/install_swift.sh, default /tmp/swift_site) on the machine's transformers, in a
subprocess whose PYTHONPATH holds that dir alone; nothing of it is imported here.

    python bench/peers/swift_sft.py --workdir /tmp/vlft-bench --max_length 4096 --max_steps 65

ms-swift's packing and padding_free refuse any attention but flash-attn (2, 3 or 4): with one
installed beside ms-swift the run packs rows of --max_length (batch 1), else it falls back to
ms-swift's default padded batches (--batch_size, sdpa) and says so in `settings`."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # measure.py, also when imported from bench/sft_qwen3_vl_4b.py

from measure import run_logged, summarize

FLASH_PROBE = """import importlib.metadata as m, torch
names = {d.metadata['Name'].lower().replace('_', '-') for d in m.distributions()}
ok = torch.cuda.is_available()
hopper = ok and torch.cuda.get_device_capability()[0] >= 9
print('flash_attn' if ok and 'flash-attn' in names else 'flash_attention_3' if hopper and 'flash-attn-3' in names
      else 'flash_attention_4' if hopper and 'flash-attn-4' in names else 'sdpa')"""


def swift_env(swift_site: str) -> dict:
    """This environment with PYTHONPATH replaced by ms-swift's target dir; for flash-attn-4 also CuTe DSL's dir
    and fa4_int_lengths/ (its sitecustomize hands FA4 the ints it needs; see there)."""
    paths = [swift_site]
    cutlass = Path(swift_site) / "nvidia_cutlass_dsl" / "dsl_packages"  # its .pth is not read from a --target dir
    if cutlass.is_dir():
        paths += [str(cutlass), str(HERE / "fa4_int_lengths")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def absolute_images(data: Path) -> Path:
    """A copy of the jsonl with absolute image paths (ms-swift opens relative paths from its cwd)."""
    target = data.with_name(data.stem + "_abs.jsonl")
    if not target.is_file():
        with open(data) as src, open(target, "w") as dst:
            for line in src:
                row = json.loads(line)
                row["images"] = [str((data.parent / p).resolve()) for p in row.get("images", [])]
                dst.write(json.dumps(row) + "\n")
    return target


def swift_command(model: Path, data: Path, output: Path, max_length: int, steps: int, attn_impl: str,
                  batch_size: int, num_workers: int, num_proc: int, cuda: bool, lora_dropout: float = 0.05,
                  logging_steps: int = 1, liger: bool = False) -> list[str]:
    """`swift sft` with the benchmark's settings: LoRA r8/32 all-linear, ViT and aligner frozen; `liger`: with
    `--use_liger_kernel true` (Liger's Triton kernels: its fused linear cross-entropy, RMSNorm, SwiGLU, RoPE)."""
    packing = attn_impl != "sdpa"
    return ["swift.cli.sft", "--model", str(model), "--model_type", "qwen3_vl", "--template", "qwen3_vl",
            "--dataset", str(data), "--tuner_type", "lora", "--lora_rank", "8", "--lora_alpha", "32",
            "--lora_dropout", str(lora_dropout), "--target_modules", "all-linear", "--freeze_vit", "true",
            "--freeze_aligner", "true", "--torch_dtype", "bfloat16" if cuda else "float32",
            "--attn_impl", attn_impl, "--packing", str(packing).lower(), "--padding_free", str(packing).lower(),
            "--per_device_train_batch_size", "1" if packing else str(batch_size),
            "--gradient_accumulation_steps", "1", "--max_length", str(max_length), "--gradient_checkpointing", "true",
            "--max_steps", str(steps), "--learning_rate", "1e-4", "--warmup_ratio", "0", "--weight_decay", "0.1",
            "--logging_steps", str(logging_steps), "--save_steps", "100000", "--save_only_model", "true",
            "--split_dataset_ratio", "0", "--dataset_num_proc", str(num_proc),
            "--dataloader_num_workers", str(num_workers), "--report_to", "none", "--output_dir", str(output),
            *(["--use_liger_kernel", "true"] if liger else [])]


def run_swift(workdir, max_length: int, steps: int, warmup_steps: int = 5, batch_size: int = 4,
              num_workers: int = 4, num_proc: int = 8, attn_impl: str | None = None, lora_dropout: float = 0.05,
              logging_steps: int = 1, liger: bool = False) -> dict:
    """Run `swift sft` in a subprocess on the workdir's model and data; its measured metrics."""
    from transformers import AutoConfig

    workdir = Path(workdir)
    model, data = workdir / "qwen3-vl-4b-random", absolute_images(workdir / "data" / "train.jsonl")
    output = workdir / ("runs_swift" + ("_liger" if liger else "") + ("_sdpa" if attn_impl == "sdpa" else ""))
    output.mkdir(parents=True, exist_ok=True)
    python = os.environ.get("SWIFT_PYTHON", sys.executable)  # tests here point it at an emulated device env
    env = swift_env(os.environ.get("SWIFT_SITE", "/tmp/swift_site"))
    if attn_impl is None:
        attn_impl = subprocess.run([python, "-c", FLASH_PROBE], env=env, capture_output=True, text=True,
                                   check=True).stdout.strip()
    cuda = _cuda(python, env)
    records, log = output / "records.json", output / "swift.log"
    command = swift_command(model, data, output, max_length, steps, attn_impl, batch_size, num_workers, num_proc,
                            cuda, lora_dropout, logging_steps, liger)
    started = time.time()
    run_logged([python, str(HERE / "measured_run.py"), str(records), *command], log, "swift sft", env=env,
               cwd=workdir)
    run_dir = max(output.glob("v*-*"), key=lambda p: p.stat().st_mtime)
    logs = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in logs if "loss" in e]
    result = summarize(json.loads(records.read_text()), warmup_steps, AutoConfig.from_pretrained(model))
    packing = attn_impl != "sdpa"
    result.update(name="ms-swift 4.6" + (" + liger" if liger else ""), wall_s=time.time() - started, loss_first=losses[0], loss_last=losses[-1],
                  swift_memory_gib=max((e.get("memory(GiB)", 0) for e in logs), default=None),
                  settings=(f"packing + padding_free, {attn_impl}, batch 1 x {max_length} tokens" if packing else
                            f"padded batches of {batch_size}, sdpa (packing/padding_free need flash-attn)"))
    return result


def _cuda(python: str, env: dict) -> bool:
    probe = subprocess.run([python, "-c", "import torch; print(torch.cuda.is_available())"], env=env,
                           capture_output=True, text=True, check=True)
    return probe.stdout.strip() == "True"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vlft-bench"))
    parser.add_argument("--max_length", type=int, default=4096)
    parser.add_argument("--max_steps", type=int, default=65)
    parser.add_argument("--warmup_steps", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=4, help="padded batch size when packing is unavailable")
    parser.add_argument("--num_workers", type=int, default=4)
    parser.add_argument("--num_proc", type=int, default=8)
    parser.add_argument("--attn_impl", default=None, help="default: flash-attn if importable, else sdpa")
    args = parser.parse_args()
    result = run_swift(args.workdir, args.max_length, args.max_steps, args.warmup_steps, args.batch_size,
                       args.num_workers, args.num_proc, args.attn_impl)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent.parent))  # vlft's flops for MFU when run from a checkout
    sys.exit(main())
