"""Qwen2.5-VL: boxes as `[x1, y1, x2, y2]` in absolute pixels of the resized image; seconds per temporal grid."""

from vlft.families.base import Family, TinySpec
from vlft.families.mcore_layout import LayerNames, McoreLayout
from vlft.families.qwen2_vl import TINY_TEXT as QWEN2_VL_TINY_TEXT
from vlft.families.tokenizers import QWEN_VOCAB


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
    aligner_prefixes=("model.visual.merger.",),
    tokenizer=QWEN_VOCAB,
    tiny_name="qwen2.5-vl",
    block_classes=("Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock"),
    tiny=TinySpec(
        config_class="Qwen2_5_VLConfig",
        text=QWEN2_VL_TINY_TEXT,
        vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, window_size=56,
                    fullatt_block_indexes=[1], out_hidden_size=64, spatial_merge_size=2, temporal_patch_size=2),
        processor_class="Qwen2_5_VLProcessor",
        video_processor_class="Qwen2VLVideoProcessor",
    ),
    vit_mlp_matrices=3,  # its ViT MLP is gated (SwiGLU)
    video_second_per_grid=True,
    mcore=McoreLayout(vision_class="Qwen2_5_VisionTransformerPretrainedModel",
                      layer=LayerNames(q_norm=None, k_norm=None), qkv_bias=True,
                      file_prefixes=(("model.language_model.", "model."), ("model.visual.", "visual."))),
)
