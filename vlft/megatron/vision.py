"""The vision tower's tokens in the Megatron-Core model's input, through public entry points only: the tower's
merged embeddings are scattered into the token embeddings at the image / video placeholders (GPTModel's
`decoder_input`), and Qwen3-VL's deepstack features are added to the outputs of the first decoder layers by
forward hooks. Differentiable: the vision tower trains when its parameters do."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def _vision(tower, pixels: torch.Tensor, grid: torch.Tensor):
    out = tower(pixels.to(next(tower.parameters()).dtype), grid_thw=grid, return_dict=True)
    return out.pooler_output, list(getattr(out, "deepstack_features", None) or [])


@contextmanager
def vision_embedded(model, batch: dict, image_token: int, video_token: int) -> Iterator[torch.Tensor]:
    """The decoder input [L, B, H] of `batch` (input_ids, and pixel_values / image_grid_thw,
    pixel_values_videos / video_grid_thw when it has media) for `model` (vlft.megatron.model's, first pipeline
    stage); within the block, the model's forward adds the deepstack features."""
    ids = batch["input_ids"]
    language = model.language_model
    embeds = language.embedding(input_ids=ids, position_ids=None)  # [L, B, H]
    tower = model.visual.visual
    visual_mask = torch.zeros_like(ids, dtype=torch.bool)
    deepstack = None
    for pixels, grid, token in ((batch.get("pixel_values"), batch.get("image_grid_thw"), image_token),
                                (batch.get("pixel_values_videos"), batch.get("video_grid_thw"), video_token)):
        if pixels is None:
            continue
        merged, features = _vision(tower, pixels, grid)
        mask = ids == token
        embeds = embeds.transpose(0, 1).masked_scatter(mask[..., None], merged.to(embeds.dtype)).transpose(0, 1)
        # Deepstack features in the order of the visual positions (images and videos interleaved as placed).
        joint_mask = visual_mask | mask
        placed = [f.new_zeros(int(joint_mask.sum()), f.shape[-1]) for f in features]
        for k, feature in enumerate(features):
            if deepstack is not None:
                placed[k][visual_mask[joint_mask]] = deepstack[k]
            placed[k][mask[joint_mask]] = feature
        deepstack, visual_mask = placed, joint_mask

    def add(feature):
        def hook(module, args, output):
            hidden, *rest = output if isinstance(output, tuple) else (output,)
            hidden = hidden.clone()
            hidden.transpose(0, 1)[visual_mask] += feature.to(hidden.dtype)
            return (hidden, *rest) if isinstance(output, tuple) else hidden
        return hook

    hooks = [layer.register_forward_hook(add(deepstack[layer.layer_number - 1]))
             for layer in language.decoder.layers if deepstack and layer.layer_number - 1 < len(deepstack)]
    try:
        yield embeds.contiguous()
    finally:
        for hook in hooks:
            hook.remove()
