"""CPU benchmark of the data side: samples/s of encoding (template + processor: image load and resize,
patching, tokenization, labels) for vlft and for ms-swift's template (`swift.template.get_template(...)
.encode`) on the same seed-format jsonl (bench/sft_qwen3_vl_4b.py's generator: one 448x448 image and
200-1500 words a row) and the same Qwen3-VL processor files. Prints a table.

    python bench/encode_cpu.py [--rows 300] [--swift_python PY ...]

ms-swift runs in subprocesses with PYTHONPATH=$SWIFT_SITE (bench/peers/install_swift.sh) and
$SWIFT_EXTRA_PATH, one per --swift_python interpreter, so its pins (peft<0.21, datasets<4.8.5) never
meet vlft's. (vlft's dev venv lacks httpx and aiohttp, which datasets 4.8 and ms-swift import: put dirs
with them in SWIFT_EXTRA_PATH.) Every process uses one torch thread, so that "1 process" means one core
on any machine; the encode loops keep the best of --repeats timings, as the machine may be shared."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def prepare(workdir: Path, rows: int) -> tuple[Path, Path, Path]:
    """A processor-only Qwen3-VL model dir (config + real tokenizer and processor) and the data."""
    sys.path.insert(0, str(HERE))
    from sft_qwen3_vl_4b import write_data

    from vlft.model.tiny import build_processor, tiny_config
    from vlft.model.tokenizer import build_qwen_tokenizer

    model_dir = workdir / "processor"
    if not (model_dir / "config.json").is_file():
        tiny_config("qwen3_vl").save_pretrained(model_dir)
        build_processor("qwen3_vl", build_qwen_tokenizer()).save_pretrained(model_dir)
    data = write_data(workdir / "data", rows)
    absolute = data.with_name("train_abs.jsonl")  # ms-swift opens relative image paths from its cwd
    with open(data) as src, open(absolute, "w") as dst:
        for line in src:
            row = json.loads(line)
            row["images"] = [str(data.parent / p) for p in row["images"]]
            dst.write(json.dumps(row) + "\n")
    return model_dir, data, absolute


def time_vlft(model_dir: Path, data: Path, max_length: int, cache_dir: Path, repeats: int) -> tuple[list, list]:
    """(label, seconds, samples) rows for vlft's encode (1 and 2 processes, then a cold and a cached run), and
    its encodings."""
    import torch

    from vlft.arguments import DataCheckArguments
    from vlft.data.pipeline import build_encoder, encode_dataset, encode_rows, read_rows

    torch.set_num_threads(1)
    args = DataCheckArguments(model=str(model_dir), dataset=[str(data)], max_length=max_length,
                              cache_dir=str(cache_dir))
    encoder, _, _ = build_encoder(args)
    results = []
    for keep_pixels in (True, False):
        what = "with pixel values" if keep_pixels else "ids and grids (sft, data check)"
        for num_proc in (1, 2):
            seconds = []
            for _ in range(repeats):
                start = time.perf_counter()
                encoded = encode_rows(encoder, read_rows(args, args.dataset, cache_dir), None, num_proc, keep_pixels)
                seconds.append(time.perf_counter() - start)
            processes = f"{num_proc} process{'es' if num_proc > 1 else ''}"
            results.append((f"vlft encode, {what}, {processes}", min(seconds), _ok(encoded)))
    for label in ("vlft sft's data step, 2 processes, cold cache (encode + write cache)",
                  "vlft sft's data step, second run (cache hit)"):
        args.dataset_num_proc = 2
        start = time.perf_counter()
        lean = encode_dataset(args, encoder, model_dir, args.dataset, keep_pixels=False)
        results.append((label, time.perf_counter() - start, _ok(lean)))
    encoded = encode_rows(encoder, read_rows(args, args.dataset, cache_dir), None, 1)  # with pixels: compared
    cache_files = list((cache_dir / "encoded").glob("*.pt"))
    size = sum(f.stat().st_size for f in cache_files) / 2**20
    print(f"vlft cache: {len(cache_files)} file(s), {size:,.0f} MiB for {len(encoded)} rows", flush=True)
    return results, encoded


def _ok(results) -> int:
    if any(r.error is not None for r in results):
        raise SystemExit(f"vlft could not encode: {next(r.error for r in results if r.error is not None)}")
    return len(results)


def swift_child(model_dir: str, data: str, max_length: int, map_rows: int, repeats: int, out: str) -> None:
    """In ms-swift's environment: time template.encode over the rows (what its data loader does per sample),
    then its datasets.map path (how it pre-encodes, e.g. for packing) on the first `map_rows`, in 1 and 2
    processes."""
    import torch
    import transformers
    from datasets import Dataset
    from swift.dataset import EncodePreprocessor
    from swift.model import get_processor
    from swift.template import get_template

    torch.set_num_threads(1)
    processor = get_processor(model_dir, model_type="qwen3_vl")
    template = get_template(processor, max_length=max_length, template_type="qwen3_vl",
                            truncation_strategy="delete")
    template.set_mode("train")
    rows = [json.loads(line) for line in Path(data).read_text().splitlines()]
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        encoded = [template.encode(row) for row in rows]
        seconds.append(time.perf_counter() - start)
    timings = {"template.encode, 1 process": (min(seconds), len(rows))}
    for num_proc in (1, 2):
        start = time.perf_counter()
        mapped = EncodePreprocessor(template)(Dataset.from_list(rows[:map_rows]), num_proc=num_proc,
                                              load_from_cache_file=False)
        label = f"EncodePreprocessor (datasets.map), {num_proc} process{'es' * (num_proc > 1)}"
        timings[label] = (time.perf_counter() - start, len(mapped))
    first = [{"input_ids": list(map(int, e["input_ids"])), "labels": list(map(int, e["labels"])),
              "pixel_sum": float(e["pixel_values"].double().sum()), "grid": e["image_grid_thw"].tolist()}
             for e in encoded[:3]]
    Path(out).write_text(json.dumps({"transformers": transformers.__version__, "timings": timings, "first": first}))


def time_swift(python: str, model_dir: Path, data: Path, max_length: int, map_rows: int, repeats: int) -> dict:
    """Run swift_child in `python` with PYTHONPATH=$SWIFT_SITE:$SWIFT_EXTRA_PATH; its timings."""
    paths = [os.environ.get("SWIFT_SITE", "/tmp/swift_site"), *os.environ.get("SWIFT_EXTRA_PATH", "").split(":")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    python = os.path.abspath(python) if os.sep in python else python  # the child runs in the data dir
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([python, __file__, "--swift_child", str(model_dir), str(data), str(max_length), str(map_rows),
                        str(repeats), out.name], env=env, check=True, cwd=data.parent)
        return json.loads(Path(out.name).read_text())


def compare(vlft_encoded, swift_first: list[dict]) -> str:
    """Whether ms-swift's first encodings equal vlft's (token ids, labels, image grid, pixel sums)."""
    notes = []
    for i, theirs in enumerate(swift_first):
        ours = vlft_encoded[i].sample
        same_ids = ours.input_ids == theirs["input_ids"]
        same_labels = ours.labels == theirs["labels"]
        pixel = abs(float(ours.pixel_values.double().sum()) - theirs["pixel_sum"])
        notes.append(f"row {i + 1}: ids {'=' if same_ids else '!='}, labels {'=' if same_labels else '!='}, "
                     f"grid {ours.image_grid_thw.tolist()} vs {theirs['grid']}, |pixel sum diff| {pixel:.3g}")
    return "\n".join(notes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--max_length", type=int, default=4096)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vlft-encode-bench"))
    parser.add_argument("--swift_python", nargs="*", default=[sys.executable],
                        help="interpreters to run ms-swift's template in (none: skip ms-swift)")
    parser.add_argument("--map_rows", type=int, default=60, help="rows for ms-swift's datasets.map path (slow)")
    parser.add_argument("--repeats", type=int, default=3, help="encode loops timed (best kept; the machine is shared)")
    parser.add_argument("--swift_child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.swift_child:
        model_dir, data, max_length, map_rows, repeats, out = args.swift_child
        swift_child(model_dir, data, int(max_length), int(map_rows), int(repeats), out)
        return 0
    sys.path.insert(0, str(HERE.parent))
    model_dir, data, absolute = prepare(args.workdir, args.rows)
    with tempfile.TemporaryDirectory(dir=args.workdir) as cache_dir:
        rows, encoded = time_vlft(model_dir, data, args.max_length, Path(cache_dir), args.repeats)
    notes = []
    for python in args.swift_python:
        swift = time_swift(python, model_dir, absolute, args.max_length, args.map_rows, args.repeats)
        who = f"ms-swift 4.6 (transformers {swift['transformers']})"
        rows += [(f"{who} {label}", seconds, samples) for label, (seconds, samples) in swift["timings"].items()]
        notes.append(f"{who} vs vlft:\n{compare(encoded, swift['first'])}")
    import transformers

    print(f"\n{args.rows} rows, one 448x448 image each, max_length {args.max_length}; vlft on transformers "
          f"{transformers.__version__}; {os.cpu_count()} CPU cores; encode loops: best of {args.repeats}\n")
    print("| encoder | samples/s | seconds |\n| --- | ---: | ---: |")
    for label, seconds, samples in rows:
        print(f"| {label} | {samples / seconds:,.1f} | {seconds:,.1f} |")
    print("\n" + "\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
