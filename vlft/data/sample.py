"""The one shape every dataset format is normalised into before encoding."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Message:
    """One chat turn; media appear in `content` as `<image>` / `<video>` placeholders."""

    role: str
    content: str
    loss: bool | None = None  # per-message override of whether an assistant turn is trained
    where: str | None = field(default=None, compare=False)  # the field in the row (`messages[2].content`)


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
