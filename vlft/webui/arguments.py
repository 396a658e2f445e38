"""Typed arguments of `vlft web-ui` (ms-swift's `swift web-ui` flags, and vlft's own names for them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlft.arguments import CheckedArguments

LANGUAGES = ("en",)


@dataclass
class WebUiArguments(CheckedArguments):
    """Open the web UI: chat with a model (and adapters), or start, watch and stop a `vlft sft` run."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on (0.0.0.0: every interface)"})
    server_name: str | None = field(default=None, metadata={"help": "ms-swift's name of --host"})
    port: int = field(default=7860, metadata={"help": "port (0: the first free one from 7860)"})
    server_port: int | None = field(default=None, metadata={"help": "ms-swift's name of --port"})
    share: bool = field(default=False, metadata={"help": "a public gradio.live link (needs the internet)"})
    lang: str = field(default="en", metadata={"help": "language of the page: en"})
    model: str | None = field(default=None, metadata={"help": "model shown in both tabs to begin with"})

    def problems(self) -> list[str]:
        problems = []
        if self.server_name is not None:
            self.host = self.server_name
        if self.server_port is not None:
            self.port = self.server_port
        if not 0 <= self.port <= 65535:
            problems.append(f"--port must be in 0..65535, got {self.port}")
        if self.lang not in LANGUAGES:
            problems.append(f"--lang {self.lang}: the web UI is written in {', '.join(LANGUAGES)} only")
        return problems
