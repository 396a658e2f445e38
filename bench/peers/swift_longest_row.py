"""The longest row an ms-swift 4.6 (`swift sft`) LoRA step fits, the peer of bench/longest_row.py: for each
length L, a dataset of samples of about L tokens (one 448x448 image and text), `swift sft --max_length L`
with batch 1 (its padded path: packing needs flash-attn), two steps; prints a table of peak GPU memory
(allocated, as measure.py reads it) or "out of memory". Same model as the other peers (the workdir's
qwen3-vl-4b-random, made by bench/sft_qwen3_vl_4b.py or compare_peers.py). GPU machine, ms-swift installed by
bench/peers/install_swift.sh:

    python bench/peers/swift_longest_row.py --workdir /tmp/vb --lengths 32768,49152
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from sft_qwen3_vl_4b import build_model, write_data  # noqa: E402
from swift_sft import run_swift  # noqa: E402


def long_rows(workdir: Path, length: int, rows: int = 4) -> Path:
    """A workdir for run_swift whose data are `rows` samples of about `length` tokens (one word ~ one token,
    the image 196 tokens), reusing the benchmark's model and images."""
    target = workdir / f"long_{length}"
    (target / "data").mkdir(parents=True, exist_ok=True)
    model = target / "qwen3-vl-4b-random"
    if not model.exists():
        model.symlink_to(workdir / "qwen3-vl-4b-random")
    rng = random.Random(length)
    words = ["image", "shows", "a", "red", "square", "near", "the", "left", "edge", "with", "blue", "sky"]
    with open(target / "data" / "train.jsonl", "w") as f:
        for i in range(rows):
            text = [rng.choice(words) for _ in range(length - 400)]
            f.write(json.dumps({"messages": [{"role": "user", "content": "<image>" + " ".join(text[:100])},
                                             {"role": "assistant", "content": " ".join(text[100:])}],
                                "images": [str(workdir / "data" / "images" / f"{i}.jpg")]}) + "\n")
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vb"))
    parser.add_argument("--lengths", default="32768,49152")
    args = parser.parse_args()
    build_model(args.workdir / "qwen3-vl-4b-random")
    write_data(args.workdir / "data", 64)  # the images
    lines = ["| max_length | real tokens per step | peak GPU memory, allocated (GiB) |", "| --- | --- | --- |"]
    for length in (int(n) for n in args.lengths.split(",")):
        try:
            result = run_swift(long_rows(args.workdir, length), length, steps=2, warmup_steps=1, batch_size=1,
                               num_workers=0, num_proc=1, attn_impl="sdpa", lora_dropout=0.0)
            lines.append(f"| {length:,} | {result['tokens_per_step']:,.0f} | {result['peak_memory_gib']:.1f} |")
        except RuntimeError as error:
            oom = "out of memory" in str(error).lower()
            lines.append(f"| {length:,} | - | {'out of memory' if oom else 'failed: see the log'} |")
            print(error, flush=True)
        print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent.parent))  # vlft's flops for MFU, as swift_sft.py
    sys.exit(main())
