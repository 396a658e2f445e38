"""Rows in consecutive groups, each group times its own matrix: torch's grouped GEMM
(`torch.nn.functional.grouped_mm`, the kernel transformers' MoE experts run) where it runs (CUDA, bfloat16), else
the groups one by one (CPU, float32: the same arithmetic, for tests and small runs).

Both run as one custom operator (torch.library) with its own backward, so torch.compile keeps each call whole:
- the one-by-one path reads the group ends to the host, which would break the graph (and a break inside a compiled
  layer's gradient checkpoint sends the whole layer back to eager);
- the grouped GEMM kernel takes only operands whose rows or columns are contiguous and 16-byte aligned, while
  Inductor lays out a computed operand (the LoRA B factors permuted to expert-major) as it likes: measured on an
  H100, it handed the kernel strides [1, 4, 32] for sizes [4, 8, 64]. Inside the operator the operands are made
  kernel-ready in eager mode, and widths that are not multiples of 8 (a LoRA rank of 4) are padded with zeros."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def runs_grouped_mm(x: torch.Tensor, weight_t: torch.Tensor) -> bool:
    return _GROUPED_MM is not None and x.is_cuda and x.dtype == weight_t.dtype == torch.bfloat16


def grouped_matmul(x: torch.Tensor, weight_t: torch.Tensor, ends: torch.Tensor,
                   sizes: list[int] | None = None) -> torch.Tensor:
    """x [rows, in] in groups ending at `ends` (int32, cumulative, on x's device) times weight_t [groups, in, out]
    -> [rows, out] (rows past the last group's end: zeros on the CPU, undefined from the kernel). `sizes` (the
    groups' row counts), when the caller has them on the host, spares the one-by-one path its host read (then only
    the groups' rows come back)."""
    if sizes is not None and not runs_grouped_mm(x, weight_t):
        rows = x[:sum(sizes)]
        parts = [group @ weight_t[g].to(x.dtype) for g, group in enumerate(torch.split(rows, sizes))]
        return torch.cat(parts) if parts else x.new_zeros(0, weight_t.shape[-1])
    return grouped_matmul_op(x, weight_t.to(x.dtype), ends)


def _kernel_ready(t: torch.Tensor) -> torch.Tensor:
    """t with its last two dimensions laid out as the grouped GEMM kernel takes them (one of them contiguous, the
    other's stride a multiple of 8 elements), copied only when they are not."""
    row_major = t.stride(-1) == 1 and t.stride(-2) % 8 == 0
    column_major = t.stride(-2) == 1 and t.stride(-1) % 8 == 0
    return t if row_major or column_major else t.contiguous()


def _padded(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t padded with zeros at the end of `dim` to a multiple of 8."""
    extra = (-t.shape[dim]) % 8
    if not extra:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim % t.dim()) + [0, extra]
    return F.pad(t, pad)


def _kernel_product(x: torch.Tensor, weight_t: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """torch's grouped GEMM of x [rows, in] and weight_t [groups, in, out] (widths padded, operands made ready)."""
    out_width = weight_t.shape[-1]
    x, weight_t = _padded(x, -1), _padded(_padded(weight_t, -2), -1)
    out = _GROUPED_MM(_kernel_ready(x), _kernel_ready(weight_t), offs=ends)
    return out[:, :out_width].contiguous()


def _kernel_weight_gradient(x: torch.Tensor, grad: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Each group's x_g^T grad_g, [groups, in, out], by torch's grouped GEMM over the rows."""
    width_in, width_out = x.shape[-1], grad.shape[-1]
    x_t = _padded(x, -1).t()  # [in, rows]: columns contiguous
    out = _GROUPED_MM(_kernel_ready(x_t), _kernel_ready(_padded(grad, -1)), offs=ends)
    return out[:, :width_in, :width_out].contiguous()


def _group_bounds(ends: torch.Tensor) -> list[tuple[int, int, int]]:
    """(group, first row, end row) of every non-empty group."""
    bounds, start = [], 0
    for group, end in enumerate(ends.tolist()):
        if end > start:
            bounds.append((group, start, end))
        start = max(start, end)
    return bounds


@torch.library.custom_op("vlft::grouped_matmul", mutates_args=())
def grouped_matmul_op(x: torch.Tensor, weight_t: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """x [rows, in] times weight_t [groups, in, out] (one dtype) by groups of rows ending at `ends`."""
    if runs_grouped_mm(x, weight_t):
        return _kernel_product(x, weight_t, ends)
    out = x.new_zeros(x.shape[0], weight_t.shape[-1])
    for group, start, end in _group_bounds(ends):
        torch.mm(x[start:end], weight_t[group], out=out[start:end])
    return out


@grouped_matmul_op.register_fake
def _(x: torch.Tensor, weight_t: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight_t.shape[-1])


@torch.library.custom_op("vlft::grouped_matmul_weight_gradient", mutates_args=())
def grouped_matmul_weight_gradient(x: torch.Tensor, grad: torch.Tensor, ends: torch.Tensor,
                                   groups: int) -> torch.Tensor:
    """Each group's x_g^T grad_g, [groups, in, out]: the gradient of grouped_matmul_op's weight_t."""
    if runs_grouped_mm(x, grad):
        return _kernel_weight_gradient(x, grad, ends)
    grad_weight = x.new_zeros(groups, x.shape[-1], grad.shape[-1])
    for group, start, end in _group_bounds(ends):
        torch.mm(x[start:end].t(), grad[start:end], out=grad_weight[group])
    return grad_weight


@grouped_matmul_weight_gradient.register_fake
def _(x: torch.Tensor, grad: torch.Tensor, ends: torch.Tensor, groups: int) -> torch.Tensor:
    return x.new_empty(groups, x.shape[-1], grad.shape[-1])


def _save_inputs(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad: torch.Tensor):
    """Only the gradients autograd asks for: LoRA leaves the experts' weights frozen, and their gradient would be
    one more grouped GEMM of the weights' size per projection."""
    x, weight_t, ends = ctx.saved_tensors
    grad = grad.contiguous()
    grad_x = grouped_matmul_op(grad, weight_t.transpose(1, 2), ends) if ctx.needs_input_grad[0] else None
    grad_weight = (grouped_matmul_weight_gradient(x, grad, ends, weight_t.shape[0]) if ctx.needs_input_grad[1]
                   else None)
    return grad_x, grad_weight, None


grouped_matmul_op.register_autograd(_backward, setup_context=_save_inputs)
