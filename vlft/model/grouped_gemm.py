"""Rows in consecutive groups, each group times its own matrix: torch's grouped GEMM
(`torch.nn.functional.grouped_mm`, the kernel transformers' MoE experts run) where it runs (CUDA, bfloat16, rows
aligned to 16 bytes), else the groups one by one (CPU, float32: the same arithmetic, for tests and small runs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def runs_grouped_mm(x: torch.Tensor, weight_t: torch.Tensor) -> bool:
    return (_GROUPED_MM is not None and x.is_cuda and x.dtype == weight_t.dtype == torch.bfloat16
            and x.shape[-1] % 8 == 0 and weight_t.shape[-1] % 8 == 0)


def grouped_matmul(x: torch.Tensor, weight_t: torch.Tensor, ends: torch.Tensor,
                   sizes: list[int] | None = None) -> torch.Tensor:
    """x [rows, in] in groups ending at `ends` (int32, cumulative, on x's device) times weight_t [groups, in, out]
    -> [rows, out]. `sizes` (the groups' row counts), when the caller has them on the host, spares the one-by-one
    path its host read."""
    if runs_grouped_mm(x, weight_t):
        return _GROUPED_MM(x, weight_t, offs=ends)
    if sizes is None:
        bounds = [0, *ends.tolist()]
        sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    rows = x[:sum(sizes)]
    parts = [group @ weight_t[g].to(x.dtype) for g, group in enumerate(torch.split(rows, sizes))]
    return torch.cat(parts) if parts else x.new_zeros(0, weight_t.shape[-1])
