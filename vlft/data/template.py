"""Chat templates: the declarative JSON in templates/ and rendering a conversation into text segments
that know which characters are trained."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from vlft.data.sample import Message
from vlft.errors import VlftError

LossScale = Literal["default", "last_round", "all"]
IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"


@dataclass(frozen=True)
class Template:
    """A family's chat format, read from templates/<name>.json."""

    name: str
    default_system: str | None
    system: str
    turn_start: str
    turn_end: str
    turn_separator: str
    image: str
    video: str
    image_pad: str
    video_pad: str
    vision_start: str
    vision_end: str
    stop_words: tuple[str, ...]
    # Qwen3-VL wraps runs of tool results into one user turn of <tool_response> items; None: a plain turn.
    tool_start: str | None = None
    tool_item: str | None = None
    tool_end: str | None = None

    @property
    def generation_prompt(self) -> str:
        """What opens the assistant's answer at inference time."""
        return self.turn_start.format(role="assistant")


@dataclass(frozen=True)
class Segment:
    """A run of rendered text and whether its tokens are trained."""

    text: str
    trained: bool


def load_template(name: str) -> Template:
    """The template called `name` from vlft's templates/ package data."""
    path = resources.files("vlft.templates") / f"{name}.json"
    if not path.is_file():
        known = sorted(p.name[:-5] for p in resources.files("vlft.templates").iterdir() if p.name.endswith(".json"))
        raise VlftError(f"unknown template {name!r}; known: {', '.join(known)}")
    spec = json.loads(path.read_text())
    spec["stop_words"] = tuple(spec["stop_words"])
    return Template(**spec)


def render(template: Template, messages: list[Message], *, loss_scale: LossScale = "default",
           add_generation_prompt: bool = False) -> list[Segment]:
    """The conversation as text segments; assistant content and its closing turn_end are trained.

    `loss_scale`: "default" trains every assistant turn, "last_round" only the last, "all" every token.
    A message's own `loss` (true/false) overrides for that assistant turn.
    """
    segments: list[Segment] = []
    everything = loss_scale == "all"
    if messages and messages[0].role == "system":
        system, messages = messages[0].content, messages[1:]
    else:
        system = template.default_system
    if system is not None:
        segments.append(Segment(template.system.format(content=_with_media(template, system)), everything))
    last_assistant = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=-1)
    for i, message in enumerate(messages):
        start = template.turn_start.format(role=message.role)
        content = _with_media(template, message.content)
        if message.role == "tool" and template.tool_item is not None:
            first = i == 0 or messages[i - 1].role != "tool"
            last = i == len(messages) - 1 or messages[i + 1].role != "tool"
            text = (template.tool_start if first else "") + template.tool_item.format(content=content)
            segments.append(Segment(text + (template.tool_end if last else ""), everything))
            continue
        if message.role != "assistant":
            segments.append(Segment(start + content + template.turn_end + template.turn_separator, everything))
            continue
        trained = everything or (loss_scale == "default" or i == last_assistant)
        if message.loss is not None:
            trained = message.loss
        segments += [
            Segment(start, everything),
            Segment(content + template.turn_end, trained),
            Segment(template.turn_separator, everything),
        ]
    if add_generation_prompt:
        segments.append(Segment(template.generation_prompt, False))
    return segments


def _with_media(template: Template, text: str) -> str:
    return text.replace(IMAGE_PLACEHOLDER, template.image).replace(VIDEO_PLACEHOLDER, template.video)
