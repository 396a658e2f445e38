"""Reading only the tensors (and the parts of them) one rank needs from an HF model dir's safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vlft.errors import VlftError


class SafetensorsReader:
    """The tensors of a model dir (one model.safetensors or an index of shards), read lazily."""

    def __init__(self, model_dir: Path, dtype: torch.dtype | None = None, loaded_name=None):
        """`loaded_name(file key)`: the key as transformers loads it (McoreLayout.loaded_name); keys are given and
        listed that way."""
        from safetensors import safe_open

        self.model_dir, self.dtype = Path(model_dir), dtype
        index = self.model_dir / "model.safetensors.index.json"
        if index.is_file():
            self.files = dict(json.loads(index.read_text())["weight_map"])
        elif (self.model_dir / "model.safetensors").is_file():
            with safe_open(str(self.model_dir / "model.safetensors"), "pt") as f:
                self.files = {key: "model.safetensors" for key in f.keys()}
        else:
            raise VlftError(f"{self.model_dir}: no model.safetensors (or its index): only safetensors weights are "
                            "converted")
        self.stored = {(loaded_name or str)(key): key for key in self.files}  # loaded name -> file key
        self._open: dict[str, object] = {}

    def keys(self) -> list[str]:
        return list(self.stored)

    def _slice(self, key: str):
        from safetensors import safe_open

        if key not in self.stored:
            raise VlftError(f"{self.model_dir}: tensor {key} is missing from the checkpoint")
        stored = self.stored[key]
        name = self.files[stored]
        if name not in self._open:
            self._open[name] = safe_open(str(self.model_dir / name), "pt")
        return self._open[name].get_slice(stored)

    def _cast(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.dtype) if self.dtype is not None else tensor

    def shape(self, key: str) -> list[int]:
        return list(self._slice(key).get_shape())

    def get(self, key: str) -> torch.Tensor:
        return self._cast(self._slice(key)[:])

    def part(self, key: str, dim: int, index: int, count: int) -> torch.Tensor:
        """The index-th of `count` equal parts of the tensor along `dim` (only that part is read)."""
        tensor = self._slice(key)
        size = tensor.get_shape()[dim]
        step = size // count
        where = [slice(None)] * len(tensor.get_shape())
        where[dim] = slice(index * step, (index + 1) * step)
        return self._cast(tensor[tuple(where)]).contiguous()

    def expert(self, key: str, expert: int, shape: tuple[int, int]) -> torch.Tensor:
        """Expert `expert` of a fused [experts, ...] tensor as a [shape] matrix; files written by Qwen store it
        transposed, and (as transformers does) the stored layout is taken when its shape is ambiguous."""
        matrix = self._slice(key)[expert]
        if tuple(matrix.shape) == tuple(shape):
            return self._cast(matrix).contiguous()
        if tuple(matrix.shape) == tuple(shape)[::-1]:
            return self._cast(matrix.T).contiguous()
        raise VlftError(f"{self.model_dir}: {key}: expected experts of shape {list(shape)} (or transposed), got "
                        f"{list(matrix.shape)}")

    def expert_matrices(self, prefix: str, names, expert: int, ffn: int, hidden: int):
        """Expert `expert`'s gate [ffn, hidden], up and down [hidden, ffn] under `prefix` (the experts module):
        from per-expert tensors (`{prefix}.{expert}.gate_proj.weight`, names.expert_matrices) when the files have
        them, else from the fused 3-D ones (names.experts_gate_up / experts_down)."""
        single = [f"{prefix}.{expert}.{name}.weight" for name in names.expert_matrices]
        if single[0] in self.stored:
            return tuple(self.get(key) for key in single)
        gate, up = self.expert(f"{prefix}.{names.experts_gate_up}", expert, (2 * ffn, hidden)).chunk(2)
        return gate, up, self.expert(f"{prefix}.{names.experts_down}", expert, (hidden, ffn))
