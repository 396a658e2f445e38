"""Requests and OpenAI-shaped responses of the Python inference API (ms-swift's names)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from vlft.infer.tool_calls import ToolCall

MAX_TOP_LOGPROBS = 20  # OpenAI's limit on top_logprobs (and the default of ms-swift deploy's --max_logprobs)


@dataclass
class InferRequest:
    """One conversation to answer; media as in datasets (`<image>` / `<video>` placeholders)."""

    messages: list[dict]
    images: list[Any] = field(default_factory=list)
    videos: list[Any] = field(default_factory=list)
    objects: dict | None = None
    tools: list | None = None  # function schemas, written into the prompt as the template writes tools
    # Per-request template switches, as vLLM's and SGLang's servers take them: {"enable_thinking": false}.
    chat_template_kwargs: dict | None = None


@dataclass
class RequestConfig:
    """Sampling settings; temperature 0 means greedy."""

    max_tokens: int | None = None  # None: the engine's --max_new_tokens, cut to what --max_model_len leaves
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0
    num_beams: int = 1  # beam search above 1 (not streamed, no logprobs: beam_problems)
    seed: int | None = None
    stream: bool = False
    stop: list[str] = field(default_factory=list)  # texts that end generation (ms-swift's RequestConfig.stop)
    logprobs: bool = False  # each choice's `logprobs`: the generated tokens' log probabilities, in OpenAI's shape
    top_logprobs: int | None = None  # with logprobs: also the likeliest tokens at each step (0 to MAX_TOP_LOGPROBS)


@dataclass
class ChatMessage:
    role: str
    content: str  # the whole answer, its tool calls' text included (ms-swift's)
    tool_calls: list[ToolCall] | None = None  # the calls read from it (tool_calls.py)


@dataclass
class Choice:
    index: int
    message: ChatMessage
    finish_reason: str
    logprobs: dict | None = None  # {"content": [{"token", "logprob", "bytes", "top_logprobs"}, ...]} when asked for


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class ChatCompletionResponse:
    """`resp.choices[0].message.content`, as OpenAI's client returns it."""

    model: str
    choices: list[Choice]
    usage: Usage
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))
    object: str = "chat.completion"


@dataclass
class DeltaMessage:
    role: str | None = None
    content: str | None = None
    tool_calls: list[ToolCall] | None = None  # on the last chunk: the calls read from the whole answer


@dataclass
class StreamChoice:
    index: int
    delta: DeltaMessage
    finish_reason: str | None = None
    logprobs: dict | None = None  # those of the tokens generated since the previous chunk, when asked for


@dataclass
class ChatCompletionStreamResponse:
    """One streamed chunk: `chunk.choices[0].delta.content`; the last one carries the usage."""

    model: str
    choices: list[StreamChoice]
    id: str
    created: int = field(default_factory=lambda: int(time.time()))
    object: str = "chat.completion.chunk"
    usage: Usage | None = None


MAX_BEAMS = 16  # a request's num_beams (vlft deploy)


def beam_problems(num_beams: int, *, stream: bool, logprobs: bool, dashes: str = "--") -> list[str]:
    """What beam search cannot go with: the answer is known only when the search ends (no stream), and the
    per-step distributions are of every beam, not of the answer (no logprobs). `dashes`: "" names request fields."""
    if num_beams <= 1:
        return []
    problems = []
    if stream:
        problems.append(f"{dashes}num_beams {num_beams} answers when the search ends: it cannot stream "
                        f"({dashes}stream false)")
    if logprobs:
        problems.append(f"{dashes}num_beams {num_beams}: beam search gives no per-token logprobs "
                        f"({dashes}logprobs false)")
    return problems
