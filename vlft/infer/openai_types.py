"""The OpenAI chat-completions API's request, response, model-list and error bodies as pydantic models (the fields
vlft serves; the names and shapes of OpenAI's API reference, as vLLM's and SGLang's servers give them)."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vlft.infer import protocol, tool_calls
from vlft.infer.protocol import MAX_BEAMS, MAX_TOP_LOGPROBS


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = False  # a last chunk with no choices and the usage


class ChatTemplateKwargs(BaseModel):
    """The template switches a request may set (vLLM's and SGLang's `chat_template_kwargs`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    enable_thinking: bool | None = None
    preserve_thinking: bool | None = None  # earlier turns keep their <think> block (Qwen3.6's variable, ms-swift's)


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions. Strict types: "8" is not a number. Fields OpenAI clients send that change nothing
    here (user, metadata, ...) are let through; the messages' roles and content parts are checked by
    vlft.data.formats, the rules datasets follow."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str | None = None  # None: the base model
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)
    num_beams: int | None = Field(default=None, ge=1, le=MAX_BEAMS)  # ms-swift's deploy field; None: --num_beams
    seed: int | None = Field(default=None, ge=0)
    n: int | None = Field(default=None, ge=1, le=1)  # one choice per request
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    logprobs: bool | None = None  # None: the server's --logprobs
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)  # only with logprobs true
    tools: list[dict[str, Any]] | None = None
    chat_template_kwargs: ChatTemplateKwargs | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: protocol.Usage) -> Usage:
        return cls(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                   total_tokens=usage.total_tokens)


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall

    @classmethod
    def all_of(cls, calls: list[tool_calls.ToolCall] | None) -> list[ToolCall] | None:
        return None if calls is None else [
            cls(id=c.id, function=FunctionCall(name=c.function.name, arguments=c.function.arguments)) for c in calls]


class ToolCallDelta(ToolCall):
    index: int  # the call's place in the answer (OpenAI's streamed calls carry it)

    @classmethod
    def all_of(cls, calls: list[tool_calls.ToolCall] | None) -> list[ToolCallDelta] | None:
        whole = ToolCall.all_of(calls)
        return None if whole is None else [cls(index=i, **call.model_dump()) for i, call in enumerate(whole)]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str  # the whole answer, tool calls' text included (ms-swift's)
    tool_calls: list[ToolCall] | None = None  # the calls read from the answer in the template's tool format


class TopLogprob(BaseModel):
    token: str  # the token decoded alone (U+FFFD where it holds part of a character)
    logprob: float
    bytes: list[int]  # the token's own bytes


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]  # the likeliest tokens at this step, most likely first (empty unless asked for)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob]


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage

    @classmethod
    def of(cls, response: protocol.ChatCompletionResponse, model: str) -> ChatCompletion:
        choices = [Choice(index=c.index, message=AssistantMessage(content=c.message.content,
                                                                  tool_calls=ToolCall.all_of(c.message.tool_calls)),
                          finish_reason=c.finish_reason, logprobs=c.logprobs) for c in response.choices]
        return cls(id=response.id, created=response.created, model=model, choices=choices,
                   usage=Usage.of(response.usage))


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None  # on the last chunk, read from the whole answer


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: ChoiceLogprobs | None = None  # those of this chunk's tokens


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None  # sent (null on every chunk, then a last chunk with it) only if include_usage

    @classmethod
    def of(cls, chunk: protocol.ChatCompletionStreamResponse, model: str) -> ChatCompletionChunk:
        choices = [ChunkChoice(index=c.index, delta=Delta(role=c.delta.role, content=c.delta.content,
                                                          tool_calls=ToolCallDelta.all_of(c.delta.tool_calls)),
                               finish_reason=c.finish_reason, logprobs=c.logprobs) for c in chunk.choices]
        return cls(id=chunk.id, created=chunk.created, model=model, choices=choices)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "vlft"
    root: str  # the served id (no local path is shown to clients)
    parent: str | None = None  # an adapter's base model id


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
