"""An OpenAI chat-completions body checked and turned into the engine's request and config. Every
client mistake is a DataError naming the field (`max_tokens`, `messages[0].content[1].image_url.url`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlft.data.formats import to_sample
from vlft.errors import DataError
from vlft.infer.protocol import InferRequest, RequestConfig
from vlft.infer.server_media import MediaLimits, checked_image, checked_video

MEDIA_KINDS = {"image_url": "image", "image": "image", "video_url": "video", "video": "video"}
JSON_TYPES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array",
              dict: "an object", type(None): "null"}


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for."""

    max_media: int = 8
    max_tokens_limit: int = 4096
    media: MediaLimits = field(default_factory=MediaLimits)


def _json_type(value: Any) -> str:
    return JSON_TYPES.get(type(value), type(value).__name__)


def _part_kind(part: dict) -> str | None:
    """The content part's type, as vlft.data.formats reads it."""
    return part.get("type") or next((k for k in ("text", *MEDIA_KINDS) if k in part), None)


def media_parts(messages: list) -> list[tuple[int, int, dict]]:
    """(message index, part index, part) of every image or video content part."""
    return [(i, j, part) for i, message in enumerate(messages) if isinstance(message, dict)
            and isinstance(message.get("content"), list) for j, part in enumerate(message["content"])
            if isinstance(part, dict) and _part_kind(part) in MEDIA_KINDS]


def _media_ref(part: dict, kind: str, where: str) -> tuple[str, str]:
    """The URL or path of a media part, and the field it was read from."""
    value = part.get(kind, part.get(MEDIA_KINDS[kind]))
    where = f"{where}.{kind}"
    if isinstance(value, dict):
        value, where = value.get("url"), f"{where}.url"
    if not isinstance(value, str) or not value:
        raise DataError(f"expected a URL or path string, got {_json_type(value)}", field=where)
    return value, where


def checked_messages(messages: Any, limits: RequestLimits) -> list:
    """The messages with every media part replaced by fetched, size-checked media (a copy)."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"expected a non-empty array of messages, got {_json_type(messages)}", field="messages")
    parts = media_parts(messages)
    if len(parts) > limits.max_media:
        raise DataError(f"{len(parts)} images and videos, above this server's limit of {limits.max_media} "
                        "per request", field="messages")
    out = [dict(m, content=list(m["content"])) if isinstance(m, dict) and isinstance(m.get("content"), list)
           else m for m in messages]
    for i, j, part in parts:
        kind = _part_kind(part)
        ref, where = _media_ref(part, kind, f"messages[{i}].content[{j}]")
        if MEDIA_KINDS[kind] == "image":
            out[i]["content"][j] = {"type": "image", "image": checked_image(ref, limits.media, where)}
        else:
            out[i]["content"][j] = {"type": "video", "video": checked_video(ref, limits.media, where)}
    return out


def _int(body: dict, name: str, default: int | None, minimum: int, maximum: int = 2**63 - 1) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"expected an integer, got {_json_type(value)}", field=name)
    if not minimum <= value <= maximum:
        raise DataError(f"must be in [{minimum}, {maximum}], got {value}", field=name)
    return value


def _float(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"expected a number, got {_json_type(value)}", field=name)
    if not (low < value if low_open else low <= value) or value > high:
        raise DataError(f"must be in {'(' if low_open else '['}{low}, {high}], got {value}", field=name)
    return float(value)


def request_config(body: dict, limits: RequestLimits, defaults: RequestConfig) -> RequestConfig:
    """Sampling settings from the body; absent ones take the server's defaults."""
    name = "max_tokens" if body.get("max_tokens") is not None else "max_completion_tokens"
    max_tokens = _int(body, name, defaults.max_tokens, 1)
    if max_tokens > limits.max_tokens_limit:
        raise DataError(f"{max_tokens} is above this server's limit of {limits.max_tokens_limit}", field=name)
    if _int(body, "n", 1, 1) != 1:
        raise DataError("only n=1 is supported", field="n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise DataError(f"expected true or false, got {_json_type(stream)}", field="stream")
    return RequestConfig(max_tokens=max_tokens, stream=stream,
                         temperature=_float(body, "temperature", defaults.temperature, 0.0, 2.0),
                         top_p=_float(body, "top_p", defaults.top_p, 0.0, 1.0, low_open=True),
                         top_k=_int(body, "top_k", defaults.top_k, 1),
                         repetition_penalty=_float(body, "repetition_penalty", defaults.repetition_penalty,
                                                   0.0, 10.0, low_open=True),
                         seed=_int(body, "seed", None, 0))


def parse_chat_request(body: Any, limits: RequestLimits,
                       defaults: RequestConfig | None = None) -> tuple[InferRequest, RequestConfig]:
    """The engine's request and config from an OpenAI chat-completions body, media fetched and checked."""
    if not isinstance(body, dict):
        raise DataError(f"expected a JSON object, got {_json_type(body)}", field="body")
    config = request_config(body, limits, defaults or RequestConfig())
    messages = checked_messages(body.get("messages"), limits)
    tools = body.get("tools")
    # roles, content shapes, tool calls and tools, named by field
    to_sample({"messages": messages, **({"tools": tools} if tools else {})}, require_answer=False)
    return InferRequest(messages=messages, tools=tools or None,
                        chat_template_kwargs=chat_template_kwargs(body.get("chat_template_kwargs"))), config


def chat_template_kwargs(value: Any) -> dict | None:
    """The template switches a request may set (vLLM's and SGLang's `chat_template_kwargs`): enable_thinking."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise DataError(f"expected an object, got {_json_type(value)}", field="chat_template_kwargs")
    for key, item in value.items():
        if key != "enable_thinking":
            raise DataError(f"unsupported key {key!r} (vlft takes enable_thinking)", field="chat_template_kwargs")
        if not isinstance(item, bool):
            raise DataError(f"expected true or false, got {_json_type(item)}",
                            field="chat_template_kwargs.enable_thinking")
    return dict(value)
