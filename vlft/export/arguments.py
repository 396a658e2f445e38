"""`vlft export` arguments (ms-swift's `swift export` names). Constructing them validates and does nothing else."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vlft.arguments import CheckedArguments

# A hub repo id: NAME (the token's own namespace) or OWNER/NAME, as both hubs spell them.
_REPO_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]+$")


@dataclass
class ExportArguments(CheckedArguments):
    """`vlft export`: merge a LoRA checkpoint into its base model (--merge_lora) and/or push a model dir or
    checkpoint to ModelScope or the HF Hub (--push_to_hub)."""

    adapters: list[str] = field(default_factory=list, metadata={
        "help": "the LoRA checkpoint dir to merge or push"})
    model: str | None = field(default=None, metadata={
        "help": "base model to merge into (default: the `model` in the checkpoint's args.json); without "
                "--adapters, the model dir or checkpoint to push"})
    merge_lora: bool = field(default=False, metadata={"help": "merge the adapter into the base weights"})
    output_dir: str | None = field(default=None, metadata={"help": "merged model dir (default: CKPT-merged)"})
    torch_dtype: Literal["bfloat16", "float16", "float32"] | None = field(
        default=None, metadata={"help": "dtype to merge and save in (default: the base model's)"})
    max_shard_size: str = field(default="5GB", metadata={
        "help": "largest weights file of the merged model (ms-swift's default, 5GB); e.g. 500MB, 2GB"})
    cache_dir: str | None = field(default=None, metadata={"help": "vlft's cache (tiny models)",
                                                          "env": "VLFT_CACHE_HOME"})
    use_hf: bool = field(default=False, metadata={"help": "use the HF Hub instead of ModelScope (to download the "
                                                          "base and to push)", "env": "USE_HF"})
    push_to_hub: bool = field(default=False, metadata={
        "help": "upload the merged model, the adapter checkpoint, or the --model dir"})
    hub_model_id: str | None = field(default=None, metadata={"help": "repo to push to: OWNER/NAME, or NAME in "
                                                                     "the token's own namespace"})
    # Secrets: left out of args.json (public_args) and of the dataclass repr, never printed.
    hub_token: str | None = field(default=None, repr=False, metadata={
        "help": "hub token with write access (never written to disk)", "secret": True})
    hf_token: str | None = field(default=None, repr=False, metadata={
        "help": "token for the HF Hub when --hub_token is not given", "env": "HF_TOKEN", "secret": True})
    modelscope_api_token: str | None = field(default=None, repr=False, metadata={
        "help": "token for ModelScope when --hub_token is not given", "env": "MODELSCOPE_API_TOKEN",
        "secret": True})
    hub_private_repo: bool = field(default=False, metadata={"help": "create the repo as private"})

    def problems(self) -> list[str]:
        if self.hub_token is None:
            self.hub_token = (self.hf_token if self.use_hf else self.modelscope_api_token) or None
        problems = []
        if len(self.adapters) > 1:
            problems.append(f"--adapters: export takes one checkpoint, got {len(self.adapters)}")
        if self.push_to_hub:
            problems += self._push_problems()
        elif not self.merge_lora:
            problems.append("nothing to do: --merge_lora true is required to merge --adapters into its base, "
                            "--push_to_hub true to push")
        if self.merge_lora and not self.adapters:
            problems.append("--adapters is required with --merge_lora true (a LoRA checkpoint dir)")
        if self.merge_lora and self.output_dir is None and self.adapters:
            self.output_dir = f"{Path(self.adapters[0])}-merged"  # Path drops a trailing slash
        return problems

    def _push_problems(self) -> list[str]:
        hub, env = ("the HF Hub", "HF_TOKEN") if self.use_hf else ("ModelScope", "MODELSCOPE_API_TOKEN")
        problems = []
        if not self.hub_model_id:
            problems.append("--push_to_hub true needs --hub_model_id (OWNER/NAME, or NAME in your own namespace)")
        elif not _REPO_ID.match(self.hub_model_id) or ".." in self.hub_model_id:
            problems.append(f"--hub_model_id {self.hub_model_id!r}: not a repo id; expected OWNER/NAME or NAME "
                            "(letters, digits, '-', '_', '.')")
        if not self.hub_token:
            problems.append(f"--push_to_hub true needs a token with write access to {hub}: pass --hub_token or "
                            f"set {env}" + ("" if self.use_hf else " (or push to the HF Hub with --use_hf true)"))
        if not self.adapters and not self.model:
            problems.append("--push_to_hub true needs what to push: --model DIR (a model dir or checkpoint) or "
                            "--adapters CKPT")
        return problems
