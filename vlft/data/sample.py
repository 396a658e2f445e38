"""The one shape every dataset format is normalised into before encoding."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Message:
    """One chat turn; media appear in `content` as `<image>` / `<video>` placeholders.

    Assistant turns may also carry `tool_calls` (each `{"name": str, "arguments": dict | str}`, the str a
    JSON object) and `reasoning_content` (the thinking, instead of `<think>...</think>` in `content`); only
    templates that can render them accept them (the others raise a DataError rather than drop them).
    """

    role: str
    content: str
    loss: bool | None = None  # per-message override of whether an assistant turn is trained
    where: str | None = field(default=None, compare=False)  # the field in the row (`messages[2].content`)
    tool_calls: list[dict] | None = None
    reasoning_content: str | None = None

    def field(self, name: str, index: int | None = None) -> str:
        """The row field `name` of this message (`messages[2].role` beside its `messages[2].content`); without a
        `where` to go by, `messages[index].name`, or `messages.name`."""
        if self.where and "." in self.where:
            return f"{self.where.rsplit('.', 1)[0]}.{name}"
        return f"messages[{index}].{name}" if index is not None else f"messages.{name}"

    def rendered_texts(self, index: int) -> list[tuple[str, str]]:
        """(field, text) of everything of this message a template writes as text: its content, reasoning and tool
        calls (as JSON)."""
        texts = [(self.where or f"messages[{index}].content", self.content)]
        if self.reasoning_content:
            texts.append((self.field("reasoning_content", index), self.reasoning_content))
        if self.tool_calls:
            texts.append((self.field("tool_calls", index), json.dumps(self.tool_calls, ensure_ascii=False)))
        return texts


@dataclass
class Sample:
    """A conversation with its media, and the file and line it came from (for error messages)."""

    messages: list[Message]
    images: list[Any] = field(default_factory=list)
    videos: list[Any] = field(default_factory=list)
    objects: dict | None = None
    source: str | None = None
    line: int | None = None
    base_dir: Path | None = None  # relative media paths are taken from here
    tools: list | None = None  # tool schemas (OpenAI `{"type": "function", "function": {...}}`)
