"""An OpenAI chat-completions body (validated by pydantic) turned into the engine's request and config, its media
fetched and checked. Every client mistake is a DataError naming the field (`max_tokens`,
`messages[0].content[1].image_url.url`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlft.data.formats import to_sample
from vlft.errors import DataError
from vlft.infer.openai_types import ChatCompletionRequest
from vlft.infer.protocol import InferRequest, RequestConfig, beam_problems
from vlft.infer.server_media import ImageDecoder, MediaLimits, RequestFiles, image_header, media_bytes, write_video

MEDIA_KINDS = {"image_url": "image", "image": "image", "video_url": "video", "video": "video"}


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for."""

    max_media: int = 8
    max_tokens_limit: int = 4096
    media: MediaLimits = field(default_factory=MediaLimits)


def _part_kind(part: dict) -> str | None:
    """The content part's type, as vlft.data.formats reads it."""
    return part.get("type") or next((k for k in ("text", *MEDIA_KINDS) if k in part), None)


def media_parts(messages: list) -> list[tuple[int, int, dict]]:
    """(message index, part index, part) of every image or video content part."""
    return [(i, j, part) for i, message in enumerate(messages) if isinstance(message.get("content"), list)
            for j, part in enumerate(message["content"]) if isinstance(part, dict) and _part_kind(part) in MEDIA_KINDS]


def _media_ref(part: dict, kind: str, where: str) -> tuple[str, str]:
    """The URL or path of a media part, and the field it was read from."""
    value = part.get(kind, part.get(MEDIA_KINDS[kind]))
    where = f"{where}.{kind}"
    if isinstance(value, dict):
        value, where = value.get("url"), f"{where}.url"
    if not isinstance(value, str) or not value:
        raise DataError(f"expected a URL or path string, got {type(value).__name__}", field=where)
    return value, where


def checked_messages(messages: list[dict], limits: RequestLimits, decoder: ImageDecoder,
                     files: RequestFiles) -> list[dict]:
    """The messages with every media part replaced by checked media (a copy): images decoded once every image's
    header passed the per-image and per-request pixel limits, videos copied into the request's folder."""
    parts = media_parts(messages)
    if len(parts) > limits.max_media:
        raise DataError(f"{len(parts)} images and videos, above this server's limit of {limits.max_media} "
                        "per request (--max_media_per_request)", field="messages")
    out = [dict(m, content=list(m["content"])) if isinstance(m.get("content"), list) else m for m in messages]
    images, videos = [], []
    for i, j, part in parts:
        kind = _part_kind(part)
        ref, where = _media_ref(part, kind, f"messages[{i}].content[{j}]")
        (images if MEDIA_KINDS[kind] == "image" else videos).append((i, j, ref, where))
    headers = [image_header(media_bytes(ref, limits.media, where), limits.media.max_pixels, where)
               for _, _, ref, where in images]
    total = sum(h.width * h.height for h in headers)
    if total > limits.media.max_request_pixels:
        raise DataError(f"the images have {total:,} pixels together, over this server's limit of "
                        f"{limits.media.max_request_pixels:,} per request (--max_request_pixels)", field="messages")
    for (i, j, _, where), header in zip(images, headers):
        out[i]["content"][j] = {"type": "image", "image": decoder.decode(header, where)}
    for n, (i, j, ref, where) in enumerate(videos):
        out[i]["content"][j] = {"type": "video", "video": write_video(ref, limits.media, files.folder(), n, where)}
    return out


def request_config(body: ChatCompletionRequest, limits: RequestLimits, defaults: RequestConfig) -> RequestConfig:
    """Sampling and logprobs settings from the body; absent ones take the server's defaults. An absent max_tokens
    is the engine's: --max_new_tokens, cut to what --max_model_len leaves."""
    name = "max_tokens" if body.max_tokens is not None else "max_completion_tokens"
    max_tokens = body.max_tokens if body.max_tokens is not None else body.max_completion_tokens
    if max_tokens is not None and max_tokens > limits.max_tokens_limit:
        raise DataError(f"{max_tokens} is above this server's limit of {limits.max_tokens_limit}", field=name)
    if body.stop:
        raise DataError("stop sequences are not supported by vlft deploy (answers end at the template's stop "
                        "tokens or max_tokens)", field="stop")

    def given(value, default):
        return default if value is None else value

    logprobs = given(body.logprobs, defaults.logprobs)
    if body.top_logprobs is not None and not logprobs:  # OpenAI's rule
        raise DataError(f"top_logprobs {body.top_logprobs} needs logprobs true", field="top_logprobs")
    num_beams = given(body.num_beams, defaults.num_beams)
    problems = beam_problems(num_beams, stream=bool(body.stream), logprobs=logprobs, dashes="")
    if problems:
        server = "" if body.num_beams is not None else " (this server's --num_beams: send num_beams 1)"
        raise DataError(problems[0] + server, field="num_beams")
    return RequestConfig(max_tokens=max_tokens, stream=bool(body.stream), num_beams=num_beams,
                         temperature=given(body.temperature, defaults.temperature),
                         top_p=given(body.top_p, defaults.top_p), top_k=given(body.top_k, defaults.top_k),
                         repetition_penalty=given(body.repetition_penalty, defaults.repetition_penalty),
                         seed=body.seed, logprobs=logprobs,
                         top_logprobs=given(body.top_logprobs, defaults.top_logprobs) if logprobs else None)


def engine_request(body: ChatCompletionRequest, limits: RequestLimits, defaults: RequestConfig,
                   decoder: ImageDecoder, files: RequestFiles) -> tuple[InferRequest, RequestConfig]:
    """The engine's request and config from a validated chat-completions body, media fetched and checked."""
    config = request_config(body, limits, defaults)
    messages = checked_messages(body.messages, limits, decoder, files)
    # roles, content shapes, tool calls and tools, named by field
    to_sample({"messages": messages, **({"tools": body.tools} if body.tools else {})}, require_answer=False)
    thinking = body.chat_template_kwargs.model_dump(exclude_none=True) if body.chat_template_kwargs else None
    return InferRequest(messages=messages, tools=body.tools or None, chat_template_kwargs=thinking or None), config
