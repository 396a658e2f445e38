"""A short `vlft sft` run of a Qwen3-VL-4B-shaped model (random weights, same FLOPs) with packing, on
synthetic seed-format data, printing a table of throughput and memory. GPU machine; one command:

    python bench/sft_qwen3_vl_4b.py --workdir /tmp/vlft-bench [--max_length 4096] [--max_steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

def qwen3_vl_4b_config():
    """The Qwen3-VL-4B-Instruct architecture (issue 5's shape)."""
    from transformers import Qwen3VLConfig

    text = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
                rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151645, tie_word_embeddings=True,
                rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                                 "mrope_interleaved": True})
    vision = dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, patch_size=16,
                  temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=2304, out_hidden_size=2560,
                  deepstack_visual_indexes=[5, 11, 17], hidden_act="gelu_pytorch_tanh")
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, image_token_id=151655,
                         video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)


def qwen3_vl_2b_config():
    """The Qwen3-VL-2B-Instruct architecture: the 4B's vision tower, a 28-layer 2048-wide language model."""
    config = qwen3_vl_4b_config()
    text, vision = config.text_config, config.vision_config
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = 2048, 6144, 28
    text.num_attention_heads, text.num_key_value_heads = 16, 8
    vision.out_hidden_size = 2048
    return config


def build_model(model_dir: Path, config=None) -> None:
    """Random bf16 weights of the 4B shape (or of `config`'s), with the real tokenizer and Qwen3-VL processor
    settings."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from vlft.model.tiny import build_processor
    from vlft.model.tokenizer import build_qwen_tokenizer

    if (model_dir / "config.json").is_file():
        return
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3VLForConditionalGeneration(config or qwen3_vl_4b_config()).to(torch.bfloat16)
    model.save_pretrained(model_dir)
    build_processor("qwen3_vl", build_qwen_tokenizer()).save_pretrained(model_dir)
    del model
    torch.cuda.empty_cache()  # else this process keeps ~18 GB reserved, which a later run's memory plan cannot use


def write_data(directory: Path, samples: int, seed: int = 0) -> Path:
    """Seed-format jsonl: one 448x448 image and 200-1500 text tokens per sample."""
    import numpy as np
    from PIL import Image

    path = directory / "train.jsonl"
    if path.is_file():
        return path
    rng = random.Random(seed)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    for i in range(64):  # 64 distinct images, reused
        pixels = np.random.default_rng(i).integers(0, 255, (448, 448, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(directory / "images" / f"{i}.jpg", quality=90)
    words = ["image", "shows", "a", "red", "square", "near", "the", "left", "edge", "with", "blue", "sky", "and",
             "green", "grass", "under", "small", "house", "tree", "river", "light", "shadow", "city", "road"]
    with open(path, "w") as f:
        for i in range(samples):
            n_words = rng.randint(200, 1500)  # about one token per word
            split = rng.randint(20, min(200, n_words - 10))
            text = [rng.choice(words) for _ in range(n_words)]
            row = {"messages": [{"role": "user", "content": "<image>" + " ".join(text[:split])},
                                {"role": "assistant", "content": " ".join(text[split:])}],
                   "images": [f"images/{rng.randrange(64)}.jpg"]}
            f.write(json.dumps(row) + "\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vlft-bench"))
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--max_length", type=int, default=4096)
    parser.add_argument("--max_steps", type=int, default=30)
    parser.add_argument("--warmup_steps", type=int, default=5, help="steps left out of the averages")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    model_dir = args.workdir / "qwen3-vl-4b-random"
    t0 = time.time()
    build_model(model_dir)
    data = write_data(args.workdir / "data", args.samples)
    print(f"model and data ready in {time.time() - t0:.0f} s", flush=True)
    output = args.workdir / "runs"
    command = [sys.executable, "-m", "vlft.cli.main", "sft", "--model", str(model_dir), "--dataset", str(data),
               "--train_type", "lora", "--lora_rank", "8", "--lora_alpha", "32", "--target_modules", "all-linear",
               "--torch_dtype", "bfloat16", "--packing", "true", "--max_length", str(args.max_length),
               "--gradient_checkpointing", "true", "--max_steps", str(args.max_steps), "--logging_steps", "1",
               "--save_steps", "100000", "--learning_rate", "1e-4", "--dataset_num_proc", "8",
               "--dataloader_num_workers", "4", "--report_to", "none", "--output_dir", str(output)]
    started = time.time()
    subprocess.run(command, check=True)
    run_dir = sorted(output.iterdir())[-1]
    log = [json.loads(line) for line in open(run_dir / "logging.jsonl")]
    steps = [e for e in log if "loss" in e and e["step"] > args.warmup_steps]
    tokens_per_second = statistics.median(e["tokens_per_second"] for e in steps)
    mfu = statistics.median(e.get("mfu", float("nan")) for e in steps)  # logged by vlft's trainer
    rows = [("model", "Qwen3-VL-4B shape, random bf16"), ("run", "LoRA r8 all-linear, packing, varlen attention"),
            ("max_length", args.max_length), ("steps measured", len(steps)),
            ("tokens/s (median, real tokens)", f"{tokens_per_second:,.0f}"),
            ("peak memory GiB", max(e["memory_gib"] for e in steps)),
            ("MFU (vlft/train/flops.py, median)", f"{100 * mfu:.1f}%"),
            ("loss first -> last", f"{log[0].get('loss')} -> {steps[-1]['loss']}"),
            ("wall time of vlft sft (s)", f"{time.time() - started:.0f}")]
    width = max(len(k) for k, _ in rows)
    print("\n| metric | value |\n| --- | --- |")
    for key, value in rows:
        print(f"| {key:<{width}} | {value} |")
    out = os.environ.get("OUT")
    if out:
        (Path(out) / "bench_sft_4b.json").write_text(json.dumps(dict(rows), indent=2, default=str))
        (Path(out) / "logging.jsonl").write_text((run_dir / "logging.jsonl").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
