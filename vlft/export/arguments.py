"""`vlft export` arguments (ms-swift's `swift export` names). Constructing them validates and does nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vlft.errors import VlftError


@dataclass
class ExportArguments:
    """`vlft export --adapters CKPT --merge_lora true`: merge a LoRA checkpoint into its base model."""

    adapters: list[str] = field(default_factory=list, metadata={"help": "the LoRA checkpoint dir to merge"})
    model: str | None = field(default=None, metadata={
        "help": "base model (default: the `model` in the checkpoint's args.json)"})
    merge_lora: bool = field(default=False, metadata={"help": "merge the adapter into the base weights"})
    output_dir: str | None = field(default=None, metadata={"help": "merged model dir (default: CKPT-merged)"})
    torch_dtype: Literal["bfloat16", "float16", "float32"] | None = field(
        default=None, metadata={"help": "dtype to merge and save in (default: the base model's)"})
    cache_dir: str | None = field(default=None, metadata={"help": "vlft's cache (tiny models)",
                                                          "env": "VLFT_CACHE_HOME"})
    use_hf: bool = field(default=False, metadata={"help": "download the base from the HF Hub instead of ModelScope",
                                                   "env": "USE_HF"})
    push_to_hub: bool = field(default=False, metadata={"help": "upload the merged model (not implemented yet)"})
    hub_model_id: str | None = field(default=None, metadata={"help": "hub repo to push to (not implemented yet)"})
    hub_token: str | None = field(default=None, metadata={"help": "hub token (never written to disk)",
                                                          "secret": True})
    hub_private_repo: bool = field(default=False, metadata={"help": "push as a private repo (not implemented yet)"})

    def __post_init__(self):
        if self.push_to_hub:
            raise VlftError("--push_to_hub is not implemented yet: nothing is uploaded; export without it and "
                            "upload the merged dir with your hub's own client")
        if not self.adapters:
            raise VlftError("--adapters is required (a LoRA checkpoint dir)")
        if len(self.adapters) > 1:
            raise VlftError(f"--adapters: merging takes one checkpoint, got {len(self.adapters)}")
        if not self.merge_lora:
            raise VlftError("--merge_lora true is required: merging a LoRA checkpoint is the only export so far")
        if self.output_dir is None:
            self.output_dir = f"{Path(self.adapters[0])}-merged"  # Path drops a trailing slash
