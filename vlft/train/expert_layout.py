"""Loading a Qwen3-VL-MoE checkpoint under ZeRO-3 whatever the layout of its fused expert weights.

transformers 5 (checked on 5.17 and 5.23) holds experts as [experts, out, in] and reads Qwen's published
layout ([experts, in, out]) through `Transpose(check_dims=True)`, which transposes only when the file's shape
differs from the model parameter's. Under ZeRO-3 the parameter is partitioned (shape (0,)), so the check always
transposes, and a checkpoint that transformers 5 wrote itself (already [experts, out, in], as vlft's merged
exports and tiny models are) fails to load. The file's own layout is in its safetensors header: when it
is already the model's, vlft loads it with no conversion, through transformers' public mapping registry.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from vlft.families.base import Family


def _header_shape(model_dir: Path, key: str) -> list[int] | None:
    """The shape of `key` as stored in the model dir's safetensors, without reading any tensor."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        filename = json.loads(index.read_text())["weight_map"].get(key)
    else:
        filename = "model.safetensors"
    if filename is None or not (model_dir / filename).is_file():
        return None
    with safe_open(str(model_dir / filename), "pt") as f:
        return f.get_slice(key).get_shape() if key in f.keys() else None


def expert_probe(family: Family, text_config) -> str | None:
    """The checkpoint key of the first MoE layer's fused down projection, or None without MoE layers."""
    first = next((i for i, kind in enumerate(family.decoder_kinds(text_config)) if kind.moe), None)
    if first is None:
        return None
    return f"{family.modules.decoder_layers}.{first}.{family.modules.experts}.down_proj"


def stored_in_model_layout(model_dir: Path, config, family: Family) -> bool:
    """True if the fused expert weights on disk are already [experts, out, in] (not Qwen's published layout)."""
    text = config.text_config
    probe = expert_probe(family, text)
    if probe is None:
        return False
    shape = _header_shape(model_dir, probe)
    model_layout = [text.num_experts, text.hidden_size, text.moe_intermediate_size]
    return shape == model_layout and text.hidden_size != text.moe_intermediate_size


@contextmanager
def experts_loaded_as_stored(model_type: str):
    """While open, transformers loads `model_type` checkpoints without converting any weight."""
    from transformers import conversion_mapping

    previous = conversion_mapping.get_checkpoint_conversion_mapping(model_type)
    conversion_mapping.register_checkpoint_conversion_mapping(model_type, [], overwrite=True)
    try:
        yield
    finally:
        conversion_mapping.register_checkpoint_conversion_mapping(model_type, previous, overwrite=True)
