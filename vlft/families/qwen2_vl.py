"""Qwen2-VL: boxes as `(x1,y1),(x2,y2)` in 0-1000 between box special tokens; refs in object-ref tokens."""

from vlft.families.base import Family, TinySpec
from vlft.families.mcore_layout import LayerNames, McoreLayout
from vlft.families.tiny_text import tiny_text
from vlft.families.tokenizers import QWEN_VOCAB


TINY_TEXT = tiny_text(QWEN_VOCAB, rope_theta=1e6, mrope_section=[2, 3, 3])  # Qwen2-VL's and Qwen2.5-VL's


# transformers does not export Qwen2-VL's vision tower class under a top-level name
VISION_TOWER = "transformers.models.qwen2_vl.modeling_qwen2_vl.Qwen2VisionTransformerPretrainedModel"


def _format_box(box: list[int]) -> str:
    x1, y1, x2, y2 = box
    return f"<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"


QWEN2_VL = Family(
    name="qwen2_vl",
    model_types=("qwen2_vl",),
    template="qwen2_vl",
    patch_size=14,
    merge_size=2,
    temporal_patch_size=2,
    box_convention="norm1000",
    format_box=_format_box,
    format_ref=lambda ref: f"<|object_ref_start|>{ref}<|object_ref_end|>",
    aligner_prefixes=("model.visual.merger.",),
    tokenizer=QWEN_VOCAB,
    tiny_name="qwen2-vl",
    block_classes=("Qwen2VLDecoderLayer", "Qwen2VLVisionBlock"),
    tiny=TinySpec(
        config_class="Qwen2VLConfig",
        text=TINY_TEXT,
        vision=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                    spatial_merge_size=2, temporal_patch_size=2),
        processor_class="Qwen2VLProcessor",
        video_processor_class="Qwen2VLVideoProcessor",
    ),
    # Qwen2.5-VL's layout but for the vision tower: its files keep the legacy names as Qwen2.5-VL's do.
    mcore=McoreLayout(vision_class=VISION_TOWER,
                      layer=LayerNames(q_norm=None, k_norm=None), qkv_bias=True,
                      file_prefixes=(("model.language_model.", "model."), ("model.visual.", "visual."))),
)
