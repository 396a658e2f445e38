"""An OpenAI-compatible server over an InferEngine, on FastAPI and uvicorn: `GET /v1/models` (the base model and
each named adapter), `POST /v1/chat/completions` (whole answers, or server-sent events when `stream` is true).

Request handlers run on uvicorn's event loop: they check the API key, read at most max_body_bytes, validate the
body, fetch and check its media in a worker thread, and queue a Job for the one thread that runs the model
(vlft.infer.scheduler); the engine thread hands results back to the loop."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from vlft.errors import VlftError
from vlft.infer.chat_request import RequestLimits, engine_request
from vlft.infer.openai_types import ChatCompletion, ChatCompletionChunk, ModelCard, ModelList, Usage
from vlft.infer.protocol import RequestConfig
from vlft.infer.remote_media import RemoteFetch
from vlft.infer.scheduler import STREAM_END, Busy, EngineWorker, Job
from vlft.infer.server_http import ApiError, api_error, check_key, key_digest, parse_body, read_body
from vlft.infer.server_media import ImageDecoder, MediaLimits, RequestFiles, check_media_root


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
        remote = RemoteFetch(args.max_body_bytes, args.client_timeout) if args.allow_remote_media else None
        media = MediaLimits(root=Path(args.allow_local_media) if args.allow_local_media else None,
                            max_bytes=args.max_body_bytes, max_pixels=args.max_image_pixels,
                            max_request_pixels=args.max_request_pixels, remote=remote)
        return cls(args.max_body_bytes, args.max_pending_requests, args.client_timeout,
                   RequestLimits(args.max_media_per_request, args.max_tokens_limit, media))


def processor_size(engine):
    """(width, height) -> the size the engine's image processor resizes an image to (None where vlft does not know
    the processor's rule): the server shrinks large images to it as it decodes them."""
    from vlft.data.image_grid import grid_from_size

    encoder = engine.encoder
    bounds = {key: value for key, value in (("shortest_edge", encoder.settings.image_min_pixels),
                                            ("longest_edge", encoder.settings.image_max_pixels)) if value}
    patch = encoder.image_processor.patch_size

    def target(width: int, height: int) -> tuple[int, int] | None:
        try:
            grid = grid_from_size(encoder.image_processor, width, height, bounds)
        except ValueError:  # an aspect ratio the processor refuses: it says so itself
            return None
        return None if grid is None else (grid[2] * patch, grid[1] * patch)

    return target


def served_models(engine) -> dict[str, str | None]:
    """Served id -> the engine's adapter name (None: the base model)."""
    return {engine.model_name: None, **{name: name for name in getattr(engine, "adapter_names", [])}}


def build_app(engine, worker: EngineWorker, limits: ServerLimits, api_key: str | None = None) -> FastAPI:
    """The FastAPI app answering with `engine` through `worker`."""
    digest = key_digest(api_key.strip()) if api_key else None
    defaults = RequestConfig(temperature=engine.args.temperature, top_p=engine.args.top_p, top_k=engine.args.top_k,
                             repetition_penalty=engine.args.repetition_penalty, num_beams=engine.args.num_beams,
                             logprobs=engine.args.logprobs,
                             top_logprobs=engine.args.top_logprobs)
    decoder = ImageDecoder(processor_size(engine) if hasattr(engine, "encoder") else None)
    app = FastAPI(title="vlft deploy", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = "not_found" if error.status_code == 404 else None
        return ApiError(error.status_code, f"{error.detail}: {request.method} {request.url.path[:100]}",
                        code=code).response()

    @app.exception_handler(Exception)
    async def on_internal_error(request: Request, error: Exception) -> JSONResponse:
        return api_error(error).response()

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models(request: Request) -> ModelList:
        check_key(request, digest)
        cards = [ModelCard(id=name, root=name, parent=None if adapter is None else engine.model_name)
                 for name, adapter in served_models(engine).items()]
        return ModelList(data=cards)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        check_key(request, digest)
        body = await run_in_threadpool(parse_body, await read_body(request, limits.max_body_bytes,
                                                                   limits.client_timeout))
        served = served_models(engine)
        model = body.model if body.model is not None else engine.model_name
        if model not in served:
            raise ApiError(404, f"The model `{model[:200]}` does not exist; this server serves "
                                f"{', '.join(served)}", param="model", code="model_not_found")
        files = RequestFiles(limits.request.media.temp_dir)
        try:
            infer_request, config = await run_in_threadpool(engine_request, body, limits.request, defaults, decoder,
                                                            files)
            results: asyncio.Queue = asyncio.Queue()
            job = Job(infer_request, config, served[model], deliver=_on_loop(asyncio.get_running_loop(), results))
            worker.submit(job)
            first = await _first_result(request, results, job)
        except (VlftError, Busy) as e:  # a bad request or media (400), a full queue (503)
            files.cleanup()
            raise api_error(e) from None
        except BaseException:
            files.cleanup()
            raise
        if isinstance(first, BaseException):  # bad input found by the engine: refused before any stream byte
            files.cleanup()
            raise api_error(first)
        if not config.stream:
            files.cleanup()
            return JSONResponse(ChatCompletion.of(first, model).model_dump())
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_events(job, results, first, model, include_usage, files),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


def _on_loop(loop: asyncio.AbstractEventLoop, results: asyncio.Queue):
    """A Job's deliver: hands each result from the engine thread to the request's queue on the event loop."""
    def deliver(item) -> None:
        try:
            loop.call_soon_threadsafe(results.put_nowait, item)
        except RuntimeError:  # the loop has closed (the server stopped): nobody is waiting
            pass
    return deliver


async def _first_result(request: Request, results: asyncio.Queue, job: Job):
    """The job's first result; a client that hangs up meanwhile cancels the job (a stream then ends at its next
    token) and the wait."""
    first = asyncio.ensure_future(results.get())
    while not (await asyncio.wait({first}, timeout=0.5))[0]:
        if await request.is_disconnected():
            job.cancelled.set()
            first.cancel()
            raise ApiError(499, "the client closed the connection", code="client_closed")
    return first.result()


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _events(job: Job, results: asyncio.Queue, item, model: str, include_usage: bool, files: RequestFiles):
    """The stream's server-sent events; a client that hangs up cancels the job (generation ends at the next
    token) and the request's files go."""
    try:
        while item is not STREAM_END:
            if isinstance(item, BaseException):  # after the first chunk: the stream ends with an error event
                yield _sse(api_error(item).body().model_dump())
                return
            chunk = ChatCompletionChunk.of(item, model)
            yield _sse(chunk.model_dump() if include_usage else chunk.model_dump(exclude={"usage"}))
            if include_usage and item.usage is not None:  # OpenAI's last chunk: no choices, the usage
                usage = chunk.model_copy(update={"choices": [], "usage": Usage.of(item.usage)})
                yield _sse(usage.model_dump())
            item = await results.get()
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()
        files.cleanup()


class DeployServer:
    """uvicorn serving the app on a socket bound at construction (port 0 picks a free one, known at once), and
    owning the engine's worker thread."""

    def __init__(self, app: FastAPI, host: str, port: int, worker: EngineWorker, keep_alive_s: float = 5.0):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family, backlog=2048)
        self.server_address = self.socket.getsockname()
        self.worker = worker
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_keep_alive=keep_alive_s, timeout_graceful_shutdown=5, server_header=False)
        self.uvicorn = uvicorn.Server(config)

    def serve_forever(self) -> None:
        """Serve until shutdown() (or Ctrl-C, on the main thread)."""
        self.uvicorn.run(sockets=[self.socket])

    def shutdown(self) -> None:
        self.uvicorn.should_exit = True

    def server_close(self) -> None:
        self.socket.close()
        self.worker.stop()


def make_server(engine, host: str, port: int, limits: ServerLimits | None = None,
                api_key: str | None = None) -> DeployServer:
    """A server bound to host:port; call serve_forever() to run it."""
    limits = limits or ServerLimits()
    check_media_root(limits.request.media.root)
    worker = EngineWorker(engine, engine.args.max_batch_size, limits.max_pending_requests)
    return DeployServer(build_app(engine, worker, limits, api_key), host, port, worker)
