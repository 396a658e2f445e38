"""An OpenAI-compatible HTTP server over an InferEngine: `/v1/models` and `/v1/chat/completions`
(whole answers, or server-sent events when `stream` is true). Standard library only."""

from __future__ import annotations

import dataclasses
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from vlft.errors import DataError, VlftError
from vlft.infer.protocol import InferRequest, RequestConfig

REMOTE_PREFIXES = ("http://", "https://", "data:")


def _media_refs(messages: list) -> list[str]:
    refs = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict):
                for key in ("image_url", "video_url", "image", "video"):
                    value = part.get(key)
                    value = value.get("url") if isinstance(value, dict) else value
                    if isinstance(value, str):
                        refs.append(value)
    return refs


def parse_chat_request(body: dict, allow_local_media: bool) -> tuple[InferRequest, RequestConfig]:
    """The engine's request and config from an OpenAI chat-completions body."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError("expected a non-empty list of messages", field="messages")
    if not allow_local_media:
        local = [r for r in _media_refs(messages) if not r.startswith(REMOTE_PREFIXES)]
        if local:
            raise DataError(f"local media paths are refused ({local[0]}); start vlft deploy with "
                            "--allow_local_media true, or send a data: or http(s) URL", field="messages")
    temperature = float(body.get("temperature", 0.0) or 0.0)
    config = RequestConfig(max_tokens=int(body.get("max_tokens") or body.get("max_completion_tokens") or 512),
                           temperature=temperature, top_p=float(body.get("top_p", 1.0) or 1.0),
                           seed=body.get("seed"), stream=bool(body.get("stream", False)))
    return InferRequest(messages=messages), config


def _as_json(response) -> dict:
    out = dataclasses.asdict(response)
    if "usage" in out:
        out["usage"]["total_tokens"] = out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
    return out


def make_server(engine, host: str, port: int, allow_local_media: bool = False) -> ThreadingHTTPServer:
    """A server bound to host:port (port 0 picks a free one); call serve_forever() to run it."""
    lock = threading.Lock()  # one generation at a time: the model is shared

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # quiet: the CLI prints its own line per request
            pass

        def _send_json(self, status: int, payload: dict) -> None:
            data = json.dumps(payload, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str) -> None:
            self._send_json(status, {"error": {"message": message, "type": "invalid_request_error"}})

        def do_GET(self):
            if self.path.rstrip("/") == "/v1/models":
                self._send_json(200, {"object": "list", "data": [{"id": engine.model_name, "object": "model",
                                                                  "owned_by": "vlft"}]})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self):
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._error(404, f"no route {self.path}")
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                request, config = parse_chat_request(body, allow_local_media)
                with lock:
                    if not config.stream:
                        self._send_json(200, _as_json(engine.infer([request], config)[0]))
                        return
                    chunks = engine.infer([request], config)[0]  # bad input raises here, before any byte
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Cache-Control", "no-cache")
                    self.end_headers()
                    for chunk in chunks:
                        self.wfile.write(f"data: {json.dumps(_as_json(chunk), ensure_ascii=False)}\n\n".encode())
                        self.wfile.flush()
                    self.wfile.write(b"data: [DONE]\n\n")
            except (DataError, VlftError, json.JSONDecodeError, ValueError) as e:
                self._error(400, str(e))

    return ThreadingHTTPServer((host, port), Handler)
