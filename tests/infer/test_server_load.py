"""A bounded load on `vlft deploy` (the shared tiny Qwen3-VL server on 127.0.0.1, tests/infer/conftest.py): 200
requests from 16 concurrent clients, streamed and whole, some with an image, for the base model and both named
adapters. No errors, and every greedy answer equals the engine's own answer to the same request asked alone with
the same adapter. Prints latency percentiles and throughput (`pytest -s`)."""

from __future__ import annotations

import time

import pytest

from tests.infer.server_helpers import KEY, RED, data_uri

pytestmark = [pytest.mark.load, pytest.mark.slow]
REQUESTS, CONCURRENCY, MAX_TOKENS = 200, 16, 4


def test_deploy_under_load(served):
    from vlft import InferRequest, RequestConfig
    from vlft.infer.load_client import load_table, mixed_requests, run_load

    start = time.monotonic()
    engine = served.engine
    requests = mixed_requests(REQUESTS, data_uri(RED), MAX_TOKENS, [None, "a", "b"])
    # Ground truth: each distinct request answered by the engine alone (the server decodes the same image).
    expected = {}
    for r in requests:
        key = (r.prompt, r.image_uri, r.model)
        if key not in expected:
            [answer] = engine.infer([InferRequest(messages=r.messages())], RequestConfig(max_tokens=MAX_TOKENS),
                                    adapter=r.model)
            expected[key] = answer.choices[0].message.content
    report = run_load(served.url, requests, CONCURRENCY, KEY)
    print(f"\nvlft deploy load (tiny Qwen3-VL, CPU, max_tokens {MAX_TOKENS}, max_batch_size "
          f"{engine.args.max_batch_size}):\n{load_table(report)}\n(whole test {time.monotonic() - start:.1f} s)")
    assert [r.error for r in report.errors] == []
    assert len(report.results) == REQUESTS and sum(r.request.stream for r in report.results) > 0
    wrong = [(r.request.prompt, r.request.model, r.request.stream, r.answer) for r in report.results
             if r.answer != expected[r.request.prompt, r.request.image_uri, r.request.model]]
    assert wrong == []  # whole answers (batched by the server, per adapter) and streamed ones alike
    assert all(r.completion_tokens == MAX_TOKENS or r.completion_tokens < MAX_TOKENS for r in report.results)
