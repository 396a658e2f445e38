"""ZeRO-3 needs every rank to run the same modules in the same order: a rank whose batch has no image
(or no video) would skip a vision-tower forward, its parameter all-gathers would fall out of step with
the other ranks', and training would hang or crash. This hook runs a tiny dummy vision pass for each
missing modality just before the LLM, so every rank runs the vision tower twice per forward (images,
videos), and ties it to the graph with a zero so the backward reductions match too."""

from __future__ import annotations

import torch
from torch import nn

from vlft.families import family_of, module_at


def _tensors(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    if hasattr(output, "values"):
        return [t for item in output.values() for t in _tensors(item)]
    return []


class BalancedVisionCalls:
    """Set `has_image` / `has_video` before each forward; missing ones get a dummy vision pass."""

    def __init__(self, model: nn.Module):
        modules = family_of(model).modules
        self.visual = module_at(model, modules.vision_tower)
        self.has_image = self.has_video = True
        module_at(model, modules.language_model).register_forward_pre_hook(self._before_llm, with_kwargs=True)

    def expect(self, batch: dict) -> None:
        """Record which modalities the coming forward carries."""
        self.has_image = "pixel_values" in batch
        self.has_video = "pixel_values_videos" in batch

    def _dummy_pass(self) -> torch.Tensor:
        config = self.visual.config
        patch_dim = config.in_channels * config.temporal_patch_size * config.patch_size ** 2
        merge = config.spatial_merge_size
        pixels = torch.zeros(merge * merge, patch_dim, dtype=self.visual.dtype, device=self.visual.device)
        grid = torch.tensor([[1, merge, merge]], device=self.visual.device)
        return sum(t.float().sum() for t in _tensors(self.visual(pixels, grid_thw=grid)))

    def _before_llm(self, module, args, kwargs):
        missing = (not self.has_image) + (not self.has_video)
        if not missing or kwargs.get("inputs_embeds") is None:
            return None
        zero = sum(self._dummy_pass() for _ in range(missing)) * 0.0
        kwargs["inputs_embeds"] = kwargs["inputs_embeds"] + zero.to(kwargs["inputs_embeds"].dtype)
        return args, kwargs
