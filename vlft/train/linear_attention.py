"""Qwen3.5's Gated DeltaNet (the linear-attention layers of Qwen3.5 and Qwen3.5-MoE) made exact on packed rows.

transformers' layer (5.23) keeps the samples of a packed row apart only when `fla` is installed and the layer
gets `cu_seq_lens_q`, and even then its short causal convolution (kernel 4) reads up to 3 tokens of the
previous sample: `causal_conv1d_fn` is handed no boundaries. Without fla its torch fallback raises on
cu_seqlens, and without cu_seq_lens_q the recurrent state runs on from one sample into the next.

PackedGatedDeltaNet adopts the stock layer's modules and parameters under their own names (state_dict keys
and PEFT targets unchanged) and runs one of two kernel sets, named by the caller:
  "torch": exact on any device: the convolution vectorised with each tap masked at sample starts, the delta
           rule run per sample through transformers' own torch reference (a host loop over samples).
  "fla":   fla's varlen Triton kernels on CUDA: causal_conv1d and chunk_gated_delta_rule with cu_seqlens.
Training only: no cache, no decode step. Under sequence parallelism (`split_heads_over`) the kernels run on the
whole row of the rank's heads, between ulysses.py's all-to-alls.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.models.qwen3_5 import modeling_qwen3_5

from vlft.train.ulysses import UlyssesLinearAttention

KERNELS = ("torch", "fla")
ADOPTED = ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "conv1d", "A_log", "dt_bias", "norm", "out_proj")
SCALARS = ("num_k_heads", "num_v_heads", "head_k_dim", "head_v_dim", "key_dim", "value_dim", "conv_kernel_size",
           "activation", "layer_idx")


@functools.cache
def fla_refusal() -> str | None:
    """None when fla's kernels train here; else why not. fla is tried for real, forward and backward on a tiny
    packed row: fla 0.6.0 refuses the gated delta rule's backward on Hopper GPUs with Triton >= 3.4 and < 3.7.1
    (torch 2.11 and 2.12 ship Triton 3.6), whose compiler gives wrong dg / dbeta there (fla#640), unless
    tilelang is installed; a refusal found here stops a run before anything loads instead of at its first
    backward."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        from fla.modules.causal_conv1d import causal_conv1d
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except ImportError as e:
        return f"fla is not installed ({e.msg}); pip install flash-linear-attention"
    generator = torch.Generator(device="cuda").manual_seed(0)
    def rand(*shape):  # noqa: E306
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=generator).requires_grad_()
    x, weight = rand(1, 96, 64), rand(64, 4)
    beta, g = rand(1, 96, 2), rand(1, 96, 2)
    cu_seqlens = torch.tensor([0, 40, 96], dtype=torch.int32, device="cuda")
    try:
        mixed, _ = causal_conv1d(x, weight=weight, activation="silu", cu_seqlens=cu_seqlens)
        q, k, v = mixed.view(1, 96, 2, 32).split([8, 8, 16], dim=-1)
        out, _ = chunk_gated_delta_rule(q.contiguous(), k.contiguous(), v.contiguous(), g=F.logsigmoid(g.float()),
                                        beta=beta.sigmoid(), cu_seqlens=cu_seqlens, use_qk_l2norm_in_kernel=True)
        out.float().sum().backward()
    except Exception as e:  # fla's own refusals (RuntimeError), Triton's compile errors, fla's asserts
        first_line = (str(e).splitlines() or [""])[0]
        return f"fla {_fla_version()} does not train on this GPU: {type(e).__name__}: {first_line}"
    return None


def _fla_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fla-core")
    except PackageNotFoundError:
        return "(unknown version)"


def fla_available(dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether fla's kernels train here in `dtype` (fla_refusal and fla_dtype_refusal say why not)."""
    return fla_refusal() is None and fla_dtype_refusal(dtype) is None


def fla_dtype_refusal(dtype: torch.dtype) -> str | None:
    """None when fla's gradients hold in `dtype` on this GPU; else why not. Measured on an H100 (fla 0.6.0 with
    tilelang 0.1.15, Triton 3.6; tests/gpu/test_linear_attention_gpu.py): a float32 packed layer gets the gate's
    gradients wrong (A_log, dt_bias and in_proj_a 0.17-0.26 RMS off the exact path) while bfloat16 holds
    (<= 0.03), so float32 on Hopper trains with the exact torch kernels instead."""
    if dtype == torch.float32 and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9:
        return (f"fla {_fla_version()}'s float32 gated delta rule gives wrong gate gradients on Hopper GPUs "
                "(measured in tests/gpu); train in bfloat16 (--torch_dtype bfloat16)")
    return None


def replace_linear_attention(layers: nn.ModuleList, attribute: str, kernels: str) -> int:
    """Swaps each layer's stock Gated DeltaNet (`layer.<attribute>`) for a PackedGatedDeltaNet; returns how many."""
    replaced = 0
    for layer in layers:
        stock = getattr(layer, attribute, None)
        if stock is None or isinstance(stock, PackedGatedDeltaNet):
            continue
        setattr(layer, attribute, PackedGatedDeltaNet(stock, kernels))
        replaced += 1
    return replaced


class PackedGatedDeltaNet(nn.Module):
    """Qwen3.5's Gated DeltaNet for training on packed rows: the stock layer's weights, boundary-aware kernels."""

    def __init__(self, stock: nn.Module, kernels: str):
        super().__init__()
        if kernels not in KERNELS:
            raise ValueError(f"linear-attention kernels must be one of {KERNELS}, got {kernels!r}")
        # Adopted in the stock layer's own order, so state_dict keys and their order stay as they were; an
        # unknown part (a newer transformers) would be ignored by this forward, so it is refused instead.
        parts = [*stock.named_parameters(recurse=False), *stock.named_buffers(recurse=False),
                 *stock.named_children()]
        if sorted(name for name, _ in parts) != sorted(ADOPTED):
            raise ValueError(f"{type(stock).__name__} (layer {getattr(stock, 'layer_idx', '?')}) has parts "
                             f"{sorted(name for name, _ in parts)}; PackedGatedDeltaNet knows {sorted(ADOPTED)}")
        for name, part in parts:
            setattr(self, name, part)
        for name in SCALARS:
            setattr(self, name, getattr(stock, name))
        if kernels == "fla" and self.activation not in ("silu", "swish"):
            raise ValueError(f"layer {self.layer_idx}: fla's causal_conv1d has no {self.activation!r} activation")
        self.kernels = kernels
        self.ulysses: UlyssesLinearAttention | None = None  # set by split_heads_over

    def extra_repr(self) -> str:
        split = f", heads split over {self.ulysses.size} ranks" if self.ulysses is not None else ""
        return f"layer_idx={self.layer_idx}, kernels={self.kernels!r}{split}"

    def split_heads_over(self, group: dist.ProcessGroup, size: int, rank: int) -> None:
        """Sequence parallelism (sequence_parallel.py): each forward gets rank's 1/size of a packed row's tokens
        and the whole row's cu_seq_lens_q; the convolution and the delta rule run on the whole row of rank's 1/size
        of the heads (ulysses.py)."""
        self.ulysses = UlyssesLinearAttention(group, size, rank, self.num_k_heads, self.head_k_dim, self.num_v_heads,
                                              self.head_v_dim)

    def forward(self, hidden_states: torch.Tensor, cache_params=None, attention_mask: torch.Tensor | None = None,
                cu_seq_lens_q: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Training forward of whole rows; `cu_seq_lens_q` (int32, one packed row) marks the row's samples."""
        if cache_params is not None:
            raise ValueError(f"layer {self.layer_idx}: PackedGatedDeltaNet is for training and takes no cache "
                             "(use_cache=False); generate with the stock transformers layer")
        if attention_mask is not None:  # 2-D padding mask: padded tokens enter as zeros, as in the stock layer
            hidden_states = (hidden_states * attention_mask[:, :, None]).to(hidden_states.dtype)
        batch, length, _ = hidden_states.shape
        if self.ulysses is not None and cu_seq_lens_q is None:
            raise ValueError(f"layer {self.layer_idx}: under sequence parallelism the layer needs the whole row's "
                             "cu_seq_lens_q (SequenceParallel's hook on the language model gives them)")
        cu_seqlens = row_boundaries(cu_seq_lens_q, batch, length, hidden_states.device)
        # The rows of a batch become the samples of one row, so both kernel sets see a single packed row.
        flat = hidden_states.reshape(1, batch * length, -1)
        mixed_qkv = self.in_proj_qkv(flat)
        z = self.in_proj_z(flat)
        beta = self.in_proj_b(flat).sigmoid()
        # float32 as in the stock layer: in half precision exp(A_log) can overflow to -inf decay
        g = -self.A_log.float().exp() * F.softplus(self.in_proj_a(flat).float() + self.dt_bias)
        conv_weight, conv_bias = self.conv1d.weight.squeeze(1), self.conv1d.bias
        if self.ulysses is not None:  # this rank's tokens of all heads -> the whole row of its heads
            mixed_qkv, g, beta = self.ulysses.to_heads(mixed_qkv, g, beta)
            conv_weight, conv_bias = self.ulysses.conv_channels(conv_weight, conv_bias)
        run = self._fla_kernels if self.kernels == "fla" else self._torch_kernels
        core = run(mixed_qkv, conv_weight, conv_bias, g, beta, cu_seqlens)
        if self.ulysses is not None:
            core = self.ulysses.to_sequence(core)
        core = self.norm(core.reshape(-1, self.head_v_dim), z.reshape(-1, self.head_v_dim))
        return self.out_proj(core.reshape(batch, length, -1))

    def _split_heads(self, mixed_qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """query, key, value as (1, time, heads, head_dim) from the convolved projection (of all heads, or of a
        rank's share of them under sequence parallelism)."""
        share = (2 * self.key_dim + self.value_dim) // mixed_qkv.shape[-1]
        key_dim, value_dim = self.key_dim // share, self.value_dim // share
        query, key, value = torch.split(mixed_qkv, [key_dim, key_dim, value_dim], dim=-1)
        time = mixed_qkv.shape[:2]
        return (query.reshape(*time, -1, self.head_k_dim), key.reshape(*time, -1, self.head_k_dim),
                value.reshape(*time, -1, self.head_v_dim))

    def _torch_kernels(self, mixed_qkv, conv_weight, conv_bias, g, beta, cu_seqlens) -> torch.Tensor:
        """Exact on any device: masked-tap convolution, then the reference delta rule sample by sample."""
        bounds = cu_seqlens.tolist()
        if bounds[0] != 0 or bounds[-1] != mixed_qkv.shape[1] or any(b > e for b, e in zip(bounds, bounds[1:])):
            raise ValueError(f"layer {self.layer_idx}: cu_seq_lens_q {bounds} do not cover the row's "
                             f"{mixed_qkv.shape[1]} tokens")
        mixed_qkv = packed_causal_conv1d(mixed_qkv, conv_weight, conv_bias, cu_seqlens, self.activation)
        query, key, value = self._split_heads(mixed_qkv)
        return delta_rule_per_sample(query, key, value, g, beta, bounds)

    def _fla_kernels(self, mixed_qkv, conv_weight, conv_bias, g, beta, cu_seqlens) -> torch.Tensor:
        """fla's varlen kernels (CUDA, Triton); imported here so that nothing else needs fla."""
        from fla.modules.causal_conv1d import causal_conv1d
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule

        # fla's convolution takes (batch, time, channels) and weight (channels, width): no transposes.
        mixed_qkv, _ = causal_conv1d(mixed_qkv, weight=conv_weight, bias=conv_bias, activation=self.activation,
                                     cu_seqlens=cu_seqlens)
        query, key, value = self._split_heads(mixed_qkv)
        # fla groups the value heads itself (num_v_heads a multiple of num_k_heads), as transformers relies on.
        core, _ = chunk_gated_delta_rule(query, key, value, g=g, beta=beta, cu_seqlens=cu_seqlens,
                                         use_qk_l2norm_in_kernel=True)
        return core


def row_boundaries(cu_seq_lens_q: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """cu_seqlens (int32) over the batch's rows laid end to end: the packed row's samples, else one per row."""
    if cu_seq_lens_q is None:
        return torch.arange(0, (batch + 1) * length, length, dtype=torch.int32, device=device)
    if batch != 1:
        raise ValueError(f"cu_seq_lens_q marks the samples of one packed row, but the batch has {batch} rows")
    return cu_seq_lens_q


def packed_causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cu_seqlens: torch.Tensor,
                         activation: str | None) -> torch.Tensor:
    """Depthwise causal convolution of a packed row x (1, time, channels), weight (channels, width), whose taps
    stop at each sample's start: per-sample F.conv1d with left zero padding, in one pass."""
    length, width = x.shape[1], weight.shape[-1]
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    offset = torch.arange(length, device=x.device) - cu_seqlens[:-1].long().repeat_interleave(lengths)
    h = x.to(weight.dtype)  # the stock causal_conv1d_fn convolves in the weight's dtype
    out = h * weight[:, -1]
    for shift in range(1, width):
        # this tap reads token t - shift, which belongs to the sample only if t sits at least `shift` into it
        earlier = F.pad(h, (0, 0, shift, 0))[:, :length]
        reach = (offset >= shift).to(h.dtype)[None, :, None]
        out = out + earlier * reach * weight[:, width - 1 - shift]
    if bias is not None:
        out = out + bias
    return (out if activation is None else ACT2FN[activation](out)).to(x.dtype)


def delta_rule_per_sample(query, key, value, g, beta, bounds: list[int]) -> torch.Tensor:
    """The chunked gated delta rule (l2-normed q/k) run on each sample [bounds[i], bounds[i+1]) alone."""
    rule = torch_delta_rule()
    outs = [rule(query[:, s:e], key[:, s:e], value[:, s:e], g=g[:, s:e], beta=beta[:, s:e],
                 use_qk_l2norm_in_kernel=True)[0]
            for s, e in zip(bounds, bounds[1:]) if e > s]
    return torch.cat(outs, dim=1)


def torch_delta_rule():
    """transformers' torch reference of the chunked gated delta rule, without the dispatch wrapped around it."""
    # use_kernel_func_from_hub_with_fallback (5.23) routes calls to fla when it is installed (CUDA only) and
    # raises on cu_seqlens without it; functools.wraps keeps the plain torch function as __wrapped__.
    wrapped = modeling_qwen3_5.torch_chunk_gated_delta_rule
    reference = inspect.unwrap(wrapped)
    return reference if reference is not wrapped else recurrent_gated_delta_rule


def recurrent_gated_delta_rule(query, key, value, g, beta, use_qk_l2norm_in_kernel: bool = True, **kwargs):
    """Token-by-token gated delta rule, as transformers' torch_recurrent_gated_delta_rule (5.23) computes it; the
    fallback where transformers' reference cannot be reached undecorated. Returns (output, None)."""
    dtype = query.dtype
    groups = value.shape[2] // key.shape[2]  # each q/k head serves `groups` consecutive value heads
    query, key = query.repeat_interleave(groups, dim=2), key.repeat_interleave(groups, dim=2)
    query, key, value, beta, g = (t.transpose(1, 2).float() for t in (query, key, value, beta, g))
    if use_qk_l2norm_in_kernel:
        query = query * torch.rsqrt((query * query).sum(-1, keepdim=True) + 1e-6)
        key = key * torch.rsqrt((key * key).sum(-1, keepdim=True) + 1e-6)
    query = query * query.shape[-1] ** -0.5
    state = value.new_zeros(*value.shape[:2], key.shape[-1], value.shape[-1])
    outs = []
    for t in range(value.shape[2]):
        state = state * g[:, :, t].exp()[..., None, None]
        delta = (value[:, :, t] - (state * key[:, :, t, :, None]).sum(-2)) * beta[:, :, t, None]
        state = state + key[:, :, t, :, None] * delta[:, :, None, :]
        outs.append((state * query[:, :, t, :, None]).sum(-2))
    return torch.stack(outs, dim=2).transpose(1, 2).contiguous().to(dtype), None
