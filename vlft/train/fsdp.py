"""`--fsdp` / `--fsdp_config`: PyTorch FSDP2 (`fully_shard`) through transformers' Trainer and accelerate, as
ms-swift 4 takes it: `--fsdp fsdp2` (built in), or a JSON file (or inline JSON) of ms-swift's shape
`{"fsdp": "full_shard auto_wrap", "fsdp_config": {...}}`; also transformers' option words (`full_shard`,
`shard_grad_op`, `offload`, `auto_wrap`, as ms-swift 3 passed them on). `--fsdp_config` (a JSON path or object,
transformers' fsdp_config) adds to or overrides the config's entries.

What vlft fixes: FSDP version 2; checkpoints of full weights (FULL_STATE_DICT: model.safetensors or
adapter_model.safetensors, which resume, load and export as any other checkpoint's); every rank loads the model;
activations are recomputed by --gradient_checkpointing / --vit_gradient_checkpointing, not by FSDP's wrappers
(which would rename the modules vlft finds by path). The family names the blocks each sharded as one unit
(Family.block_classes: a decoder layer, a vision block)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlft.errors import VlftError
from vlft.train.config_json import json_object

if TYPE_CHECKING:
    from vlft.arguments import SftArguments

# ms-swift 4's built-in `fsdp2` (swift/config/fsdp2.json), less what vlft does its own way (see the docstring).
BUILTIN_CONFIGS: dict[str, dict[str, Any]] = {
    "fsdp2": {"fsdp": "full_shard auto_wrap",
              "fsdp_config": {"fsdp_version": 2, "reshard_after_forward": True,
                              "auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}},
}
# transformers' (and ms-swift 3's) option words that FSDP2 has, and the fsdp_config entry each one sets.
OPTION_WORDS: dict[str, tuple[str, bool] | None] = {
    "full_shard": ("reshard_after_forward", True), "shard_grad_op": ("reshard_after_forward", False),
    "offload": ("cpu_offload", True), "auto_wrap": None,
}
FULL_STATE_DICT = "FULL_STATE_DICT"


@dataclass(frozen=True)
class FsdpSettings:
    """transformers' fsdp_config for the run (keys without the `fsdp_` prefix), before the family's blocks."""

    config: dict[str, Any] = field(default_factory=dict)

    def training_config(self, block_classes: tuple[str, ...]) -> dict[str, Any]:
        """The fsdp_config for TrainingArguments: the family's blocks wrapped, unless the config names its own."""
        config = dict(self.config)
        if config.get("auto_wrap_policy", "TRANSFORMER_BASED_WRAP") == "TRANSFORMER_BASED_WRAP":
            config.setdefault("transformer_layer_cls_to_wrap", list(block_classes))
        return config


def _json_object(text: str, flag: str) -> dict:
    """A JSON object from a file path or from inline JSON text."""
    path = Path(text).expanduser()
    if path.is_file():
        source, text = str(path), path.read_text(encoding="utf-8")
    elif text.lstrip().startswith("{"):
        source = "(inline JSON)"
    else:
        raise VlftError(f"{flag} {text}: no such file, and not a built-in config ({', '.join(BUILTIN_CONFIGS)}) "
                        f"nor FSDP options ({', '.join(OPTION_WORDS)})")
    return json_object(text, f"{flag} {source}")


def _option_entries(options: str, flag: str) -> dict[str, Any]:
    """fsdp_config entries for transformers' option words (`full_shard auto_wrap offload`)."""
    entries: dict[str, Any] = {}
    for word in options.split():
        if word not in OPTION_WORDS:
            fsdp1 = " (an FSDP1 strategy; vlft runs FSDP2)" if word in ("hybrid_shard", "hybrid_shard_zero2",
                                                                         "no_shard") else ""
            raise VlftError(f"{flag}: unknown FSDP option {word!r}{fsdp1}; options: {', '.join(OPTION_WORDS)}")
        if OPTION_WORDS[word] is not None:
            key, value = OPTION_WORDS[word]
            entries[key] = value
    return entries


def _without_prefix(config: dict) -> dict:
    """Keys as transformers reads them: accelerate's `fsdp_version` is `version`, and so on."""
    return {(key[5:] if key.startswith("fsdp_") else key): value for key, value in config.items()}


def _check(config: dict[str, Any], source: str) -> None:
    """VlftError for what vlft does not run (see the module docstring)."""
    if int(config.get("version", 2)) != 2:
        raise VlftError(f"{source}: fsdp_version {config['version']}: vlft runs FSDP2 only (fsdp_version 2)")
    state_dict = str(config.get("state_dict_type", FULL_STATE_DICT)).upper()
    if state_dict != FULL_STATE_DICT:
        raise VlftError(f"{source}: state_dict_type {config['state_dict_type']}: vlft saves checkpoints of whole "
                        f"weights (they resume, load and export as any other checkpoint); use {FULL_STATE_DICT} or "
                        "leave it out")
    if str(config.get("cpu_ram_efficient_loading", False)).lower() == "true":
        raise VlftError(f"{source}: cpu_ram_efficient_loading true: every rank loads the model in vlft; set it false "
                        "or leave it out")
    if str(config.get("activation_checkpointing", False)).lower() == "true":
        raise VlftError(f"{source}: activation_checkpointing true: vlft recomputes activations with "
                        "--gradient_checkpointing true (the default) and --vit_gradient_checkpointing; leave it out")


def resolve_fsdp(fsdp: str | None, fsdp_config: dict | str | None) -> FsdpSettings | None:
    """The run's FSDP settings from --fsdp and --fsdp_config; None when FSDP is not asked for."""
    if fsdp_config is not None and not fsdp:
        raise VlftError("--fsdp_config needs --fsdp (e.g. --fsdp fsdp2, or --fsdp full_shard)")
    if not fsdp:
        return None
    if fsdp in BUILTIN_CONFIGS:
        shape = json.loads(json.dumps(BUILTIN_CONFIGS[fsdp]))  # a fresh copy
    elif re.fullmatch(r"[a-z0-9_ ]+", fsdp) and not Path(fsdp).is_file():  # option words (unknown ones refused)
        shape = {"fsdp": fsdp, "fsdp_config": {}}
    else:
        shape = _json_object(fsdp, "--fsdp")
    options = shape.get("fsdp", "full_shard auto_wrap")
    config = shape.get("fsdp_config", {})
    if not isinstance(options, str) or not isinstance(config, dict):
        raise VlftError(f"--fsdp {fsdp}: expected ms-swift's shape, {{\"fsdp\": \"full_shard auto_wrap\", "
                        "\"fsdp_config\": {...}}")
    extra = fsdp_config if isinstance(fsdp_config, dict) or fsdp_config is None else _json_object(
        fsdp_config, "--fsdp_config")
    # The option words set what the config leaves unset (as transformers does); --fsdp_config wins over both.
    merged = {**_option_entries(options, f"--fsdp {fsdp}"), **_without_prefix(config), **_without_prefix(extra or {})}
    _check(merged, f"--fsdp {fsdp}" + (" --fsdp_config" if extra else ""))
    merged["version"] = 2
    merged["state_dict_type"] = FULL_STATE_DICT
    merged["cpu_ram_efficient_loading"] = False
    return FsdpSettings(merged)


def fsdp_problems(args: SftArguments) -> list[str]:
    """What does not run with --fsdp."""
    problems = []
    if args.chunked_loss:
        problems.append("--chunked_loss true does not run under --fsdp (it reads the output head's weight outside "
                        "its forward, where FSDP keeps it sharded); leave it out")
    if args.torch_compile:
        problems.append("--torch_compile true is not tested under --fsdp (compiled layers beside FSDP's gathering "
                        "hooks); leave it out, or use --deepspeed zero2")
    return problems


def half_precision_policy(dtype):
    """FSDP2's mixed precision for a bf16 / fp16 run: layers compute in `dtype`, gradients are reduced across ranks
    in float32 and the model's outputs keep the dtypes the model gives them. accelerate's own policy for `bf16` also
    reduces in bf16 and casts the outputs, the loss included, to bf16: an H100 run logged losses of 12.8125 and
    8.6875 where the same run without FSDP logged 12.8094 and 8.6732 (BENCHMARKS.md, session 18). accelerate keeps
    a policy object the plugin is given (`set_mixed_precision` replaces only an unset one). The cost: the
    reduce-scatter moves float32, and with gradient accumulation FSDP2 keeps the gradients it accumulates between
    micro-steps unsharded in float32 (twice bf16's memory; small for LoRA, not for full fine-tuning)."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


class FsdpOnCpu:
    """A transformers Trainer mixin: FSDP2 on CPU processes (gloo), as on GPUs.

    accelerate 1.15 turns the FSDP plugin transformers hands it on only for accelerator devices (state.py lists
    MULTI_GPU, MULTI_NPU, ...; not MULTI_CPU) and otherwise trains as plain DDP without a word, while torch's
    `fully_shard` runs on CPU with gloo. Here, after the Trainer made its accelerator, a CPU run asked for FSDP
    gets the state accelerate gives a GPU run: the FSDP distributed type and the plugin. CPU runs are the tests'
    (tests/train/test_fsdp.py); GPU runs never take this path."""

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        from accelerate import PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        state = self.accelerator.state
        if self.args.fsdp_plugin_args is None or state.distributed_type != DistributedType.MULTI_CPU:
            return
        # Both shared states: a later AcceleratorState() copies PartialState's distributed type over its own.
        PartialState().distributed_type = state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
        self.is_fsdp_enabled = True
