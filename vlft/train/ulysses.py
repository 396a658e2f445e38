"""Ulysses attention (`--sequence_parallel_size N`, DeepSpeed-Ulysses' scheme): each of the N ranks of a sequence
group holds 1/N of a packed row's tokens; around the attention one all-to-all trades that for the whole row and 1/N
of the heads, the kernel runs on whole samples (the row's own boundaries), and a second all-to-all trades back.

Pure layout functions (`heads_chunks` ... `heads_from_chunks`, unit tested by exchanging the chunks by hand), the
all-to-all itself (torch.distributed's `all_to_all_single`, its gradient the reverse exchange), and the attention
function registered with transformers' AttentionInterface under SEQUENCE_PARALLEL_ATTENTION for the language model's
layers only (the vision tower keeps its own: every rank encodes the row's images whole, sequence_parallel.py).
"""

from __future__ import annotations

from math import gcd

import torch
import torch.distributed as dist
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

from vlft.train.attention import torch_varlen_attention

SEQUENCE_PARALLEL_ATTENTION = "vlft_ulysses"


def heads_chunks(shard: torch.Tensor, size: int) -> torch.Tensor:
    """(S, H, D) tokens of one shard -> (size, S, H/size, D): chunk j (heads j*H/size onwards) goes to rank j."""
    tokens, heads, dim = shard.shape
    return shard.reshape(tokens, size, heads // size, dim).transpose(0, 1).contiguous()


def sequence_from_chunks(received: torch.Tensor) -> torch.Tensor:
    """(size, S, h, D) received from ranks 0..size-1 (their shards of this rank's heads) -> (size*S, h, D)."""
    size, tokens, heads, dim = received.shape
    return received.reshape(size * tokens, heads, dim)


def sequence_chunks(row: torch.Tensor, size: int) -> torch.Tensor:
    """(T, h, D) whole row of this rank's heads -> (size, T/size, h, D): chunk j (shard j's tokens) goes to rank j."""
    tokens, heads, dim = row.shape
    return row.reshape(size, tokens // size, heads, dim).contiguous()


def heads_from_chunks(received: torch.Tensor) -> torch.Tensor:
    """(size, S, h, D) received from ranks 0..size-1 (this shard's tokens of their heads) -> (S, size*h, D)."""
    size, tokens, heads, dim = received.shape
    return received.transpose(0, 1).reshape(tokens, size * heads, dim)


def kv_repeats(kv_heads: int, query_heads: int, size: int) -> int:
    """How many times each KV head is repeated so that `size` ranks get whole KV heads that still serve their
    query heads in order (1 when the KV heads divide among the ranks already)."""
    repeats = size // gcd(kv_heads, size)
    groups = query_heads // kv_heads
    return repeats if groups % repeats == 0 else groups


def _exchange(chunks: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    received = torch.empty_like(chunks)
    dist.all_to_all_single(received, chunks, group=group)
    return received


class _SequenceToHeads(torch.autograd.Function):
    """(S, H, D) shard -> (T, H/size, D) whole row of this rank's heads; the gradient goes back the reverse way."""

    @staticmethod
    def forward(ctx, shard: torch.Tensor, group: dist.ProcessGroup, size: int) -> torch.Tensor:
        ctx.group, ctx.size = group, size
        return sequence_from_chunks(_exchange(heads_chunks(shard, size), group))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return heads_from_chunks(_exchange(sequence_chunks(grad, ctx.size), ctx.group)), None, None


class _HeadsToSequence(torch.autograd.Function):
    """(T, h, D) whole row of this rank's heads -> (S, size*h, D) shard of all heads; gradient the reverse way."""

    @staticmethod
    def forward(ctx, row: torch.Tensor, group: dist.ProcessGroup, size: int) -> torch.Tensor:
        ctx.group, ctx.size = group, size
        return heads_from_chunks(_exchange(sequence_chunks(row, size), group))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return sequence_from_chunks(_exchange(heads_chunks(grad, ctx.size), ctx.group)), None, None


@torch.compiler.disable  # collectives stay outside compiled graphs (a break per attention call)
def sequence_to_heads(shard: torch.Tensor, group: dist.ProcessGroup, size: int) -> torch.Tensor:
    """All-to-all: this rank's tokens of all heads -> the whole row's tokens of its 1/size of the heads."""
    return _SequenceToHeads.apply(shard, group, size)


@torch.compiler.disable
def heads_to_sequence(row: torch.Tensor, group: dist.ProcessGroup, size: int) -> torch.Tensor:
    """All-to-all, the reverse of sequence_to_heads."""
    return _HeadsToSequence.apply(row, group, size)


class UlyssesAttention:
    """The attention function of the language model's layers under sequence parallelism: (1, H, S, D) shards of
    q, k, v in, all-to-all to (T, H/size, D), vlft's varlen attention over the whole row's samples (the
    boundaries the language model's hook passes: those of the whole row), all-to-all back to (1, S, H, D)."""

    def __init__(self, group: dist.ProcessGroup, size: int):
        self.group, self.size = group, size

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        if query.shape[0] != 1:
            raise ValueError(f"{SEQUENCE_PARALLEL_ATTENTION} expects one packed row (batch 1), got {query.shape[0]}")
        repeats = kv_repeats(key.shape[1], query.shape[1], self.size)
        if repeats > 1:  # fewer KV heads than ranks: each rank needs whole KV heads for its query heads
            key, value = key.repeat_interleave(repeats, dim=1), value.repeat_interleave(repeats, dim=1)
        q, k, v = (sequence_to_heads(t[0].transpose(0, 1), self.group, self.size).transpose(0, 1)[None]
                   for t in (query, key, value))  # (1, H/size, T, D)
        out, _ = torch_varlen_attention(module, q, k, v, attention_mask, **kwargs)  # (1, T, H/size, D)
        return heads_to_sequence(out[0], self.group, self.size)[None], None


def register_ulysses_attention(group: dist.ProcessGroup, size: int) -> str:
    """Register UlyssesAttention for this process's sequence group (and, like FlashAttention, no mask)."""
    AttentionInterface.register(SEQUENCE_PARALLEL_ATTENTION, UlyssesAttention(group, size))
    ALL_MASK_ATTENTION_FUNCTIONS.register(SEQUENCE_PARALLEL_ATTENTION, flash_attention_mask)
    return SEQUENCE_PARALLEL_ATTENTION
