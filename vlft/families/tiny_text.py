"""The text settings every built-in tiny model shares (2 small layers unless a family says otherwise)."""

from vlft.families.base import TokenizerSpec


# The tiny MoE models' experts (each family adds its own extras: a sparse step, a shared expert).
TINY_EXPERTS = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)


def tiny_text(vocab: TokenizerSpec, *, rope_theta: float, mrope_section: list[int], **extra) -> dict:
    """A small text config on the real vocabulary (so tests use real token ids)."""
    endoftext, im_end = vocab.id_of("<|endoftext|>"), vocab.id_of("<|im_end|>")
    rope = {"rope_type": "default", "rope_theta": rope_theta, "mrope_section": mrope_section}
    for key in ("mrope_interleaved", "partial_rotary_factor"):
        if key in extra:
            rope[key] = extra.pop(key)
    text = dict(vocab_size=vocab.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=32768,
                rms_norm_eps=1e-6, bos_token_id=endoftext, eos_token_id=im_end, pad_token_id=endoftext,
                # Real models use 0.02 at hidden 2048-5120; at hidden 64 that leaves logits within about +-1,
                # too flat to learn anything. 0.125 keeps the logit scale of a real model.
                initializer_range=0.125, rope_parameters=rope)
    text.update(extra)
    return text
