"""Checkpoint tensors transformers does not load (a family's `unloaded_prefixes`, e.g. Qwen3.5's `mtp.*`
multi-token-prediction head, which vLLM and SGLang use for speculative decoding): a merged export copies
them from the base model's files, byte for byte, so it keeps the base's key set."""

from __future__ import annotations

import json
from pathlib import Path

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
EXTRA_SHARD = "model-unloaded.safetensors"


def _weight_map(model_dir: Path) -> dict[str, str]:
    """Tensor name -> file name of a model dir's safetensors (sharded or single)."""
    from safetensors import safe_open

    if (model_dir / INDEX).is_file():
        return json.loads((model_dir / INDEX).read_text())["weight_map"]
    if not (model_dir / SINGLE).is_file():
        return {}
    with safe_open(str(model_dir / SINGLE), "pt") as f:
        return {key: SINGLE for key in f.keys()}


def _stored_bytes(path: Path) -> int:
    """Bytes of tensor data in a safetensors file (its size minus the 8-byte length and the JSON header)."""
    with open(path, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
    return path.stat().st_size - 8 - header


def unloaded_tensors(base_dir: Path, prefixes: tuple[str, ...]) -> dict:
    """The base's tensors under `prefixes`, as stored (dtype and bytes unchanged)."""
    from safetensors import safe_open

    by_file: dict[str, list[str]] = {}
    for key, filename in _weight_map(base_dir).items():
        if key.startswith(prefixes):
            by_file.setdefault(filename, []).append(key)
    tensors = {}
    for filename, keys in by_file.items():
        with safe_open(str(base_dir / filename), "pt") as f:
            tensors.update({key: f.get_tensor(key) for key in keys})
    return tensors


def copy_unloaded_tensors(base_dir: Path, output_dir: Path, prefixes: tuple[str, ...]) -> int:
    """Add the base's tensors under `prefixes` that output_dir lacks, as one more shard listed in the index
    (an index is written when output_dir had a single file); returns how many were copied."""
    from safetensors.torch import save_file

    present = _weight_map(output_dir)
    if not present or not prefixes:  # no model weights here (an adapter, DeepSpeed shards): nothing to complete
        return 0
    tensors = {k: v for k, v in unloaded_tensors(base_dir, prefixes).items() if k not in present}
    if not tensors:
        return 0
    save_file(tensors, str(output_dir / EXTRA_SHARD), metadata={"format": "pt"})
    if (output_dir / INDEX).is_file():
        index = json.loads((output_dir / INDEX).read_text())
    else:
        index = {"metadata": {"total_size": _stored_bytes(output_dir / SINGLE)}, "weight_map": dict(present)}
    index["weight_map"].update({key: EXTRA_SHARD for key in tensors})
    index["metadata"]["total_size"] = index["metadata"].get("total_size", 0) + sum(
        t.numel() * t.element_size() for t in tensors.values())
    (output_dir / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return len(tensors)
