"""An image's grid (t, h, w patches) from its size alone, by the Qwen-VL image processor's own resize rule,
for encodings that keep no pixel values (`vlft sft`'s pre-encode, `vlft data check`): the processor's
resize, rescale, normalisation and patching are then left to the data-loader workers, which make the
pixel values when a batch is fetched (and check the tokens come out the same: Encoder.with_pixels).

Only for transformers' Qwen2VLImageProcessor (all four families use it) with its resize as shipped;
any other processor returns None and the caller runs the processor itself.
"""

from __future__ import annotations

from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor, smart_resize


def grid_from_size(image_processor, width: int, height: int, size: dict | None = None
                   ) -> tuple[int, int, int] | None:
    """(1, rows, columns) of patches the processor would give a `width` x `height` image; `size`
    overrides the processor's {"shortest_edge", "longest_edge"} pixel bounds. None where the rule is not
    known to be the processor's. ValueError as the processor raises it (aspect ratio over 200)."""
    if not isinstance(image_processor, Qwen2VLImageProcessor) or \
            type(image_processor).resize is not Qwen2VLImageProcessor.resize or not image_processor.do_resize:
        return None
    bounds = dict(image_processor.size)
    bounds.update(size or {})
    patch = image_processor.patch_size
    resized_height, resized_width = smart_resize(height, width, factor=patch * image_processor.merge_size,
                                                 min_pixels=bounds["shortest_edge"],
                                                 max_pixels=bounds["longest_edge"])
    return 1, resized_height // patch, resized_width // patch
