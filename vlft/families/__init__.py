"""The family registry (every family list in vlft derives from FAMILIES) and detection from a model dir's
config.json or a loaded model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from vlft.errors import VlftError
from vlft.families.base import Family
from vlft.families.qwen2_5_vl import QWEN2_5_VL
from vlft.families.qwen2_vl import QWEN2_VL
from vlft.families.qwen3_5 import QWEN3_5, QWEN3_5_MOE
from vlft.families.qwen3_vl import QWEN3_VL, QWEN3_VL_MOE

FAMILIES: dict[str, Family] = {f.name: f for f in (QWEN3_VL, QWEN3_VL_MOE, QWEN3_5, QWEN3_5_MOE, QWEN2_5_VL,
                                                   QWEN2_VL)}

# Model types transformers knows that vlft refuses, and why (named in the error instead of a bare "unsupported").
NOT_YET: dict[str, str] = {
    "qwen4_exp": "Qwen4-Exp / Qwen3.8-Flash-Next adds hyper-connections (several residual streams), n-gram per-layer "
                 "embeddings and a sparse-attention token indexer to Qwen3.5-MoE; vlft does not yet keep packed "
                 "samples apart in the indexer nor target those modules",
}

if TYPE_CHECKING:
    from torch import nn


def get_family(name: str) -> Family:
    """The family called `name` (as given to `--model_type`)."""
    for family in FAMILIES.values():
        if name == family.name or name in family.model_types:
            return family
    reason = f" ({NOT_YET[name]})" if name in NOT_YET else ""
    raise VlftError(f"unsupported model_type {name!r}{reason}; supported: {', '.join(FAMILIES)}")


def detect_family(model_dir: Path, model_type: str | None = None) -> Family:
    """The family of a model dir, from `--model_type` if given, else its config.json's `model_type`."""
    if model_type:
        return get_family(model_type)
    config_path = Path(model_dir) / "config.json"
    if not config_path.is_file():
        raise VlftError(f"{model_dir}: not a model dir (no config.json)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise VlftError(f"{config_path}:{e.lineno}: invalid JSON: {e.msg}") from None
    found = config.get("model_type")
    if not found:
        raise VlftError(f"{config_path}: model_type: missing")
    try:
        return get_family(found)
    except VlftError:
        reason = f" ({NOT_YET[found]})" if found in NOT_YET else ""
        raise VlftError(
            f"{config_path}: model_type: unsupported {found!r}{reason}; supported: {', '.join(FAMILIES)} "
            "(override with --model_type)"
        ) from None


def base_model(model: "nn.Module") -> "nn.Module":
    """The HF model inside PEFT's wrapper (the model itself when not wrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def family_of(model: "nn.Module") -> Family:
    """The family of a loaded HF model (PEFT-wrapped or not)."""
    model_type = getattr(getattr(base_model(model), "config", None), "model_type", None)
    if model_type is None:
        raise VlftError(f"{type(model).__name__} is not a Hugging Face model (no config.model_type)")
    return get_family(model_type)


def module_at(model: "nn.Module", path: str) -> "nn.Module":
    """The submodule at a family's dotted path (ModuleMap), through PEFT's wrapper."""
    return base_model(model).get_submodule(path)
