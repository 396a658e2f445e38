"""A bounded load on a `vlft deploy` URL: many chat completions from concurrent clients (standard library only),
each one's latency, answer and generated tokens, and a table of latency percentiles and throughput."""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

PROMPTS = ["Describe the picture.", "What colour is it?", "Say hello.", "Count to three.",
           "Name a fruit.", "What is two plus two?", "Write a short poem.", "Which shape is this?"]


@dataclass(frozen=True)
class LoadRequest:
    """One chat completion of the load: a text prompt, maybe with an image, for one served model, streamed or
    not."""

    prompt: str
    image_uri: str | None
    stream: bool
    max_tokens: int
    model: str | None = None  # None: the server's base model

    def messages(self) -> list[dict]:
        content: list[dict] = [{"type": "text", "text": self.prompt}]
        if self.image_uri:
            content.insert(0, {"type": "image_url", "image_url": {"url": self.image_uri}})
        return [{"role": "user", "content": content}]


@dataclass(frozen=True)
class LoadResult:
    request: LoadRequest
    latency_s: float
    answer: str | None
    completion_tokens: int
    error: str | None


@dataclass(frozen=True)
class LoadReport:
    results: list[LoadResult]
    concurrency: int
    wall_s: float

    @property
    def errors(self) -> list[LoadResult]:
        return [r for r in self.results if r.error is not None]

    def latency_percentile(self, q: float) -> float:
        """Nearest-rank percentile (q in 0..100) of the successful requests' latencies, in seconds."""
        latencies = sorted(r.latency_s for r in self.results if r.error is None)
        if not latencies:
            return math.nan
        return latencies[max(0, math.ceil(q / 100 * len(latencies)) - 1)]


def mixed_requests(count: int, image_uri: str, max_tokens: int, models: list[str | None] | None = None
                   ) -> list[LoadRequest]:
    """`count` requests cycling through the prompts and `models`; every 3rd carries the image, every 4th streams."""
    models = models or [None]
    return [LoadRequest(PROMPTS[i % len(PROMPTS)], image_uri if i % 3 == 0 else None, i % 4 == 1, max_tokens,
                        models[i // 4 % len(models)]) for i in range(count)]


def memory_mib(pid: int) -> dict[str, float]:
    """A Linux process's resident memory now (VmRSS) and its peak so far (VmHWM), in MiB."""
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line)
    return {name: int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "VmHWM")}


def pixel_attack(base_url: str, image_uri: str, count: int, api_key: str | None = None,
                 model: str | None = None) -> tuple[int, str]:
    """(HTTP status, start of the body) of one request carrying `count` copies of an image."""
    content = [{"type": "image_url", "image_url": {"url": image_uri}}] * count + [{"type": "text", "text": "?"}]
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 2, **({"model": model} if model else {})}
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    request = urllib.request.Request(f"{base_url.rstrip('/')}/chat/completions", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, response.read()[:300].decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read()[:300].decode(errors="replace")


def _streamed(response) -> tuple[str, int]:
    """The joined deltas and the usage's completion tokens of a server-sent event stream."""
    pieces, tokens, done = [], 0, False
    for line in response:
        line = line.decode().strip()
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            done = True
            break
        event = json.loads(line[len("data: "):])
        if "error" in event:
            raise RuntimeError(f"stream error: {event['error'].get('message')}")
        if event.get("usage"):
            tokens = event["usage"]["completion_tokens"]
        if event["choices"]:
            pieces.append(event["choices"][0]["delta"].get("content") or "")
    if not done:
        raise RuntimeError("stream ended without [DONE]")
    return "".join(pieces), tokens


def chat(base_url: str, request: LoadRequest, api_key: str | None = None, timeout: float = 120.0) -> tuple[str, int]:
    """The answer's text and completion tokens from POST {base_url}/chat/completions."""
    body = {"messages": request.messages(), "max_tokens": request.max_tokens, "temperature": 0,
            "stream": request.stream, **({"model": request.model} if request.model else {}),
            **({"stream_options": {"include_usage": True}} if request.stream else {})}
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    http_request = urllib.request.Request(f"{base_url.rstrip('/')}/chat/completions",
                                          data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(http_request, timeout=timeout) as response:
        if request.stream:
            return _streamed(response)
        answer = json.loads(response.read())
        return answer["choices"][0]["message"]["content"], answer["usage"]["completion_tokens"]


def _timed(base_url: str, request: LoadRequest, api_key: str | None) -> LoadResult:
    start = time.perf_counter()
    answer, tokens, error = None, 0, None
    try:
        answer, tokens = chat(base_url, request, api_key)
    except urllib.error.HTTPError as e:
        error = f"HTTP {e.code}: {e.read()[:300].decode(errors='replace')}"
    except Exception as e:  # a load test counts every failure, whatever it is
        error = f"{type(e).__name__}: {e}"
    return LoadResult(request, time.perf_counter() - start, answer, tokens, error)


def run_load(base_url: str, requests: list[LoadRequest], concurrency: int,
             api_key: str | None = None) -> LoadReport:
    """Send every request, `concurrency` at a time, each from its own client thread."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda r: _timed(base_url, r, api_key), requests))
    return LoadReport(results, concurrency, time.perf_counter() - start)


def load_table(report: LoadReport) -> str:
    """A markdown table: requests, concurrency, mix, errors, latency p50/p90/p99, requests/s, generated tokens/s,
    wall time."""
    results = report.results
    streamed = sum(r.request.stream for r in results)
    with_image = sum(r.request.image_uri is not None for r in results)
    models = len({r.request.model for r in results})
    tokens = sum(r.completion_tokens for r in results)
    p50, p90, p99 = (report.latency_percentile(q) * 1000 for q in (50, 90, 99))
    header = ("| requests | concurrency | streamed | with image | models | errors | p50 ms | p90 ms | p99 ms | req/s "
              "| tokens/s | wall s |")
    row = (f"| {len(results)} | {report.concurrency} | {streamed} | {with_image} | {models} | {len(report.errors)} | "
           f"{p50:.0f} | {p90:.0f} | {p99:.0f} | {len(results) / report.wall_s:.1f} | {tokens / report.wall_s:.1f} "
           f"| {report.wall_s:.1f} |")
    return "\n".join([header, "|" + "---|" * 12, row])
