"""The HTTP edges of the server: OpenAI-shaped error answers, the API key, and a request body read within a byte
limit and a time limit, parsed and validated into a ChatCompletionRequest."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sys
import traceback

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from vlft.errors import DataError, VlftError
from vlft.infer.openai_types import ChatCompletionRequest, ErrorDetail, ErrorResponse
from vlft.infer.scheduler import Busy


class ApiError(Exception):
    """An answer other than 200, in OpenAI's error shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> ErrorResponse:
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        return ErrorResponse(error=ErrorDetail(message=self.message, type=kind, param=self.param, code=self.code))

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body().model_dump(), status_code=self.status, headers=headers)


def api_error(error: BaseException) -> ApiError:
    """400 for the client's mistakes, 503 when busy, a short 500 (details on stderr) for anything else."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, DataError):
        return ApiError(400, str(error), param=error.field)
    if isinstance(error, VlftError):
        return ApiError(400, str(error))
    if isinstance(error, Busy):
        return ApiError(503, str(error), code="overloaded")
    print("vlft deploy: internal error:", file=sys.stderr)
    traceback.print_exception(error)
    return ApiError(500, f"internal server error ({type(error).__name__})")


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def check_key(request: Request, digest: bytes | None) -> None:
    """401 unless the request carries `Authorization: Bearer KEY` (compared in constant time)."""
    if digest is None:
        return
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(key_digest(token.strip()), digest):
        raise ApiError(401, "missing or wrong API key: send the header `Authorization: Bearer KEY`",
                       code="invalid_api_key")


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The body, refused with 413 past max_bytes (from Content-Length at once, else while reading) and 408 when the
    client takes longer than timeout_s to send it."""
    declared = request.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"the body is {declared} bytes, above this server's limit of {max_bytes} "
                            "(--max_body_bytes)", code="request_too_large")

    async def collect() -> bytes:
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > max_bytes:
                raise ApiError(413, f"the body is over this server's limit of {max_bytes} bytes (--max_body_bytes)",
                               code="request_too_large")
        return bytes(data)

    try:
        return await asyncio.wait_for(collect(), timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the body took over {timeout_s:g} s to arrive (--client_timeout)",
                       code="request_timeout") from None


def parse_body(data: bytes) -> ChatCompletionRequest:
    """The validated request; 400 naming the field for bad JSON, a body that is not an object (null included),
    or a field of the wrong type or range."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, deep nesting
        raise ApiError(400, f"body: not valid JSON: {e}", param="body") from None
    if not isinstance(body, dict):
        kind = {type(None): "null", list: "an array", str: "a string"}.get(type(body), type(body).__name__)
        raise ApiError(400, f"body: expected a JSON object, got {kind}", param="body")
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        param = field_path(errors[0]["loc"])
        listed = "; ".join(f"{field_path(err['loc'])}: {err['msg']}" for err in errors[:3])
        raise ApiError(400, listed + (f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""),
                       param=param) from None


def field_path(loc: tuple) -> str:
    """pydantic's error location as a field path: ("messages", 0, "content") -> messages[0].content."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path
