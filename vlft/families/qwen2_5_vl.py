"""Qwen2.5-VL: boxes as `[x1, y1, x2, y2]` in absolute pixels of the resized image; seconds per temporal grid."""

from vlft.families.base import Family


def format_box_list(box: list[int]) -> str:
    """A box as the JSON-style list Qwen2.5-VL and Qwen3-VL were trained to emit."""
    return "[" + ", ".join(str(v) for v in box) + "]"


QWEN2_5_VL = Family(
    name="qwen2_5_vl",
    model_types=("qwen2_5_vl",),
    template="qwen2_5_vl",
    patch_size=14,
    merge_size=2,
    temporal_patch_size=2,
    box_convention="resized_pixels",
    format_box=format_box_list,
    format_ref=lambda ref: ref,
    vit_prefixes=("model.visual.",),
    aligner_prefixes=("model.visual.merger.",),
    llm_prefixes=("model.language_model.", "lm_head."),
    video_second_per_grid=True,
)
