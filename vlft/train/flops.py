"""Training FLOPs for MFU, as issue 5 defines it, counted per decoder layer kind (the family's
decoder_kinds): 6 x LLM parameters per token (forward + backward; per layer its softmax- or
linear-attention projections and its dense or MoE MLP), plus the linear-attention layers' own core (3 x
its forward FLOPs per token), plus the softmax-attention layers' causal attention (6 x n^2 x heads x
head_dim per layer for a sample of n tokens: QK^T and PV over the n^2/2 pairs a causal kernel computes,
forward and backward), plus the ViT's forward (2 x its parameters per patch, 4 patches per merged vision
token). Left out: the ViT's own attention (a few percent of the ViT forward at 448x448) and, with gradient
checkpointing, the recomputed forward (the usual convention: MFU counts the model's FLOPs, not the
recomputation)."""

from __future__ import annotations

from vlft.families.base import Family

LINEAR_ATTENTION_CHUNK = 64  # fla's and transformers' chunk size for the gated delta rule

# Dense bf16 peaks (datasheets), by a substring of torch.cuda.get_device_name().
BF16_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def _head_dim(t) -> int:
    return getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads


def softmax_attention_parameters(t) -> int:
    """q, k, v, o projections of one softmax-attention layer (Qwen3.5's q_proj also emits an output gate)."""
    heads, kv, head_dim = t.num_attention_heads, t.num_key_value_heads, _head_dim(t)
    gate = 2 if getattr(t, "attn_output_gate", False) else 1
    return t.hidden_size * head_dim * (gate * heads + 2 * kv) + heads * head_dim * t.hidden_size


def linear_attention_parameters(t) -> int:
    """Projections of one Gated DeltaNet layer: in_proj_qkv, in_proj_z, in_proj_b, in_proj_a, out_proj."""
    key_dim = t.linear_num_key_heads * t.linear_key_head_dim
    value_dim = t.linear_num_value_heads * t.linear_value_head_dim
    return t.hidden_size * (2 * key_dim + 2 * value_dim + 2 * t.linear_num_value_heads) + value_dim * t.hidden_size


def mlp_parameters(t, moe: bool) -> int:
    """The MLP's active parameters per token: dense SwiGLU, or the router, the top-k experts and a shared
    expert with its gate (Qwen3.5-MoE)."""
    if not moe:
        return 3 * t.hidden_size * t.intermediate_size
    active = t.hidden_size * t.num_experts + 3 * t.hidden_size * t.moe_intermediate_size * t.num_experts_per_tok
    shared = getattr(t, "shared_expert_intermediate_size", 0) or 0
    return active + (3 * t.hidden_size * shared + t.hidden_size if shared else 0)


def llm_parameters(family: Family, text_config) -> int:
    """Parameters of the decoder's projections and the output head (active ones for MoE), layer by layer."""
    t = text_config
    total = t.vocab_size * t.hidden_size
    for kind in family.decoder_kinds(t):
        mixer = softmax_attention_parameters(t) if kind.attention == "softmax" else linear_attention_parameters(t)
        total += mixer + mlp_parameters(t, kind.moe)
    return total


def linear_attention_core_flops(family: Family, text_config) -> int:
    """Forward FLOPs per token of the linear-attention layers besides their projections: per value head, the
    chunked gated delta rule's state reads for queries and keys and its state update (3 x 2 x dk x dv) and the
    within-chunk scores and mixing (2 x 64 x (dk + dv)); and the short depthwise convolution."""
    t = text_config
    layers = sum(kind.attention == "linear" for kind in family.decoder_kinds(t))
    if not layers:
        return 0
    dk, dv, heads = t.linear_key_head_dim, t.linear_value_head_dim, t.linear_num_value_heads
    conv_dim = 2 * t.linear_num_key_heads * dk + heads * dv
    return layers * (heads * (6 * dk * dv + 2 * LINEAR_ATTENTION_CHUNK * (dk + dv)) +
                     2 * t.linear_conv_kernel_dim * conv_dim)


def vit_parameters(family: Family, vision_config) -> int:
    """Parameters of the vision blocks (attention + MLP)."""
    v = vision_config
    hidden = getattr(v, "embed_dim", None) or v.hidden_size
    intermediate = getattr(v, "intermediate_size", None) or hidden * getattr(v, "mlp_ratio", 4)
    return v.depth * (4 * hidden * hidden + family.vit_mlp_matrices * hidden * intermediate)


def attention_flops_per_square(family: Family, text_config) -> int:
    """Training FLOPs of the LLM's causal softmax attention per n^2 of a sample of n tokens, summed over its
    softmax-attention layers."""
    t = text_config
    softmax = sum(kind.attention == "softmax" for kind in family.decoder_kinds(t))
    return 6 * t.num_attention_heads * _head_dim(t) * softmax


def training_flops(family: Family, config, tokens: int, vision_tokens: int, square_sum: int = 0) -> float:
    """FLOPs of one training pass over `tokens` tokens of which `vision_tokens` are image/video tokens, in
    samples whose lengths squared sum to `square_sum` (sequence_square_sum)."""
    text, vision = config.text_config, config.vision_config
    merge = vision.spatial_merge_size ** 2
    per_token = 6 * llm_parameters(family, text) + 3 * linear_attention_core_flops(family, text)
    return per_token * tokens + 2 * vit_parameters(family, vision) * merge * vision_tokens + \
        attention_flops_per_square(family, text) * square_sum


def sequence_square_sum(inputs):
    """Sum of n^2 over the samples of a batch, on the batch's device (no host sync).

    Packed / padding-free rows: text positions (position_ids row 0) restart at 0 per sample, and
    sum(2p + 1 for p in range(n)) = n^2; a fixed-shape row's padding (`row_padding` tokens at its end, in
    segments of their own: collator.py) is no sample and is left out. Padded batches: each row's attention_mask
    sum, squared.
    """
    mask = inputs.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        return (mask.sum(-1) ** 2).sum()
    positions = inputs.get("position_ids")
    if positions is None:
        return inputs["input_ids"].shape[-1] ** 2 * inputs["input_ids"].shape[0]
    text = positions.reshape(-1, positions.shape[-1])[0]
    return (2 * text[:text.shape[0] - inputs.get("row_padding", 0)] + 1).sum()


def device_peak_flops(device_name: str) -> float | None:
    """bf16 dense peak of a known GPU, else None (no MFU is logged)."""
    return next((peak for key, peak in BF16_PEAK_FLOPS.items() if key in device_name), None)
