"""Softmax attention for Megatron-Core's local layer spec that keeps packed samples apart.

Megatron-Core 0.16.1's own local core attention refuses packed sequences (`PackedSeqParams`, the `thd` format
that carries each row's sample boundaries as `cu_seqlens`); TransformerEngine's is the one that takes them. This
module is the local spec's `core_attention` instead: causal attention within each sample of a packed row (`vlft
sft`'s: torch's varlen FlashAttention on CUDA, a block-diagonal mask on CPU; no host read), and plain causal
attention over an unpacked [s, b] batch. The layer around it (q/k/v projections, rotary embedding with per-token
mRoPE positions, output gate, output projection) stays Megatron-Core's."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vlft.train.attention import samplewise_attention


def packed_core_attention_class():
    from megatron.core.transformer.module import MegatronModule

    class PackedCoreAttention(MegatronModule):
        def __init__(self, config, layer_number: int, attn_mask_type, attention_type, attention_dropout=None,
                     softmax_scale: float | None = None, cp_comm_type=None, pg_collection=None, **kwargs):
            super().__init__(config=config)
            from megatron.core import parallel_state

            tp = pg_collection.tp.size() if pg_collection is not None else (
                parallel_state.get_tensor_model_parallel_world_size())
            self.heads = config.num_attention_heads // tp
            self.groups = config.num_query_groups // tp
            self.scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)
            if config.attention_dropout:
                raise ValueError("PackedCoreAttention has no attention dropout (vlft trains with 0)")

        def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            """q [s, b, heads, d], k / v [s, b, groups, d] -> [s, b, heads, d], causal."""
            q, k, v = (x.permute(1, 2, 0, 3) for x in (q, k, v))
            repeat = self.heads // self.groups
            if repeat > 1:
                k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale).permute(2, 0, 1, 3)

        def forward(self, query, key, value, attention_mask=None, attn_mask_type=None, attention_bias=None,
                    packed_seq_params=None):
            if packed_seq_params is None or packed_seq_params.qkv_format != "thd":
                out = self._attend(query, key, value)  # [s, b, heads, d]
                return out.reshape(out.shape[0], out.shape[1], -1)
            # thd: [t, heads, d] for the whole packed row; each sample attends within itself
            params = packed_seq_params
            out = samplewise_attention(query, key, value, params.cu_seqlens_q, params.cu_seqlens_kv,
                                       params.max_seqlen_q, params.max_seqlen_kv, causal=True, scale=self.scale)
            return out.reshape(out.shape[0], -1)  # [t, heads * d]; the layer makes it [t, 1, h]

    return PackedCoreAttention
