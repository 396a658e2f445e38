"""Qwen3.5 / Qwen3.6 (dense and MoE; Qwen3.6 checkpoints load as the same model types).

Qwen3-VL's vision geometry, boxes and video timestamps; its vision tower without DeepStack (so the aligner
is the merger alone). A hybrid decoder: three Gated DeltaNet (linear attention) layers, then one gated
softmax-attention layer, repeated (`layer_types`), on the 248k Qwen3.5 vocabulary. Checkpoints carry a
multi-token-prediction head (`mtp.*`) that transformers does not load; exports copy it from the base files.
"""

from dataclasses import replace

from vlft.families.base import ModuleMap, TinySpec
from vlft.families.mcore_layout import LinearAttentionNames, McoreLayout, MtpNames, SharedExpertNames
from vlft.families.qwen3_vl import QWEN3_VL, TINY_VISION as QWEN3_VL_TINY_VISION
from vlft.families.tiny_text import TINY_EXPERTS, tiny_text
from vlft.families.tokenizers import QWEN3_5_VOCAB


def tiny_mtp_shapes(text_config) -> dict[str, tuple[int, ...]]:
    """Shapes of a Qwen3.5 checkpoint's `mtp.*` tensors, for the tiny model's files (random values): the input
    norms and `fc` that join the token's embedding with the last hidden state, one gated softmax-attention decoder
    layer with the model's MLP (MoE in the MoE models, its experts stored one by one as the files store the
    decoder layers'), and the final norm."""
    hidden, heads, kv_heads = text_config.hidden_size, text_config.num_attention_heads, text_config.num_key_value_heads
    head_dim = text_config.head_dim
    layer = "mtp.layers.0."
    shapes = {"mtp.fc.weight": (hidden, 2 * hidden), "mtp.norm.weight": (hidden,),
              "mtp.pre_fc_norm_embedding.weight": (hidden,), "mtp.pre_fc_norm_hidden.weight": (hidden,),
              layer + "input_layernorm.weight": (hidden,), layer + "post_attention_layernorm.weight": (hidden,),
              layer + "self_attn.q_proj.weight": (2 * heads * head_dim, hidden),  # queries and their gates
              layer + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
              layer + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
              layer + "self_attn.o_proj.weight": (hidden, heads * head_dim),
              layer + "self_attn.q_norm.weight": (head_dim,), layer + "self_attn.k_norm.weight": (head_dim,)}
    experts = getattr(text_config, "num_experts", None)
    if experts:
        ffn, shared = text_config.moe_intermediate_size, text_config.shared_expert_intermediate_size
        for e in range(experts):  # one by one, as the files store the decoder layers' experts
            shapes.update({layer + f"mlp.experts.{e}.gate_proj.weight": (ffn, hidden),
                           layer + f"mlp.experts.{e}.up_proj.weight": (ffn, hidden),
                           layer + f"mlp.experts.{e}.down_proj.weight": (hidden, ffn)})
        shapes.update({layer + "mlp.gate.weight": (experts, hidden),
                       layer + "mlp.shared_expert.gate_proj.weight": (shared, hidden),
                       layer + "mlp.shared_expert.up_proj.weight": (shared, hidden),
                       layer + "mlp.shared_expert.down_proj.weight": (hidden, shared),
                       layer + "mlp.shared_expert_gate.weight": (1, hidden)})
    else:
        ffn = text_config.intermediate_size
        shapes.update({layer + "mlp.gate_proj.weight": (ffn, hidden), layer + "mlp.up_proj.weight": (ffn, hidden),
                       layer + "mlp.down_proj.weight": (hidden, ffn)})
    return shapes


# The 3:1 layer pattern of the real models, at tiny widths. head_dim 32 with partial rotary 0.25 leaves 8
# rotary dims (mrope_section sums to 4, as [11, 11, 10] sums to 32 of 256 x 0.25 in the real ones).
TINY_TEXT = tiny_text(
    QWEN3_5_VOCAB, rope_theta=1e7, mrope_section=[2, 1, 1], mrope_interleaved=True, partial_rotary_factor=0.25,
    num_hidden_layers=4, head_dim=32, layer_types=["linear_attention"] * 3 + ["full_attention"],
    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
    linear_conv_kernel_dim=4, attn_output_gate=True, mtp_num_hidden_layers=1)

QWEN3_5 = replace(
    QWEN3_VL,
    name="qwen3_5",
    model_types=("qwen3_5",),
    template="qwen3_5",
    aligner_prefixes=("model.visual.merger.",),
    tokenizer=QWEN3_5_VOCAB,
    tiny_name="qwen3.5",
    tiny=TinySpec(config_class="Qwen3_5Config", text=TINY_TEXT,
                  vision={**QWEN3_VL_TINY_VISION, "deepstack_visual_indexes": []},
                  processor_class="Qwen3VLProcessor", video_processor_class="Qwen3VLVideoProcessor",
                  unloaded_tensor_shapes=tiny_mtp_shapes),
    layer_kinds={"full_attention": "softmax", "linear_attention": "linear"},
    unloaded_prefixes=("mtp.",),
    mcore=McoreLayout(vision_class="Qwen3_5VisionModel", gated_attention=True, zero_centered_norms=True,
                      linear_attention=LinearAttentionNames(), mtp=MtpNames()),
    block_classes=("Qwen3_5DecoderLayer", "Qwen3_5VisionBlock"),
    visual_token_inputs=None,  # no deepstack
)

QWEN3_5_MOE = replace(
    QWEN3_5, name="qwen3_5_moe", model_types=("qwen3_5_moe",), tiny_name="qwen3.5-moe",
    tiny=replace(QWEN3_5.tiny, config_class="Qwen3_5MoeConfig",
                 text={**TINY_TEXT, **TINY_EXPERTS, "shared_expert_intermediate_size": 32}),
    moe_layers="every",
    # The shared expert's one-output sigmoid gate routes too (how much of the shared expert a token takes).
    modules=ModuleMap(routers=("mlp.gate", "mlp.shared_expert_gate")),
    official_dir="qwen3_5",  # no official Qwen3.5-MoE files were found (templates/official/SOURCES.md)
    # Its files store experts one by one (transformers fuses them at load and splits them at save).
    mcore=replace(QWEN3_5.mcore, vision_class="Qwen3_5MoeVisionModel", shared_expert=SharedExpertNames(),
                  experts_per_file_tensor=True),
    block_classes=("Qwen3_5MoeDecoderLayer", "Qwen3_5MoeVisionBlock"),
)
