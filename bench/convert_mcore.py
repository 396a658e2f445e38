"""HF <-> Megatron-Core conversion of Qwen3-VL-8B- and Qwen3-VL-30B-A3B-shaped random models (issue 22): wall
time, peak host memory (the largest converter process) and peak GPU memory of `vlft export --to_mcore` and
`--mcore_model ... --to_hf`, then a bit-exact check of the round trip and, with --precision, the bf16 logits
against HF's (text + image + video batch, on the GPU).

    source bench/device_env.sh   # with megatron-core's wheel carried in .whl_mcore/ (bench/stage_wheels.sh)
    python3 bench/convert_mcore.py --shape 8b --workdir /tmp/conv
    python3 bench/convert_mcore.py --shape 30b-a3b --layers 12 --workdir /tmp/conv

Shapes: `8b` is Qwen3-VL-8B-Instruct's architecture (36 layers, hidden 4096, 32 / 8 heads of 128, ffn 12288, the
27-block vision tower with deepstack); `30b-a3b` is Qwen3-VL-30B-A3B-Instruct's (48 layers of 128 experts of 768,
top-8); `--layers N` keeps its first N decoder layers, so that the source, the Megatron-Core copy and the HF copy
fit the disk together (the full 30B-A3B is 61 GB in bf16). Weights are random bf16, made on the GPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_sft_step import qwen3_vl_30b_a3b_config, write_config_only  # noqa: E402


def qwen3_vl_8b_config():
    """Qwen3-VL-8B-Instruct's architecture."""
    from transformers import Qwen3VLConfig

    text = dict(vocab_size=151936, hidden_size=4096, num_hidden_layers=36, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, intermediate_size=12288, max_position_embeddings=262144,
                rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151645, tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                                 "mrope_interleaved": True})
    vision = dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, patch_size=16,
                  temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=2304, out_hidden_size=4096,
                  deepstack_visual_indexes=[8, 16, 24], hidden_act="gelu_pytorch_tanh")
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, image_token_id=151655,
                         video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)


def make_source(model_dir: Path, shape: str, layers: int | None) -> tuple[float, int]:
    """The random bf16 model written as HF safetensors; its parameter count and size on disk (GB)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = qwen3_vl_8b_config() if shape == "8b" else qwen3_vl_30b_a3b_config()
    if layers:
        config.text_config.num_hidden_layers = layers
    write_config_only(model_dir, config)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model_dir), dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(model_dir, max_shard_size="5GB")
    del model
    torch.cuda.empty_cache()
    return params, sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 1e9


class GpuMemoryPoll:
    """The largest `memory.used` nvidia-smi reports while the block runs (all processes on the GPUs), GiB."""

    def __init__(self):
        self.peak, self._stop = 0.0, threading.Event()

    def _run(self):
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout
            self.peak = max([self.peak, *(float(v) / 1024 for v in out.split())])
            self._stop.wait(0.25)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def timed_export(argv: list[str], log: Path) -> dict:
    """`vlft export ARGV` in its own process; wall time, peak GPU memory, and the peak RSS of the largest process it
    started (resource's children maximum, read in a fresh Python so earlier runs do not count)."""
    probe = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")
    start = time.perf_counter()
    with GpuMemoryPoll() as gpu, log.open("w") as out:
        done = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "vlft.cli.main", "export", *argv],
                              stdout=out, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    lines = done.stderr.strip().splitlines()
    with log.open("a") as out:
        out.write("\n".join(lines[:-1]))
    if done.returncode != 0:
        print(log.read_text()[-4000:])
        raise SystemExit(f"vlft export {' '.join(argv)} failed")
    return {"seconds": seconds, "host_peak_gib": int(lines[-1]) / 2**20, "gpu_peak_gib": gpu.peak}


def same_tensors(source: Path, converted: Path) -> int:
    """Number of tensors compared; raises on any key, dtype, shape or byte difference."""
    from safetensors import safe_open

    def index(model_dir: Path) -> dict[str, Path]:
        found = {}
        for file in sorted(model_dir.glob("*.safetensors")):
            with safe_open(str(file), "pt") as f:
                found.update({key: file for key in f.keys()})
        return found

    a, b = index(source), index(converted)
    if set(a) != set(b):
        raise SystemExit(f"key sets differ: {sorted(set(a) ^ set(b))[:10]}")
    for key in a:
        with safe_open(str(a[key]), "pt") as fa, safe_open(str(b[key]), "pt") as fb:
            x, y = fa.get_tensor(key), fb.get_tensor(key)
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x.view(-1).view(torch.uint8),
                                                                        y.view(-1).view(torch.uint8)):
            raise SystemExit(f"{key} differs after the round trip")
    return len(a)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=("8b", "30b-a3b"), default="8b")
    parser.add_argument("--layers", type=int, default=None, help="keep the first N decoder layers")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/conv"))
    parser.add_argument("--tensor_model_parallel_size", default="1")
    parser.add_argument("--expert_model_parallel_size", default="1")
    parser.add_argument("--precision", action="store_true", help="also run --test_convert_precision (bf16)")
    args = parser.parse_args()

    root = args.workdir / (args.shape + (f"-{args.layers}l" if args.layers else ""))
    shutil.rmtree(root, ignore_errors=True)
    source, mcore, hf = root / "hf-source", root / "mcore", root / "hf-back"
    start = time.perf_counter()
    params, size_gb = make_source(source, args.shape, args.layers)
    print(f"{args.shape}: {params / 1e9:.2f} B parameters, {size_gb:.1f} GB of bf16 safetensors, made in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    sizes = ["--tensor_model_parallel_size", args.tensor_model_parallel_size]
    if args.shape == "30b-a3b":
        sizes += ["--expert_model_parallel_size", args.expert_model_parallel_size]
    rows = {"to_mcore": timed_export(["--model", str(source), "--to_mcore", "true", "--torch_dtype", "bfloat16",
                                      "--output_dir", str(mcore), *sizes], root / "to_mcore.log")}
    rows["to_hf"] = timed_export(["--mcore_model", str(mcore), "--to_hf", "true", "--output_dir", str(hf)],
                                 root / "to_hf.log")
    shutil.rmtree(mcore)
    checked = same_tensors(source, hf)
    shutil.rmtree(hf)
    if args.precision:
        rows["to_mcore + precision"] = timed_export(
            ["--model", str(source), "--to_mcore", "true", "--torch_dtype", "bfloat16", "--output_dir", str(mcore),
             "--test_convert_precision", "true", *sizes], root / "precision.log")
        print("\n".join(line for line in (root / "precision.log").read_text().splitlines()
                        if "test_convert_precision" in line))
        shutil.rmtree(mcore)
    print(f"\nround trip bit-exact: {checked} tensors, same keys, dtypes, shapes and bytes\n")
    print(f"| {args.shape} ({params / 1e9:.2f} B, {size_gb:.1f} GB), {' '.join(sizes)} | wall time (s) | "
          "peak host RSS, largest process (GiB) | peak GPU memory used (GiB) |")
    print("| --- | --- | --- | --- |")
    for name, row in rows.items():
        print(f"| {name} | {row['seconds']:.0f} | {row['host_peak_gib']:.1f} | {row['gpu_peak_gib']:.1f} |")
    (root / "result.json").write_text(json.dumps({"params": params, "size_gb": size_gb, **rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
