"""Padding-free attention through PyTorch's own varlen FlashAttention (`torch.nn.attention.varlen`),
registered with transformers' AttentionInterface, so packed training needs no flash-attn build.

Sample boundaries: the LLM's text `position_ids` restart at 0 for every packed sample. A forward
pre-hook on the language model (`attach_row_boundaries`) turns them into cu_seqlens once per forward
and hands them to every decoder layer through the FlashAttention keyword arguments transformers
already passes down (`cu_seq_lens_q`, `max_length_q`, ...). So no layer reads anything back to the host
and a whole decoder layer, gradient checkpointing included, compiles into one graph
(`--torch_compile`, compile.py). Rows of one fixed length bring their boundaries from the collator
instead (RowBoundaries), so that CUDA graphs can replay the layers (`--torch_compile_mode reduce-overhead`).

The vision tower runs the same function under a second name, VISION_ATTENTION_NAME
(`use_varlen_in_vision_tower`): transformers' Qwen-VL vision attention (5.17 to 5.23, Qwen2-VL, Qwen2.5-VL,
Qwen3-VL and its MoE alike) hands all of a batch's images to
one call with their cu_seqlens only when the implementation's name contains "flash"; for any other name it
splits the batch per image (per window on Qwen2.5-VL) and reads the lengths back to the host in every
block. That name is set on the vision config after loading, because at load time transformers takes any
"flash" name for a flash-attn package or hub kernel to fetch. On CPU the same function runs sdpa with a
block-diagonal mask (causal in the LLM): exact, and tested in CI.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.varlen import varlen_attn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

from vlft.families import family_of, module_at

ATTENTION_NAME = "torch_varlen"
VISION_ATTENTION_NAME = "torch_varlen_flash_layout"  # "flash": the vision tower passes cu_seqlens (see above)
_KERNEL_GQA = "enable_gqa" in inspect.signature(varlen_attn).parameters  # torch >= 2.13


def boundaries_from_positions(position_ids: torch.Tensor, length: int) -> torch.Tensor:
    """cu_seqlens (int32) of the samples in a row whose text positions restart at 0 per sample."""
    starts = (position_ids.reshape(-1)[:length] == 0).nonzero().reshape(-1)
    if starts.numel() == 0 or starts[0] != 0:
        starts = torch.cat([starts.new_zeros(1), starts])
    return torch.cat([starts, starts.new_tensor([length])]).to(torch.int32)


def row_boundary_kwargs(position_ids: torch.Tensor, length: int) -> dict:
    """The FlashAttention keyword arguments of one packed row: cu_seqlens on the row's device and the
    longest sample (one read back to the host, once per forward)."""
    cu_seqlens = boundaries_from_positions(position_ids, length).to(position_ids.device)
    longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    return {"cu_seq_lens_q": cu_seqlens, "cu_seq_lens_k": cu_seqlens, "max_length_q": longest,
            "max_length_k": longest}


class RowBoundaries:
    """The forward pre-hooks that give every decoder layer its packed row's boundaries.

    On the whole model: takes the collator's fixed-length row keys (`row_cu_seqlens`, `row_padding`:
    collator.py) out of the inputs, so neither the vision tower nor the loss sees them, and keeps the
    boundaries for this forward. On the language model: adds the boundaries as FlashAttention kwargs, the
    kept ones with the rows' fixed longest segment (`row_longest_segment`: the longest sample of the run,
    the padding cut to segments no longer; shapes and values fixed per run: no host read, and CUDA graphs
    can replay the layers), else ones computed from the text positions.
    """

    def __init__(self):
        self.fixed: torch.Tensor | None = None
        self.longest: int | None = None

    def take_from_inputs(self, module: nn.Module, args: tuple, kwargs: dict):
        self.fixed = kwargs.pop("row_cu_seqlens", None)
        self.longest = kwargs.pop("row_longest_segment", None)
        kwargs.pop("row_padding", None)
        return args, kwargs

    def add_to_language_model(self, module: nn.Module, args: tuple, kwargs: dict):
        positions, embeds = kwargs.get("position_ids"), kwargs.get("inputs_embeds")
        if positions is None or embeds is None or "cu_seq_lens_q" in kwargs or embeds.shape[0] != 1:
            return None
        length = embeds.shape[1]
        if self.fixed is not None:
            cu_seqlens = self.fixed.to(embeds.device, non_blocking=True)
            longest = self.longest or length
            bounds = {"cu_seq_lens_q": cu_seqlens, "cu_seq_lens_k": cu_seqlens, "max_length_q": longest,
                      "max_length_k": longest}
        else:
            bounds = row_boundary_kwargs(positions, length)
        return args, {**kwargs, **bounds}


def attach_row_boundaries(model: nn.Module, varlen: bool = True) -> RowBoundaries:
    """Hook RowBoundaries onto the model (a Qwen-VL ...ForConditionalGeneration) and, for the varlen attention
    or a family with linear-attention layers, its language model (softmax attention under sdpa/eager finds
    the boundaries from the text positions; a linear-attention layer has only the kwargs)."""
    boundaries = RowBoundaries()
    model.register_forward_pre_hook(boundaries.take_from_inputs, with_kwargs=True)
    family = family_of(model)
    if varlen or family.hybrid:
        module_at(model, family.modules.language_model).register_forward_pre_hook(
            boundaries.add_to_language_model, with_kwargs=True)
    return boundaries


def _block_diagonal_sdpa(q, k, v, cu_seqlens, causal: bool, scale: float | None) -> torch.Tensor:
    """Reference path (CPU): sdpa where each sample attends only to itself. q, k, v: (T, H, D)."""
    positions = torch.arange(q.shape[0], device=q.device)
    sample = torch.searchsorted(cu_seqlens[1:].to(positions.dtype), positions, right=True)
    mask = sample[:, None] == sample[None, :]
    if causal:
        mask = mask & (positions[:, None] >= positions[None, :])
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask,
                                         scale=scale)
    return out.transpose(0, 1)


_whole_sequence: dict[tuple[int, torch.device], torch.Tensor] = {}


@torch.compiler.disable  # calls from outside the hooked language model: host reads, kept out of graphs
def _boundaries_of_call(position_ids: torch.Tensor | None, length: int, device: torch.device) -> dict:
    """A call that did not get the row's boundaries: from its positions, else one sequence (the vision
    tower calls attention once per image; its cu_seqlens are cached per length, no host copy per call)."""
    if position_ids is not None:
        return row_boundary_kwargs(position_ids, length)
    key = (length, device)
    if key not in _whole_sequence:
        _whole_sequence[key] = torch.tensor([0, length], dtype=torch.int32, device=device)
    whole = _whole_sequence[key]
    return {"cu_seq_lens_q": whole, "cu_seq_lens_k": whole, "max_length_q": length, "max_length_k": length}


def torch_varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, is_causal=None,
                           cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None, max_length_k=None,
                           position_ids=None, **kwargs):
    """Attention over (1, H, T, D) packed inputs, each sample attending only to itself."""
    if query.shape[0] != 1:
        raise ValueError(f"{ATTENTION_NAME} expects one packed row (batch 1), got batch {query.shape[0]}; "
                         "use --padding_free true")
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    if cu_seq_lens_q is None:
        bounds = _boundaries_of_call(position_ids, query.shape[2], query.device)
        cu_seq_lens_q, max_length_q = bounds["cu_seq_lens_q"], bounds["max_length_q"]
    if cu_seq_lens_k is None:
        cu_seq_lens_k, max_length_k = cu_seq_lens_q, max_length_q
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, H, D)
    out = samplewise_attention(q, k, v, cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k, causal=causal,
                               scale=scaling)
    return out.unsqueeze(0), None  # (1, T, H, D), as transformers' attention functions return


def samplewise_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                         cu_seqlens_k: torch.Tensor, max_length_q: int, max_length_k: int, *, causal: bool,
                         scale: float | None) -> torch.Tensor:
    """Attention of packed samples, each to itself: q (T, Hq, D), k / v (T, Hkv, D) -> (T, Hq, D). torch's varlen
    FlashAttention on CUDA (no host read), sdpa with a block-diagonal mask elsewhere."""
    groups = q.shape[1] // k.shape[1]
    if not q.is_cuda:
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return _block_diagonal_sdpa(q, k, v, cu_seqlens_q, causal, scale)
    q, k, v = in_kernel_dtype(q, k, v, torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda")
                              else None)
    extra = {}
    if groups > 1:
        if _KERNEL_GQA:
            extra["enable_gqa"] = True
        else:  # torch 2.11/2.12: repeat the KV heads
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return varlen_attn(q.contiguous(), k.contiguous(), v.contiguous(), cu_seqlens_q, cu_seqlens_k, max_length_q,
                       max_length_k, scale=scale, window_size=(-1, 0) if causal else (-1, -1), **extra)


def in_kernel_dtype(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    autocast_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v in one half precision for FlashAttention, which takes no float32 and no mix, and which autocast
    does not cast (a custom operator): float32 queries and keys arise under float16 autocast when trained
    parameters are float32 (tuners.upcast_trained_float16: a float32 embedding makes float32 rotary cos/sin).
    The autocast dtype when autocast is on, else the half precision among them; unchanged when already one."""
    dtypes = {q.dtype, k.dtype, v.dtype}
    if len(dtypes) == 1 and torch.float32 not in dtypes:
        return q, k, v
    target = autocast_dtype or next((t.dtype for t in (v, k, q) if t.dtype in (torch.float16, torch.bfloat16)), None)
    if target is None:
        return q, k, v
    return q.to(target), k.to(target), v.to(target)


def register_varlen_attention() -> str:
    """Register the varlen attention (and its mask: none, like FlashAttention's) under ATTENTION_NAME and
    VISION_ATTENTION_NAME."""
    for name in (ATTENTION_NAME, VISION_ATTENTION_NAME):
        AttentionInterface.register(name, torch_varlen_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, flash_attention_mask)
    return ATTENTION_NAME


def use_varlen_in_vision_tower(model: nn.Module) -> None:
    """One varlen attention call per vision block for all images (see the module docstring), instead of one
    call per image and a host read per block. Set on the loaded model's vision config."""
    register_varlen_attention()
    module_at(model, family_of(model).modules.vision_tower).config._attn_implementation = VISION_ATTENTION_NAME
