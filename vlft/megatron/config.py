"""A family's HF text config as Megatron-Core's TransformerConfig (conversion settings: weights made on CPU,
not initialised, no fused kernels, the allgather MoE dispatcher, which needs no CUDA streams)."""

from __future__ import annotations

import torch

from vlft.families.base import Family
from vlft.megatron.layouts import McoreLayout
from vlft.megatron.parallel import ParallelSizes


def rope_parameters(text_config) -> dict:
    """The text config's rope settings (transformers 5's rope_parameters, or rope_scaling with rope_theta)."""
    params = dict(getattr(text_config, "rope_parameters", None) or getattr(text_config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(text_config, "rope_theta", 10000.0))
    return params


def mtp_layers(text_config, layout: McoreLayout) -> int:
    """How many multi-token-prediction layers the checkpoint carries (0: none, or not mapped)."""
    return int(getattr(text_config, "mtp_num_hidden_layers", 0) or 0) if layout.mtp is not None else 0


def transformer_config(text_config, family: Family, layout: McoreLayout, sizes: ParallelSizes,
                       dtype: torch.dtype):
    import torch.nn.functional as F
    from megatron.core.transformer import TransformerConfig

    moe = family.has_moe_layers(text_config)
    settings = dict(
        num_layers=text_config.num_hidden_layers, hidden_size=text_config.hidden_size,
        num_attention_heads=text_config.num_attention_heads, num_query_groups=text_config.num_key_value_heads,
        kv_channels=getattr(text_config, "head_dim", None)
        or text_config.hidden_size // text_config.num_attention_heads,
        ffn_hidden_size=getattr(text_config, "intermediate_size", None), gated_linear_unit=True,
        activation_func=F.silu, normalization="RMSNorm", layernorm_epsilon=text_config.rms_norm_eps,
        qk_layernorm=layout.layer.q_norm is not None, add_bias_linear=False, add_qkv_bias=layout.qkv_bias,
        hidden_dropout=0.0, attention_dropout=0.0, params_dtype=dtype, pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
        use_cpu_initialization=True, perform_initialization=False,
        bias_activation_fusion=False, masked_softmax_fusion=False, persist_layer_norm=False,
        bias_dropout_fusion=False, apply_rope_fusion=False, gradient_accumulation_fusion=False,
        mrope_section=list(rope_parameters(text_config)["mrope_section"]),
        tensor_model_parallel_size=sizes.tensor, pipeline_model_parallel_size=sizes.pipeline,
        expert_model_parallel_size=sizes.expert, expert_tensor_parallel_size=sizes.expert_tensor,
        sequence_parallel=False,
    )
    if layout.gated_attention:
        settings.update(attention_output_gate=True)
    if layout.linear_attention is not None:
        settings.update(
            experimental_attention_variant="gated_delta_net",
            linear_attention_freq=[int(kind.attention == "linear") for kind in family.decoder_kinds(text_config)],
            linear_conv_kernel_dim=text_config.linear_conv_kernel_dim,
            linear_key_head_dim=text_config.linear_key_head_dim,
            linear_value_head_dim=text_config.linear_value_head_dim,
            linear_num_key_heads=text_config.linear_num_key_heads,
            linear_num_value_heads=text_config.linear_num_value_heads)
    mtp = mtp_layers(text_config, layout)
    if mtp:
        settings.update(mtp_num_layers=mtp)
    if layout.shared_expert is not None and moe:
        settings.update(moe_shared_expert_intermediate_size=text_config.shared_expert_intermediate_size,
                        moe_shared_expert_gate=True)
    if moe:
        settings.update(
            num_moe_experts=text_config.num_experts, moe_router_topk=text_config.num_experts_per_tok,
            moe_ffn_hidden_size=text_config.moe_intermediate_size, moe_grouped_gemm=False,
            moe_token_dispatcher_type="allgather", moe_router_load_balancing_type="none", moe_aux_loss_coeff=0.0,
            moe_router_pre_softmax=False, moe_router_score_function="softmax", moe_permute_fusion=False,
            moe_router_dtype="fp32")
    return TransformerConfig(**settings)
