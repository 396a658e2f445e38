"""A bounded load on `vlft deploy`: N chat completions from C concurrent clients (streamed and whole, every third
with a small image, cycling over the base model and two named LoRA adapters), printing a table of latency
percentiles, requests/s and generated tokens/s; then the pixel attack of issue 24 (one request with eight
7000x7000 PNGs, then one with a single such PNG) and the server's resting and peak RSS. Against a running server
(no RSS then), or one this script starts with the tiny model and two random adapters it makes (CPU is fine):

    python bench/deploy_load.py [--url http://127.0.0.1:8000/v1 --api_key KEY --models BASE a b]
                                [--requests 200 --concurrency 16 --max_tokens 4 --max_batch_size 8]

Greedy answers to the same request for the same model must all be equal (the server batches whole answers); any
difference or error makes the script exit non-zero.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from vlft.infer.load_client import load_table, memory_mib, mixed_requests, pixel_attack, run_load

REPO = Path(__file__).resolve().parents[1]
ATTACK_SIDE = 7000


def random_adapters(model: str, out: Path) -> dict[str, Path]:
    """Two LoRA checkpoints of `model` with random A and B (they change the answers), saved by PEFT."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    from vlft.model.loading import load_pretrained
    from vlft.model.hub import resolve_model_dir
    from vlft.paths import cache_root

    base = load_pretrained(resolve_model_dir(model, use_hf=False, cache_root=cache_root(None)), torch.float32)
    saved = {}
    for seed, name in enumerate(("a", "b"), start=1):
        torch.manual_seed(seed)
        lora = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                              target_modules=["q_proj", "v_proj", "down_proj"]))
        lora.save_pretrained(out / name)
        saved[name] = out / name
    return saved


def start_server(model: str, adapters: dict[str, Path], max_batch_size: int,
                 api_key: str | None) -> tuple[subprocess.Popen, str]:
    """`vlft deploy --port 0` started here; (process, base URL) once it prints its serving line."""
    command = [str(Path(sys.executable).with_name("vlft")), "deploy", "--model", model, "--port", "0",
               "--max_batch_size", str(max_batch_size), "--image_max_token_num", "16",
               "--adapters", *(f"{name}={path}" for name, path in adapters.items())]
    env = {**os.environ, **({"VLFT_API_KEY": api_key} if api_key else {})}  # not on the command line
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    line = ""
    while "serving" not in line:
        line = process.stdout.readline()
        if not line:
            raise SystemExit("vlft deploy exited before serving")
    port = re.search(r":(\d+)/v1", line).group(1)
    return process, f"http://127.0.0.1:{port}/v1"


def attack_table(url: str, pid: int | None, api_key: str | None) -> str:
    """The pixel attack's answers (status, seconds) and, for a server started here, its RSS around them."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (ATTACK_SIDE, ATTACK_SIDE), (90, 140, 200)).save(buffer, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    resting = memory_mib(pid)["VmRSS"] if pid else float("nan")
    rows = []
    for count in (8, 1):
        start = time.perf_counter()
        status, _ = pixel_attack(url, uri, count, api_key)
        peak = memory_mib(pid)["VmHWM"] if pid else float("nan")
        rows.append(f"| {count} x {ATTACK_SIDE}x{ATTACK_SIDE} PNG ({len(buffer.getvalue()) // 1024} KiB each) | "
                    f"{status} | {time.perf_counter() - start:.2f} | {resting:.0f} | {peak:.0f} |")
    header = "| request | status | seconds | resting RSS MiB | peak RSS MiB since start |"
    return "\n".join([header, "|---|---|---|---|---|", *rows])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="base URL of a running server (default: start one)")
    parser.add_argument("--api_key", default=os.environ.get("VLFT_API_KEY"), help="[env: VLFT_API_KEY]")
    parser.add_argument("--model", default="vlft/tiny-qwen3-vl", help="model of the server started here")
    parser.add_argument("--models", nargs="*", help="served ids to cycle over with --url (default: the base)")
    parser.add_argument("--max_batch_size", type=int, default=8, help="of the server started here")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max_tokens", type=int, default=4)
    parser.add_argument("--image", default=str(REPO / "examples/data/images/red.png"))
    args = parser.parse_args()

    process, url, models = None, args.url, args.models or [None]
    with tempfile.TemporaryDirectory() as folder:
        try:
            if url is None:
                adapters = random_adapters(args.model, Path(folder))
                process, url = start_server(args.model, adapters, args.max_batch_size, args.api_key)
                models = [None, *adapters]
            image = "data:image/png;base64," + base64.b64encode(Path(args.image).read_bytes()).decode()
            requests = mixed_requests(args.requests, image, args.max_tokens, models)
            report = run_load(url, requests, args.concurrency, args.api_key)
            attacks = attack_table(url, process.pid if process else None, args.api_key)
        finally:
            if process is not None:
                process.terminate()
                process.wait(timeout=30)
    print(load_table(report))
    print()
    print(attacks)
    answers = defaultdict(set)
    for result in report.results:
        if result.error is None:
            answers[result.request.prompt, result.request.image_uri is not None, result.request.model].add(
                result.answer)
    differing = {key: values for key, values in answers.items() if len(values) > 1}
    for result in report.errors[:5]:
        print(f"error: {result.error}", file=sys.stderr)
    for (prompt, with_image, model), values in differing.items():
        print(f"different answers to {prompt!r} (image: {with_image}, model: {model}): {sorted(values)}",
              file=sys.stderr)
    return 1 if report.errors or differing else 0


if __name__ == "__main__":
    sys.exit(main())
