"""Qwen3-VL (dense and MoE): 16-pixel patches, 0-1000 boxes, `<t seconds>` before each video frame group.

The aligner is the merger plus the deepstack mergers, which project intermediate ViT features
into the first LLM layers.
"""

from dataclasses import replace

from vlft.families.base import Family
from vlft.families.qwen2_5_vl import format_box_list

QWEN3_VL = Family(
    name="qwen3_vl",
    model_types=("qwen3_vl",),
    template="qwen3_vl",
    patch_size=16,
    merge_size=2,
    temporal_patch_size=2,
    box_convention="norm1000",
    format_box=format_box_list,
    format_ref=lambda ref: ref,
    vit_prefixes=("model.visual.",),
    aligner_prefixes=("model.visual.merger.", "model.visual.deepstack_merger_list."),
    llm_prefixes=("model.language_model.", "lm_head."),
    video_timestamps=True,
)

QWEN3_VL_MOE = replace(QWEN3_VL, name="qwen3_vl_moe", model_types=("qwen3_vl_moe",))
