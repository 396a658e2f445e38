"""A bounded load on `vlft deploy` (tiny Qwen3-VL, 127.0.0.1): 200 requests from 16 concurrent clients,
streamed and whole, some with an image. No errors, and every greedy answer equals the engine's own answer
to the same request asked alone. Prints latency percentiles and throughput (`pytest -s`)."""

from __future__ import annotations

import base64
import threading
import time

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.load, pytest.mark.slow]
RED = REPO / "examples" / "data" / "images" / "red.png"
REQUESTS, CONCURRENCY, MAX_TOKENS, BATCH = 200, 16, 4, 8


def test_deploy_under_load(tiny_model_dir):
    from vlft import InferEngine, InferRequest, RequestConfig
    from vlft.infer.load_client import load_table, mixed_requests, run_load
    from vlft.infer.server import make_server

    start = time.monotonic()
    engine = InferEngine(model=str(tiny_model_dir("qwen3_vl")), max_batch_size=BATCH, image_max_token_num=16)
    image = "data:image/png;base64," + base64.b64encode(RED.read_bytes()).decode()
    requests = mixed_requests(REQUESTS, image, MAX_TOKENS)
    # Ground truth: each distinct request answered by the engine alone, before the server runs.
    expected = {}
    for r in requests:
        if (r.prompt, r.image_uri) not in expected:
            answer = engine.infer([InferRequest(messages=r.messages())], RequestConfig(max_tokens=MAX_TOKENS))[0]
            expected[r.prompt, r.image_uri] = answer.choices[0].message.content

    server = make_server(engine, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        report = run_load(f"http://127.0.0.1:{server.server_address[1]}/v1", requests, CONCURRENCY)
    finally:
        server.shutdown()
        server.server_close()

    print(f"\nvlft deploy load (tiny Qwen3-VL, CPU, max_tokens {MAX_TOKENS}, max_batch_size {BATCH}):\n"
          f"{load_table(report)}\n(whole test {time.monotonic() - start:.1f} s)")
    assert [r.error for r in report.errors] == []
    assert len(report.results) == REQUESTS and sum(r.request.stream for r in report.results) > 0
    wrong = [(r.request.prompt, r.request.stream, r.answer) for r in report.results
             if r.answer != expected[r.request.prompt, r.request.image_uri]]
    assert wrong == []  # whole answers (batched by the server) and streamed ones alike
