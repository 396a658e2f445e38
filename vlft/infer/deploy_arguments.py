"""`vlft deploy`'s arguments: DeployArguments (vlft/arguments.py) plus the server's request limits and media
switches that issue 24 added. Typed and inert, like every argument dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlft.arguments import DeployArguments, not_positive
from vlft.errors import collected


@dataclass
class ServeArguments(DeployArguments):
    """`vlft deploy`: an OpenAI-compatible server (`/v1/models`, `/v1/chat/completions`)."""

    max_model_len: int | None = field(default=None, metadata={
        "help": "prompt plus answer tokens per request (default: the model's max_position_embeddings); longer "
                "prompts, and max_tokens above what the prompt leaves, are refused (400)"})
    max_request_pixels: int = field(default=100_000_000, metadata={
        "help": "pixels of all images of one request together, read from their headers before decoding (400 above)"})
    allow_remote_media: bool = field(default=False, metadata={
        "help": "fetch http(s) image/video URLs (never from loopback, link-local or private addresses)"})

    def problems(self) -> list[str]:
        from vlft.infer.adapters import adapter_specs

        problems = super().problems()
        specs = collected(problems, adapter_specs, self.adapters)
        if specs and self.served_model_name in specs.named:
            problems.append(f"--served_model_name {self.served_model_name} is also the name of an adapter")
        return problems + not_positive(self, ("max_model_len", "max_request_pixels"))
