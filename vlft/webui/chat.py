"""The chat tab's work without the page: a conversation of turns with media, the request the engine answers,
and the engine loaded as `vlft infer` loads it (the CLI's parser, then InferEngine)."""

from __future__ import annotations

import dataclasses
import mimetypes
import threading
from dataclasses import dataclass, field
from typing import Iterator

from vlft.arguments import InferArguments
from vlft.cli.parsing import parse_args
from vlft.data.template import Template
from vlft.infer.protocol import InferRequest, RequestConfig


@dataclass
class Turn:
    """One message of the conversation; media go before the text, as `<image>` / `<video>` placeholders."""

    role: str
    text: str
    images: list[str] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)


def split_media(paths: list[str]) -> tuple[list[str], list[str]]:
    """(images, videos) among uploaded files, by their type."""
    images, videos = [], []
    for path in paths:
        kind = (mimetypes.guess_type(path)[0] or "").split("/")[0]
        (videos if kind == "video" else images).append(path)
    return images, videos


def chat_request(turns: list[Turn], thinking: bool | None = None) -> InferRequest:
    """The request for a conversation ending with the user's turn; thinking None leaves the template's default."""
    messages, images, videos = [], [], []
    for turn in turns:
        messages.append({"role": turn.role, "content": "<image>" * len(turn.images) + "<video>" * len(turn.videos)
                         + turn.text})
        images += turn.images
        videos += turn.videos
    switches = None if thinking is None else {"enable_thinking": thinking}
    return InferRequest(messages=messages, images=images, videos=videos, chat_template_kwargs=switches)


def thinking_switch(template: Template) -> bool:
    """Whether a template is a hybrid-thinking one, whose answers enable_thinking turns on or off (Qwen3.5 /
    Qwen3.6; Qwen3-VL ships Instruct and Thinking checkpoints instead). ms-swift marks the same templates with
    ignore_empty_think."""
    return template.ignore_empty_think


def infer_argv(model: str, adapters: str) -> list[str]:
    """`vlft infer` flags for the tab's model and adapters fields (adapters separated by spaces or lines)."""
    argv = ["--model", model.strip()] if model.strip() else []
    return argv + (["--adapters", *adapters.split()] if adapters.split() else [])


class ChatModel:
    """The one model the chat tab answers with (loaded on demand; answers one request at a time)."""

    def __init__(self):
        self.engine = None
        self._lock = threading.Lock()  # one generate at a time: InferEngine does not queue

    def load(self, model: str, adapters: str = "") -> str:
        """Load a model (and adapters) as `vlft infer --model M --adapters A` does; returns what was loaded."""
        from vlft.infer.engine import InferEngine

        args = parse_args(InferArguments, infer_argv(model, adapters), "vlft infer")
        with self._lock:
            self.engine = None  # the old model's memory is free before the new one loads
            self.engine = InferEngine(args=args)
        return self.engine.model_name

    @property
    def family_name(self) -> str | None:
        return self.engine.family.name if self.engine else None

    @property
    def has_thinking_switch(self) -> bool:
        return bool(self.engine) and thinking_switch(self.engine.encoder.template)

    def stream(self, request: InferRequest, config: RequestConfig) -> Iterator[str]:
        """The answer's text so far, after each new piece."""
        if self.engine is None:
            raise RuntimeError("load a model first")
        text = ""
        with self._lock:
            for chunk in self.engine.infer([request], dataclasses.replace(config, stream=True))[0]:
                text += chunk.choices[0].delta.content or ""
                yield text
