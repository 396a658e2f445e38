"""Ulysses attention (`--sequence_parallel_size N`, DeepSpeed-Ulysses' scheme): each of the N ranks of a sequence
group holds 1/N of a packed row's tokens; around the attention one all-to-all trades that for the whole row and 1/N
of the heads, the kernel runs on whole samples (the row's own boundaries), and a second all-to-all trades back.

Pure layout functions (`heads_chunks` ... `heads_from_chunks`, unit tested by exchanging the chunks by hand), the
all-to-all itself (torch.distributed's functional `all_to_all_single`, its gradient the reverse exchange; dynamo
traces it into compiled layers), and the attention function registered with transformers' AttentionInterface under
SEQUENCE_PARALLEL_ATTENTION for the language model's layers only (the vision tower keeps its own: every rank encodes
the row's images whole, sequence_parallel.py).

Qwen3.5's Gated DeltaNet layers (linear_attention.py) take the same exchange through UlyssesLinearAttention: their
projections run on the rank's tokens; their depthwise convolution and delta rule, per head (channel), on the whole
row of the rank's 1/N of the heads: its channels of the convolution's [q | k | v] input (`linear_attention_channels`),
with the convolution's weights of those channels, and its heads' decay and beta.
"""

from __future__ import annotations

from math import gcd

import torch
import torch.distributed as dist
from torch.distributed._functional_collectives import all_to_all_single_autograd
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
    """(size, ...) chunks: chunk j to rank j of the group, and rank j's chunk for this rank back in its place.
    torch.distributed's functional all-to-all (a private module, the one DTensor and torchtitan build on): its
    gradient is the reverse exchange, and dynamo traces it into a
    compiled decoder layer's graph (--torch_compile) without a break, the layer's gradient checkpoint included
    (whose recomputation in the backward graph repeats the exchange, as in eager mode: every rank of the group
    runs the same graph, so their exchanges stay paired)."""
    return all_to_all_single_autograd(chunks, None, None, group)


def sequence_to_heads(shard: torch.Tensor, group: dist.ProcessGroup, size: int) -> torch.Tensor:
    """All-to-all: (S, H, D) this rank's tokens of all heads -> (T, H/size, D) the whole row's tokens of its
    1/size of the heads (the gradient goes back the reverse way)."""
    return sequence_from_chunks(_exchange(heads_chunks(shard, size), group))


def heads_to_sequence(row: torch.Tensor, group: dist.ProcessGroup, size: int) -> torch.Tensor:
    """All-to-all, the reverse of sequence_to_heads: (T, h, D) -> (S, size*h, D)."""
    return heads_from_chunks(_exchange(sequence_chunks(row, size), group))


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


def linear_attention_channels(k_heads: int, head_k_dim: int, v_heads: int, head_v_dim: int, size: int,
                              rank: int) -> torch.Tensor:
    """Rank's channels of a Gated DeltaNet's [q | k | v] convolution input (q and k `k_heads` x `head_k_dim` wide
    each, v `v_heads` x `head_v_dim`): its 1/size of the q, of the k and of the v heads, in that order. Rank r's
    value heads are grouped with its key heads as on one process (each key head serves v_heads / k_heads
    consecutive value heads), so both head counts must divide by size."""
    key_dim = k_heads * head_k_dim
    key_share, value_share = key_dim // size, v_heads * head_v_dim // size
    query = torch.arange(rank * key_share, (rank + 1) * key_share)
    value = torch.arange(rank * value_share, (rank + 1) * value_share)
    return torch.cat([query, key_dim + query, 2 * key_dim + value])


class UlyssesLinearAttention:
    """A Gated DeltaNet layer's all-to-alls (see the module docstring): `to_heads` before its convolution,
    `to_sequence` after its delta rule; `conv_channels` the convolution's weights of this rank's channels."""

    def __init__(self, group: dist.ProcessGroup, size: int, rank: int, k_heads: int, head_k_dim: int, v_heads: int,
                 head_v_dim: int):
        if k_heads % size or v_heads % size:
            raise ValueError(f"sequence parallelism over {size} ranks: the linear attention's {k_heads} key and "
                             f"{v_heads} value heads must both divide among them")
        self.group, self.size = group, size
        every = [linear_attention_channels(k_heads, head_k_dim, v_heads, head_v_dim, size, r) for r in range(size)]
        self.channels = every[rank]  # what this rank convolves
        self.rank_major = torch.cat(every)  # every channel, grouped by the rank it goes to
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _indices(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on_device:
            self._on_device[device] = self.channels.to(device), self.rank_major.to(device)
        return self._on_device[device]

    def to_heads(self, mixed_qkv: torch.Tensor, g: torch.Tensor,
                 beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(1, S, C) projected q|k|v, (1, S, Hv) decay and beta of this rank's tokens -> (1, T, C/size),
        (1, T, Hv/size) and (1, T, Hv/size): the whole row of this rank's heads."""
        tokens = mixed_qkv.shape[1]
        grouped = mixed_qkv[0].index_select(-1, self._indices(mixed_qkv.device)[1]).view(tokens, self.size, -1)
        mixed_qkv = sequence_to_heads(grouped, self.group, self.size).flatten(1)[None]
        # decay (float32) and beta in one exchange: beta's float32 round trip is exact
        gates = sequence_to_heads(torch.stack([g[0], beta[0].float()], dim=-1), self.group, self.size)
        return mixed_qkv, gates[None, ..., 0], gates[None, ..., 1].to(beta.dtype)

    def to_sequence(self, core: torch.Tensor) -> torch.Tensor:
        """(1, T, Hv/size, dv) delta-rule output of this rank's heads -> (1, S, Hv, dv) of this rank's tokens."""
        return heads_to_sequence(core[0], self.group, self.size)[None]

    def conv_channels(self, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The depthwise convolution's (C, width) weight and (C,) bias cut to this rank's channels (index_select:
        their gradients land on those channels of the whole parameters)."""
        channels = self._indices(weight.device)[0]
        return weight.index_select(0, channels), None if bias is None else bias.index_select(0, channels)
