"""Padding-free attention through PyTorch's own varlen FlashAttention (`torch.nn.attention.varlen`),
registered with transformers' AttentionInterface, so packed training needs no flash-attn build.

Sample boundaries come from what the models already pass to attention: the LLM gives text
`position_ids` that restart at 0 for every packed sample; the vision tower calls attention once per
image (the name holds no "flash", which would make transformers look for a flash-attn kernel). On CPU
the same function runs exact per-sample sdpa, so the boundary logic is tested in CI.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

ATTENTION_NAME = "torch_varlen"


def boundaries_from_positions(position_ids: torch.Tensor, length: int) -> torch.Tensor:
    """cu_seqlens (int32) of the samples in a row whose text positions restart at 0 per sample."""
    starts = (position_ids.reshape(-1)[:length] == 0).nonzero().reshape(-1)
    if starts.numel() == 0 or starts[0] != 0:
        starts = torch.cat([starts.new_zeros(1), starts])
    return torch.cat([starts, starts.new_tensor([length])]).to(torch.int32)


class _RowBoundaries:
    """cu_seqlens and the longest sample of the packed row being run, computed once per forward.

    Every decoder layer (and its recomputation under gradient checkpointing) receives the same
    `position_ids` tensor; finding the restarts reads them back to the host, so doing it once instead of
    once per layer removes two host syncs per layer (measured on an H100: the GPU idled between layers).
    """

    def __init__(self):
        self.position_ids, self.length, self.value = None, None, None

    def __call__(self, position_ids: torch.Tensor, length: int) -> tuple[torch.Tensor, int]:
        if position_ids is not self.position_ids or length != self.length:
            cu_seqlens = boundaries_from_positions(position_ids, length).to(position_ids.device)
            longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
            self.position_ids, self.length, self.value = position_ids, length, (cu_seqlens, longest)
        return self.value


_row_boundaries = _RowBoundaries()
_whole_sequence: dict[tuple[int, torch.device], torch.Tensor] = {}


def _one_sequence(length: int, device: torch.device) -> torch.Tensor:
    """cu_seqlens of a call that is one sequence (the vision tower calls attention once per image)."""
    key = (length, device)
    if key not in _whole_sequence:
        _whole_sequence[key] = torch.tensor([0, length], dtype=torch.int32, device=device)
    return _whole_sequence[key]


def _kernel_supports_gqa() -> bool:
    from torch.nn.attention.varlen import varlen_attn

    return "enable_gqa" in inspect.signature(varlen_attn).parameters  # torch >= 2.13


def _segments_sdpa(q, k, v, cu_seqlens, causal: bool, scale: float | None) -> torch.Tensor:
    """Reference path (CPU): exact sdpa on each sample separately. q, k, v: (T, H, D)."""
    outputs = []
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))
        outputs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scale).transpose(0, 1))
    return torch.cat(outputs)


def torch_varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, is_causal=None,
                           cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None, max_length_k=None,
                           position_ids=None, **kwargs):
    """Attention over (1, H, T, D) packed inputs, each sample attending only to itself."""
    if query.shape[0] != 1:
        raise ValueError(f"{ATTENTION_NAME} expects one packed row (batch 1), got batch {query.shape[0]}; "
                         "use --padding_free true")
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    length = query.shape[2]
    if cu_seq_lens_q is None:
        if position_ids is not None:
            cu_seq_lens_q, max_length_q = _row_boundaries(position_ids, length)
        else:
            cu_seq_lens_q, max_length_q = _one_sequence(length, query.device), length
        cu_seq_lens_k, max_length_k = cu_seq_lens_q, max_length_q
    if cu_seq_lens_k is None:
        cu_seq_lens_k, max_length_k = cu_seq_lens_q, max_length_q
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, H, D)
    groups = q.shape[1] // k.shape[1]
    if not q.is_cuda:
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return _segments_sdpa(q, k, v, cu_seq_lens_q, causal, scaling).unsqueeze(0), None
    from torch.nn.attention.varlen import varlen_attn

    extra = {}
    if groups > 1:
        if _kernel_supports_gqa():
            extra["enable_gqa"] = True
        else:  # torch 2.11/2.12: repeat the KV heads
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = varlen_attn(q.contiguous(), k.contiguous(), v.contiguous(), cu_seq_lens_q, cu_seq_lens_k,
                      int(max_length_q), int(max_length_k), scale=scaling,
                      window_size=(-1, 0) if causal else (-1, -1), **extra)
    return out.unsqueeze(0), None  # (1, T, H, D), as transformers' attention functions return


def register_varlen_attention() -> str:
    """Register the varlen attention (and its mask: none, like FlashAttention's) under ATTENTION_NAME."""
    AttentionInterface.register(ATTENTION_NAME, torch_varlen_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, flash_attention_mask)
    return ATTENTION_NAME
