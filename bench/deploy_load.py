"""A bounded load on `vlft deploy`: N chat completions from C concurrent clients (a mix of streamed and
whole answers, every third with a small image), printing a table of latency percentiles and requests/s.
Against a running server, or one this script starts with the tiny model (CPU is fine):

    python bench/deploy_load.py [--url http://127.0.0.1:8000/v1 --api_key KEY]
                                [--requests 200 --concurrency 16 --max_tokens 4 --max_batch_size 8]

Greedy answers to the same request must all be equal (the server batches whole answers); any
difference or error makes the script exit non-zero.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from vlft.infer.load_client import load_table, mixed_requests, run_load

REPO = Path(__file__).resolve().parents[1]


def start_server(model: str, max_batch_size: int, api_key: str | None) -> tuple[subprocess.Popen, str]:
    """`vlft deploy --port 0` started here; (process, base URL) once it prints its serving line."""
    command = [str(Path(sys.executable).with_name("vlft")), "deploy", "--model", model, "--port", "0",
               "--max_batch_size", str(max_batch_size), "--image_max_token_num", "16"]
    env = {**os.environ, **({"VLFT_API_KEY": api_key} if api_key else {})}  # not on the command line
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    line = ""
    while "serving" not in line:
        line = process.stdout.readline()
        if not line:
            raise SystemExit("vlft deploy exited before serving")
    port = re.search(r":(\d+)/v1", line).group(1)
    return process, f"http://127.0.0.1:{port}/v1"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="base URL of a running server (default: start one)")
    parser.add_argument("--api_key", default=os.environ.get("VLFT_API_KEY"), help="[env: VLFT_API_KEY]")
    parser.add_argument("--model", default="vlft/tiny-qwen3-vl", help="model of the server started here")
    parser.add_argument("--max_batch_size", type=int, default=8, help="of the server started here")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max_tokens", type=int, default=4)
    parser.add_argument("--image", default=str(REPO / "examples/data/images/red.png"))
    args = parser.parse_args()

    process, url = (None, args.url) if args.url else start_server(args.model, args.max_batch_size, args.api_key)
    try:
        image = "data:image/png;base64," + base64.b64encode(Path(args.image).read_bytes()).decode()
        report = run_load(url, mixed_requests(args.requests, image, args.max_tokens), args.concurrency, args.api_key)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
    print(load_table(report))
    answers = defaultdict(set)
    for result in report.results:
        if result.error is None:
            answers[result.request.prompt, result.request.image_uri is not None].add(result.answer)
    differing = {key: values for key, values in answers.items() if len(values) > 1}
    for result in report.errors[:5]:
        print(f"error: {result.error}", file=sys.stderr)
    for (prompt, with_image), values in differing.items():
        print(f"different answers to {prompt!r} (image: {with_image}): {sorted(values)}", file=sys.stderr)
    return 1 if report.errors or differing else 0


if __name__ == "__main__":
    sys.exit(main())
