"""Rows in consecutive groups, each group times its own matrix: torch's grouped GEMM
(`torch.nn.functional.grouped_mm`, the kernel transformers' MoE experts run) where it runs (CUDA, bfloat16; a
width that is not a multiple of 8, such as a LoRA rank of 4, is padded with zeros to the kernel's 16-byte
alignment), else the groups one by one (CPU, float32: the same arithmetic, for tests and small runs).

The one-by-one path reads the group ends to the host. Inside torch.compile that read would break the graph (and a
break inside a compiled layer's gradient checkpoint sends the whole layer back to eager), so it runs as a custom
operator (torch.library), which the compiler keeps whole as one opaque call with a known output shape, as
transformers does for its own experts' fallback."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def runs_grouped_mm(x: torch.Tensor, weight_t: torch.Tensor) -> bool:
    return _GROUPED_MM is not None and x.is_cuda and x.dtype == weight_t.dtype == torch.bfloat16


def _aligned_grouped_mm(x: torch.Tensor, weight_t: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """torch's grouped GEMM, the inner and outer widths padded with zeros to multiples of 8 where they are not."""
    inner, outer = (-x.shape[-1]) % 8, (-weight_t.shape[-1]) % 8
    if inner:
        x, weight_t = F.pad(x, (0, inner)), F.pad(weight_t, (0, 0, 0, inner))
    if outer:
        weight_t = F.pad(weight_t, (0, outer))
    out = _GROUPED_MM(x, weight_t, offs=ends)
    return out[:, :out.shape[-1] - outer] if outer else out


def grouped_matmul(x: torch.Tensor, weight_t: torch.Tensor, ends: torch.Tensor,
                   sizes: list[int] | None = None) -> torch.Tensor:
    """x [rows, in] in groups ending at `ends` (int32, cumulative, on x's device) times weight_t [groups, in, out]
    -> [rows, out] (rows past the last group's end: zeros on the one-by-one path, undefined on grouped_mm's).
    `sizes` (the groups' row counts), when the caller has them on the host, spares the one-by-one path its host
    read (then only the groups' rows come back)."""
    if runs_grouped_mm(x, weight_t):
        return _aligned_grouped_mm(x, weight_t, ends)
    if sizes is None:
        return grouped_matmul_by_group(x, weight_t.to(x.dtype), ends)
    rows = x[:sum(sizes)]
    parts = [group @ weight_t[g].to(x.dtype) for g, group in enumerate(torch.split(rows, sizes))]
    return torch.cat(parts) if parts else x.new_zeros(0, weight_t.shape[-1])


def _group_bounds(ends: torch.Tensor) -> list[tuple[int, int, int]]:
    """(group, first row, end row) of every non-empty group."""
    bounds, start = [], 0
    for group, end in enumerate(ends.tolist()):
        if end > start:
            bounds.append((group, start, end))
        start = max(start, end)
    return bounds


@torch.library.custom_op("vlft::grouped_matmul_by_group", mutates_args=())
def grouped_matmul_by_group(x: torch.Tensor, weight_t: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """The groups one by one (x and weight_t of one dtype)."""
    out = x.new_zeros(x.shape[0], weight_t.shape[-1])
    for group, start, end in _group_bounds(ends):
        torch.mm(x[start:end], weight_t[group], out=out[start:end])
    return out


@grouped_matmul_by_group.register_fake
def _(x: torch.Tensor, weight_t: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight_t.shape[-1])


@torch.library.custom_op("vlft::grouped_matmul_by_group_backward", mutates_args=())
def grouped_matmul_by_group_backward(x: torch.Tensor, weight_t: torch.Tensor, ends: torch.Tensor,
                                     grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradient of x, gradient of weight_t) of grouped_matmul_by_group for the output's gradient `grad`."""
    grad_x, grad_weight = torch.zeros_like(x), torch.zeros_like(weight_t)
    for group, start, end in _group_bounds(ends):
        torch.mm(grad[start:end], weight_t[group].t(), out=grad_x[start:end])
        torch.mm(x[start:end].t(), grad[start:end], out=grad_weight[group])
    return grad_x, grad_weight


@grouped_matmul_by_group_backward.register_fake
def _(x: torch.Tensor, weight_t: torch.Tensor, ends: torch.Tensor,
      grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x), torch.empty_like(weight_t)


def _save_inputs(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad: torch.Tensor):
    x, weight_t, ends = ctx.saved_tensors
    grad_x, grad_weight = grouped_matmul_by_group_backward(x, weight_t, ends, grad.contiguous())
    return grad_x, grad_weight, None


grouped_matmul_by_group.register_autograd(_backward, setup_context=_save_inputs)
