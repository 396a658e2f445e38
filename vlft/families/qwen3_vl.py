"""Qwen3-VL (dense and MoE): 16-pixel patches, 0-1000 boxes, `<t seconds>` before each video frame group.

The aligner is the merger plus the deepstack mergers, which project intermediate ViT features
into the first LLM layers.
"""

from dataclasses import replace

from vlft.families.base import Family, TinySpec
from vlft.families.mcore_layout import McoreLayout
from vlft.families.qwen2_5_vl import format_box_list
from vlft.families.tiny_text import TINY_EXPERTS, tiny_text
from vlft.families.tokenizers import QWEN_VOCAB

TINY_VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
                   temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=64,
                   deepstack_visual_indexes=[0, 1])
TINY_TEXT = tiny_text(QWEN_VOCAB, rope_theta=5e6, mrope_section=[4, 2, 2], mrope_interleaved=True)

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
    aligner_prefixes=("model.visual.merger.", "model.visual.deepstack_merger_list."),
    tokenizer=QWEN_VOCAB,
    tiny_name="qwen3-vl",
    tiny=TinySpec(config_class="Qwen3VLConfig", text=TINY_TEXT, vision=TINY_VISION,
                  processor_class="Qwen3VLProcessor", video_processor_class="Qwen3VLVideoProcessor"),
    video_timestamps=True,
    mcore=McoreLayout(vision_class="Qwen3VLVisionModel"),
    block_classes=("Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock"),
    visual_token_inputs=("visual_pos_masks", "deepstack_visual_embeds"),
)

QWEN3_VL_MOE = replace(
    QWEN3_VL, name="qwen3_vl_moe", model_types=("qwen3_vl_moe",), tiny_name="qwen3-vl-moe",
    tiny=replace(QWEN3_VL.tiny, config_class="Qwen3VLMoeConfig",
                 text={**TINY_TEXT, **TINY_EXPERTS, "decoder_sparse_step": 1}),
    moe_layers="sparse_step",
    mcore=McoreLayout(vision_class="Qwen3VLMoeVisionModel"),
    block_classes=("Qwen3VLMoeTextDecoderLayer", "Qwen3VLMoeVisionBlock"),
)
