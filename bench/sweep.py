"""How speed and memory scale with the work: `vlft sft` (its defaults: fast path and memory plan) against ms-swift 4.6
(its best setting that runs: packed on flash-attn-4 when staged, else padded sdpa) over max_length x media per
sample, on the Qwen3-VL-4B shape (bench/sft_qwen3_vl_4b.py's random model), LoRA r8 all-linear, each run measured
from outside its trainer (bench/peers/measure.py). Every run appends one JSON line to --results; a device call's
10 minutes hold a few runs, so a sweep is several calls with --lengths / --media subsets, and the table and plot
are made from their result files afterwards:

    source bench/device_env.sh && bash bench/peers/install_swift.sh && \\
    python3 bench/sweep.py --workdir /tmp/sw --lengths 2048,8192 --media 1img,4img --results $OUT/sweep.jsonl
    python3 bench/sweep.py --report sweep_*.jsonl --png docs/images/sweep.png    # here: the table and the plot

Media: `Nimg` = N 448x448 images per sample (196 tokens each) and 100-800 words; `video64` = one 64-frame 224x224
video (32 s at the default 2 fps; its frames scaled up to the processor's least pixels: 32 x 121 = 3,872 tokens) and 100-800 words. A (max_length, media) pair whose
samples do not fit a row is skipped and listed. --tiny runs the same code on the built-in tiny Qwen3-VL (CPU check).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))

WORDS = ["image", "shows", "a", "red", "square", "near", "the", "left", "edge", "with", "blue", "sky", "and", "green",
         "grass", "under", "small", "house", "tree", "river", "light", "shadow", "city", "road"]
# A 224x224 frame is scaled up to the video processor's least pixels: 22 x 22 patches, 121 tokens per 2 frames.
IMAGE_TOKENS, VIDEO_TOKENS, MOST_WORDS = 196, 32 * 121, 800


def media_tokens(media: str) -> int:
    """Vision tokens of one sample of the media kind."""
    return VIDEO_TOKENS if media == "video64" else int(media.removesuffix("img")) * IMAGE_TOKENS


def write_video(path: Path, frames: int = 64, fps: int = 2, size: int = 224) -> None:
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(frames):
            frame = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_media_data(directory: Path, media: str, samples: int, seed: int = 0) -> Path:
    """Seed-format jsonl (absolute media paths) with the media kind's images or video per sample."""
    import numpy as np
    from PIL import Image

    path = directory / "train.jsonl"
    if path.is_file():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    if media == "video64":
        write_video(directory / "v.mp4")
    else:
        for i in range(16):
            pixels = np.random.default_rng(i).integers(0, 255, (448, 448, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(directory / f"{i}.jpg", quality=90)
    with open(path, "w") as f:
        for _ in range(samples):
            n_words = rng.randint(100, MOST_WORDS)
            split = rng.randint(20, n_words - 10)
            text = [rng.choice(WORDS) for _ in range(n_words)]
            if media == "video64":
                tags, media_field = "<video>", {"videos": [str(directory / "v.mp4")]}
            else:
                count = int(media.removesuffix("img"))
                tags, media_field = "<image>" * count, {"images": [str(directory / f"{rng.randrange(16)}.jpg")
                                                                  for _ in range(count)]}
            f.write(json.dumps({"messages": [{"role": "user", "content": tags + " ".join(text[:split])},
                                             {"role": "assistant", "content": " ".join(text[split:])}],
                                **media_field}) + "\n")
    return path


def variant_dir(workdir: Path, media: str, model: Path, samples: int) -> Path:
    """workdir/media_<kind>/ laid out as the peers expect: the model (a link) and data/train.jsonl."""
    directory = workdir / f"media_{media}"
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / model.name
    if not link.exists():
        link.symlink_to(model.resolve(), target_is_directory=True)
    write_media_data(directory / "data", media, samples)
    return directory


def run_one(directory: Path, peer: str, max_length: int, steps: int, warmup: int) -> dict:
    if peer == "swift":
        from swift_sft import run_swift

        return run_swift(directory, max_length, steps, warmup, num_workers=4, lora_dropout=0.05)
    from compare_peers import run_vlft

    return run_vlft(directory, peer, max_length, steps, warmup, num_workers=4, lora_dropout=None)


def report(files: list[Path], png: Path | None) -> str:
    """The table (tokens/s and peak GiB per peer, one row per media x max_length) and, with `png`, the plot."""
    results = [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
    peers = sorted({r["peer"] for r in results})
    keys = sorted({(r["media"], r["max_length"]) for r in results}, key=lambda k: (media_tokens(k[0]), k[1]))
    by = {(r["media"], r["max_length"], r["peer"]): r for r in results}
    head = "| media | max_length | " + " | ".join(f"{p} tokens/s | {p} peak GiB" for p in peers) + " |"
    lines = [head, "| --- | --- |" + " --- | --- |" * len(peers)]
    for media, length in keys:
        cells = []
        for peer in peers:
            r = by.get((media, length, peer))
            cells += ([f"{r['tokens_per_second']:,.0f}", f"{r['peak_memory_gib']:.1f}"] if r and "error" not in r
                      else [r["error"][:40] if r else "-", "-"])
        lines.append(f"| {media} | {length:,} | " + " | ".join(cells) + " |")
    if png is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, (speed, memory) = plt.subplots(1, 2, figsize=(12, 4.5))
        for media in sorted({m for m, _ in keys}, key=media_tokens):
            for peer, style in zip(peers, ("-o", "--s", ":^")):
                points = sorted((r["max_length"], r) for (m, _, p), r in by.items()
                                if m == media and p == peer and "error" not in r)
                if points:
                    x = [length for length, _ in points]
                    speed.plot(x, [r["tokens_per_second"] for _, r in points], style, label=f"{peer}, {media}")
                    memory.plot(x, [r["peak_memory_gib"] for _, r in points], style, label=f"{peer}, {media}")
        for axis, label in ((speed, "real tokens/s"), (memory, "peak GPU memory (GiB)")):
            axis.set_xscale("log", base=2)
            axis.set_xlabel("max_length (tokens per packed row)")
            axis.set_ylabel(label)
            axis.grid(True, alpha=0.3)
        speed.legend(fontsize=7)
        figure.suptitle("vlft sft vs ms-swift 4.6, Qwen3-VL-4B shape, LoRA r8 (bench/sweep.py)")
        figure.tight_layout()
        figure.savefig(png, dpi=110)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vlft-sweep"))
    parser.add_argument("--lengths", default="2048,4096,8192,16384,32768")
    parser.add_argument("--media", default="1img,4img,16img,video64")
    parser.add_argument("--peers", default="vlft-default,swift")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=4, help="steps left out of the averages")
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--results", type=Path, help="JSON lines, one per run, appended")
    parser.add_argument("--report", type=Path, nargs="+", help="make the table (and --png) from result files")
    parser.add_argument("--png", type=Path)
    parser.add_argument("--tiny", action="store_true", help="the built-in tiny Qwen3-VL (CPU check of the script)")
    args = parser.parse_args()
    if args.report:
        print(report(args.report, args.png))
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        from vlft.model.tiny import ensure_tiny_model

        model = args.workdir / "qwen3-vl-4b-random"
        if not model.exists():
            model.symlink_to(ensure_tiny_model("qwen3_vl", args.workdir / "cache"), target_is_directory=True)
    else:
        from sft_qwen3_vl_4b import build_model

        model = args.workdir / "qwen3-vl-4b-random"
        build_model(model)
    for media in args.media.split(","):
        directory = variant_dir(args.workdir, media, model, args.samples)
        for length in map(int, args.lengths.split(",")):
            for peer in args.peers.split(","):
                row = {"media": media, "max_length": length, "peer": peer}
                if media_tokens(media) + MOST_WORDS * 1.2 > length:
                    row["error"] = "a sample is longer than a row"
                else:
                    started = time.time()
                    try:
                        result = run_one(directory, peer, length, args.steps, args.warmup)
                        row.update(tokens_per_second=result["tokens_per_second"],
                                   peak_memory_gib=result["peak_memory_gib"], settings=result.get("settings"),
                                   wall_s=round(time.time() - started),
                                   **{key: result.get(key) for key in ("tokens_per_step", "step_ms",
                                                                       "loader_stall_ms_per_step")})
                    except Exception as e:  # one failed run is a cell of the table, not the end of the sweep
                        row["error"] = f"{type(e).__name__}: {e}"[:300]
                print(json.dumps(row), flush=True)
                if args.results:
                    with open(args.results, "a") as f:
                        f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
