"""Training FLOPs for MFU, as issue 5 defines it: 6 x LLM parameters per token (forward + backward), plus
the LLM's causal attention (6 x n^2 x heads x head_dim per layer for a sample of n tokens: QK^T and PV
over the n^2/2 pairs a causal kernel computes, forward and backward), plus the ViT's forward (2 x its
parameters per patch, 4 patches per merged vision token). Left out: the ViT's own attention (a few
percent of the ViT forward at 448x448) and, with gradient checkpointing, the recomputed forward (the
usual convention: MFU counts the model's FLOPs, not the recomputation)."""

from __future__ import annotations

# Dense bf16 peaks (datasheets), by a substring of torch.cuda.get_device_name().
BF16_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def llm_parameters(text_config) -> int:
    """Parameters of the decoder's projections and the output head (active ones for MoE)."""
    t = text_config
    heads, kv = t.num_attention_heads, t.num_key_value_heads
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // heads
    attention = t.hidden_size * head_dim * (2 * heads + 2 * kv)
    experts = getattr(t, "num_experts_per_tok", None)
    if experts:
        mlp = 3 * t.hidden_size * t.moe_intermediate_size * experts
    else:
        mlp = 3 * t.hidden_size * t.intermediate_size
    return t.num_hidden_layers * (attention + mlp) + t.vocab_size * t.hidden_size


def vit_parameters(vision_config) -> int:
    """Parameters of the vision blocks (attention + MLP)."""
    v = vision_config
    hidden = getattr(v, "embed_dim", None) or v.hidden_size
    intermediate = getattr(v, "intermediate_size", None) or hidden * getattr(v, "mlp_ratio", 4)
    mlp_matrices = 3 if v.model_type.startswith("qwen2_5") else 2  # Qwen2.5-VL's ViT MLP is gated (SwiGLU)
    return v.depth * (4 * hidden * hidden + mlp_matrices * hidden * intermediate)


def attention_flops_per_square(text_config) -> int:
    """Training FLOPs of the LLM's causal attention per n^2 of a sample of n tokens, summed over layers."""
    t = text_config
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    return 6 * t.num_attention_heads * head_dim * t.num_hidden_layers


def training_flops(config, tokens: int, vision_tokens: int, square_sum: int = 0) -> float:
    """FLOPs of one training pass over `tokens` tokens of which `vision_tokens` are image/video tokens, in
    samples whose lengths squared sum to `square_sum` (sequence_square_sum)."""
    merge = config.vision_config.spatial_merge_size ** 2
    return 6 * llm_parameters(config.text_config) * tokens + 2 * vit_parameters(config.vision_config) * merge * \
        vision_tokens + attention_flops_per_square(config.text_config) * square_sum


def sequence_square_sum(inputs):
    """Sum of n^2 over the samples of a batch, on the batch's device (no host sync).

    Packed / padding-free rows: text positions (position_ids row 0) restart at 0 per sample, and
    sum(2p + 1 for p in range(n)) = n^2; a fixed-shape row's padding segment (`row_padding`, collator.py) is
    no sample and is left out. Padded batches: each row's attention_mask sum, squared.
    """
    mask = inputs.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        return (mask.sum(-1) ** 2).sum()
    positions = inputs.get("position_ids")
    if positions is None:
        return inputs["input_ids"].shape[-1] ** 2 * inputs["input_ids"].shape[0]
    text = positions.reshape(-1, positions.shape[-1])[0]
    return (2 * text + 1).sum() - inputs.get("row_padding", 0) ** 2


def device_peak_flops(device_name: str) -> float | None:
    """bf16 dense peak of a known GPU, else None (no MFU is logged)."""
    return next((peak for key, peak in BF16_PEAK_FLOPS.items() if key in device_name), None)
