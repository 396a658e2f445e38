"""`vlft export` arguments (ms-swift's `swift export` names). Constructing them validates and does nothing else."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vlft.arguments import CheckedArguments, not_positive

# A hub repo id: NAME (the token's own namespace) or OWNER/NAME, as both hubs spell them.
_REPO_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]+$")


def merged_dir_of(adapter: str) -> Path:
    """Where an adapter checkpoint merged into its base goes by default: beside it, as CKPT-merged (ms-swift's
    name, a link's own name kept); `.` and `..` name the dir they stand for (never `.-merged`)."""
    path = Path(adapter).expanduser()  # Path drops a trailing slash
    if path.name in ("", ".", ".."):
        path = Path(os.path.abspath(path))  # as ms-swift's to_abspath: `..` folded, links not followed
    return path.with_name(f"{path.name}-merged")


@dataclass
class ExportArguments(CheckedArguments):
    """`vlft export`: merge a LoRA checkpoint into its base model (--merge_lora) and/or push a model dir or
    checkpoint to ModelScope or the HF Hub (--push_to_hub); or convert to and from Megatron-Core (--to_mcore,
    --to_hf)."""

    adapters: list[str] = field(default_factory=list, metadata={
        "help": "the LoRA checkpoint dir to merge or push"})
    model: str | None = field(default=None, metadata={
        "help": "base model to merge into (default: the `model` in the checkpoint's args.json); without "
                "--adapters, the model dir or checkpoint to push"})
    model_revision: str | None = field(default=None, metadata={
        "help": "hub revision of --model (default: the run's own --model_revision when the base comes from args.json)"})
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
    # Megatron-Core (the extra vlft[megatron]), as ms-swift's `swift export --to_mcore` / `--to_hf`.
    to_mcore: bool = field(default=False, metadata={
        "help": "convert --model (merged with --adapters if given) to a Megatron-Core checkpoint in --output_dir"})
    to_hf: bool = field(default=False, metadata={
        "help": "convert the Megatron-Core checkpoint --mcore_model to an HF model dir in --output_dir"})
    mcore_model: str | None = field(default=None, metadata={
        "help": "the Megatron-Core checkpoint dir to convert (--to_hf true)"})
    tensor_model_parallel_size: int = field(default=1, metadata={
        "help": "--to_mcore: tensor-parallel ranks the checkpoint is split into"})
    pipeline_model_parallel_size: int = field(default=1, metadata={
        "help": "--to_mcore: pipeline stages the checkpoint is split into"})
    expert_model_parallel_size: int = field(default=1, metadata={
        "help": "--to_mcore: expert-parallel ranks the checkpoint is split into (MoE)"})
    expert_tensor_parallel_size: int = field(default=1, metadata={
        "help": "--to_mcore: tensor-parallel ranks of each expert (divides --tensor_model_parallel_size)"})
    iteration: int | None = field(default=None, metadata={
        "help": "--to_hf: the iteration to convert (default: latest_checkpointed_iteration.txt's)"})
    test_convert_precision: bool = field(default=False, metadata={
        "help": "--to_mcore: print the largest logit difference between the HF and Megatron-Core models"})

    def problems(self) -> list[str]:
        if self.hub_token is None:
            self.hub_token = (self.hf_token if self.use_hf else self.modelscope_api_token) or None
        problems = []
        if len(self.adapters) > 1:
            problems.append(f"--adapters: export takes one checkpoint, got {len(self.adapters)}")
        if self.to_mcore or self.to_hf:
            return problems + self._megatron_problems()
        if self.push_to_hub:
            problems += self._push_problems()
        elif not self.merge_lora:
            problems.append("nothing to do: --merge_lora true is required to merge --adapters into its base, "
                            "--push_to_hub true to push, --to_mcore true or --to_hf true to convert")
        if self.merge_lora and not self.adapters:
            problems.append("--adapters is required with --merge_lora true (a LoRA checkpoint dir)")
        if self.merge_lora and self.output_dir is None and self.adapters:
            self.output_dir = str(merged_dir_of(self.adapters[0]))
        return problems

    def _megatron_problems(self) -> list[str]:
        problems = not_positive(self, ("tensor_model_parallel_size", "pipeline_model_parallel_size",
                                       "expert_model_parallel_size", "expert_tensor_parallel_size", "iteration"))
        if self.to_mcore and self.to_hf:
            problems.append("--to_mcore true and --to_hf true: choose one direction")
        others = [flag for flag, on in (("--merge_lora", self.merge_lora), ("--push_to_hub", self.push_to_hub)) if on]
        if others:
            problems.append(f"{' and '.join(others)} cannot be combined with --to_mcore / --to_hf")
        if self.output_dir is None:
            problems.append("--to_mcore / --to_hf need --output_dir (the dir to write)")
        if self.to_mcore and not self.model and not self.adapters:
            problems.append("--to_mcore true needs --model (an HF model dir, hub id or vlft/tiny-*) or --adapters")
        if self.to_mcore and self.mcore_model:
            problems.append("--mcore_model is what --to_hf true converts; --to_mcore true converts --model")
        if self.to_hf and not self.mcore_model:
            problems.append("--to_hf true needs --mcore_model (a Megatron-Core checkpoint dir)")
        if self.to_hf and self.adapters:
            problems.append("--to_hf true converts a whole checkpoint; --adapters applies to --to_mcore only")
        if self.to_hf and (self.tensor_model_parallel_size, self.pipeline_model_parallel_size,
                           self.expert_model_parallel_size, self.expert_tensor_parallel_size) != (1, 1, 1, 1):
            problems.append("--to_hf reads the parallel sizes from the checkpoint; the size flags are for --to_mcore")
        if self.test_convert_precision and not self.to_mcore:
            problems.append("--test_convert_precision true compares the models of --to_mcore true")
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
