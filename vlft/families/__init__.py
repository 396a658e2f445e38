"""Model families and their detection from a model dir's config.json."""

from __future__ import annotations

import json
from pathlib import Path

from vlft.errors import VlftError
from vlft.families.base import Family
from vlft.families.qwen2_5_vl import QWEN2_5_VL
from vlft.families.qwen2_vl import QWEN2_VL
from vlft.families.qwen3_vl import QWEN3_VL, QWEN3_VL_MOE

FAMILIES: dict[str, Family] = {f.name: f for f in (QWEN3_VL, QWEN3_VL_MOE, QWEN2_5_VL, QWEN2_VL)}


def get_family(name: str) -> Family:
    """The family called `name` (as given to `--model_type`)."""
    for family in FAMILIES.values():
        if name == family.name or name in family.model_types:
            return family
    raise VlftError(f"unsupported model_type {name!r}; supported: {', '.join(FAMILIES)}")


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
        raise VlftError(
            f"{config_path}: model_type: unsupported {found!r}; supported: {', '.join(FAMILIES)} "
            "(override with --model_type)"
        ) from None
