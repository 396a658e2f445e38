"""An OpenAI-compatible HTTP server over an InferEngine: `/v1/models` and `/v1/chat/completions`
(whole answers, or server-sent events when `stream` is true). Standard library only.

Each connection has its own thread, which checks the API key, reads at most max_body_bytes, checks the
request and its media, and queues it for the one thread that runs the model (vlft.infer.scheduler)."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import socket
import sys
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from vlft.errors import DataError, VlftError
from vlft.infer.chat_request import RequestLimits, parse_chat_request
from vlft.infer.protocol import RequestConfig
from vlft.infer.scheduler import STREAM_END, Busy, EngineWorker, Job
from vlft.infer.server_media import MediaLimits, check_media_root

CLIENT_GONE = (ConnectionError, TimeoutError)  # a client that hung up or stalled past client_timeout


@dataclass(frozen=True)
class ServerLimits:
    """What the server accepts and how long it waits (the `vlft deploy` flags of the same names)."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_pending_requests: int = 256
    client_timeout: float = 60.0
    request: RequestLimits = field(default_factory=RequestLimits)

    @classmethod
    def from_args(cls, args) -> ServerLimits:
        """The limits a DeployArguments names."""
        media = MediaLimits(root=Path(args.allow_local_media) if args.allow_local_media else None,
                            max_bytes=args.max_body_bytes, max_pixels=args.max_image_pixels,
                            download_timeout_s=args.client_timeout)
        return cls(args.max_body_bytes, args.max_pending_requests, args.client_timeout,
                   RequestLimits(args.max_media_per_request, args.max_tokens_limit, media))


def _default_config(args, limits: RequestLimits) -> RequestConfig:
    """The engine's own sampling settings, for fields a request leaves out."""
    return RequestConfig(max_tokens=min(args.max_new_tokens, limits.max_tokens_limit),
                         temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                         repetition_penalty=args.repetition_penalty)


def _as_json(response) -> dict:
    out = dataclasses.asdict(response)
    if "usage" in out:
        out["usage"]["total_tokens"] = out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
    return out


def _content_length(text: str | None) -> int | None:
    """The Content-Length header's number of bytes, or None if absent or not plain ASCII digits."""
    text = (text or "").strip()
    return int(text) if text.isascii() and text.isdigit() else None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class DeployServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a deep listen backlog, owning the engine's worker thread."""

    request_queue_size = 128  # many clients connect at once; the default of 5 drops their SYNs
    daemon_threads = True
    worker: EngineWorker

    def server_close(self) -> None:
        super().server_close()
        self.worker.stop()


def make_server(engine, host: str, port: int, limits: ServerLimits | None = None,
                api_key: str | None = None) -> DeployServer:
    """A server bound to host:port (port 0 picks a free one); call serve_forever() to run it."""
    limits = limits or ServerLimits()
    check_media_root(limits.request.media.root)
    defaults = _default_config(engine.args, limits.request)
    key_digest = _digest(api_key.strip()) if api_key else None

    class Handler(BaseHTTPRequestHandler):
        server_version = "vlft"
        timeout = limits.client_timeout  # socket timeout: a stalled client frees its thread

        def log_message(self, format, *args):  # quiet: no per-request lines (and never a header)
            pass

        def _send_json(self, status: int, payload: dict, close: bool = False) -> None:
            data = json.dumps(payload, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if close:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
            kind = "server_error" if status >= 500 else "invalid_request_error"
            self._send_json(status, {"error": {"message": message, "type": kind, "param": param, "code": code}})

        def _refuse_unread(self, status: int, message: str, code: str) -> None:
            """An error sent before the body is read; the body is then discarded (at most max_body_bytes,
            for up to a second) so that closing the socket does not reset the connection under the answer."""
            self.close_connection = True
            self._send_json(status, {"error": {"message": message, "type": "invalid_request_error",
                                               "param": None, "code": code}}, close=True)
            declared = _content_length(self.headers.get("Content-Length"))
            left = limits.max_body_bytes if declared is None else min(declared, limits.max_body_bytes)
            if self.command == "GET" or left == 0:
                return
            try:
                self.connection.shutdown(socket.SHUT_WR)
                self.connection.settimeout(1.0)
                while left > 0 and (chunk := self.connection.recv(min(left, 65536))):
                    left -= len(chunk)
            except OSError:
                pass

        def _authorized(self) -> bool:
            if key_digest is None:
                return True
            scheme, _, token = self.headers.get("Authorization", "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(_digest(token.strip()), key_digest):
                return True
            self._refuse_unread(401, "missing or wrong API key: send the header `Authorization: Bearer KEY`",
                                "invalid_api_key")
            return False

        def _read_body(self):
            """The JSON body, or None after an error answer."""
            if self.headers.get("Transfer-Encoding"):
                self._refuse_unread(411, "send the body with a Content-Length (chunked bodies are not read)",
                                    "length_required")
                return None
            text = self.headers.get("Content-Length")
            length = _content_length(text)
            if length is None:
                self._refuse_unread(411, f"Content-Length: expected a number of bytes, got {text!r}",
                                    "length_required")
                return None
            if length > limits.max_body_bytes:
                self._refuse_unread(413, f"the body is {length} bytes, above this server's limit of "
                                         f"{limits.max_body_bytes} (--max_body_bytes)", "request_too_large")
                return None
            data = self.rfile.read(length)
            if len(data) < length:
                raise ConnectionError("the client sent less than its Content-Length")
            try:
                return json.loads(data or b"{}")
            except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, deep nesting
                self._error(400, f"body: not valid JSON: {e}", param="body")
                return None

        def do_GET(self):
            self._guarded(self._get)

        def do_POST(self):
            self._guarded(self._post)

        def _guarded(self, method) -> None:
            """Client errors become 4xx answers, a gone client is let go, anything else is a short 500."""
            try:
                method()
            except CLIENT_GONE:
                self.close_connection = True
            except Exception as e:
                print(f"vlft deploy: internal error on {self.command} {self.path[:100]}:", file=sys.stderr)
                traceback.print_exc()
                self.close_connection = True
                try:
                    self._error(500, f"internal server error ({type(e).__name__})")
                except Exception:
                    pass  # headers were already sent, or the client is gone

        def _get(self) -> None:
            if not self._authorized():
                return
            if self.path.rstrip("/") == "/v1/models":
                self._send_json(200, {"object": "list", "data": [{"id": engine.model_name, "object": "model",
                                                                  "owned_by": "vlft"}]})
            else:
                self._error(404, f"no route GET {self.path[:100]}")

        def _post(self) -> None:
            if not self._authorized():
                return
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._refuse_unread(404, f"no route POST {self.path[:100]}", "not_found")
                return
            body = self._read_body()
            if body is None:
                return
            try:
                job = Job(*parse_chat_request(body, limits.request, defaults))
                self.server.worker.submit(job)
            except (VlftError, Busy) as e:
                self._engine_error(e)
                return
            if job.config.stream:
                self._send_stream(job)
                return
            job.done.wait()
            if job.error is not None:
                self._engine_error(job.error)
            else:
                self._send_json(200, _as_json(job.response))

        def _engine_error(self, error: BaseException) -> None:
            """400 for the client's mistakes, 503 when busy; anything else goes up to _guarded (500)."""
            if isinstance(error, DataError):
                self._error(400, str(error), param=error.field)
            elif isinstance(error, VlftError):
                self._error(400, str(error))
            elif isinstance(error, Busy):
                self._error(503, str(error), code="overloaded")
            else:
                raise error

        def _send_stream(self, job: Job) -> None:
            item = job.chunks.get()
            if isinstance(item, BaseException):  # bad input: refused before any byte of the stream
                self._engine_error(item)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            self.close_connection = True  # HTTP/1.0: the stream ends when the connection does
            while item is not STREAM_END:
                if isinstance(item, BaseException):  # after the first chunk: the stream ends with an error event
                    if not isinstance(item, VlftError):
                        traceback.print_exception(item)
                    message = str(item) if isinstance(item, VlftError) else f"internal error ({type(item).__name__})"
                    event = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
                    self.wfile.write(f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode())
                    return
                self.wfile.write(f"data: {json.dumps(_as_json(item), ensure_ascii=False)}\n\n".encode())
                item = job.chunks.get()
            self.wfile.write(b"data: [DONE]\n\n")

    server = DeployServer((host, port), Handler)
    server.worker = EngineWorker(engine, engine.args.max_batch_size, limits.max_pending_requests)
    return server
