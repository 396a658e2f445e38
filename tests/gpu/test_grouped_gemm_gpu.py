"""GPU only (skipped elsewhere): model/grouped_gemm.grouped_matmul runs torch's grouped GEMM for widths the kernel
cannot take as they are (a LoRA rank of 4, an odd inner width: padded with zeros to multiples of 8), with the
values and gradients of a float64 product per group."""

from __future__ import annotations

import pytest
import torch

from vlft.model.grouped_gemm import grouped_matmul, runs_grouped_mm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("inner, outer", [(64, 4), (4, 48), (12, 20), (64, 48)])
def test_grouped_matmul_pads_to_the_kernels_alignment(inner, outer):
    torch.manual_seed(0)
    sizes = [5, 0, 17, 3, 1, 40, 0, 9]
    x = torch.randn(sum(sizes), inner, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight_t = torch.randn(len(sizes), inner, outer, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    assert runs_grouped_mm(x, weight_t)
    ends = torch.cumsum(torch.tensor(sizes), 0).to("cuda", torch.int32)
    out = grouped_matmul(x, weight_t, ends)
    assert out.shape == (sum(sizes), outer)
    out.float().pow(2).sum().backward()

    x64 = x.detach().cpu().double().requires_grad_()
    w64 = weight_t.detach().cpu().double().requires_grad_()
    want = torch.cat([rows @ w64[g] for g, rows in enumerate(torch.split(x64, sizes))])
    want.pow(2).sum().backward()
    for got, expected in ((out, want), (x.grad, x64.grad), (weight_t.grad, w64.grad)):
        error = (got.double().cpu() - expected).norm() / expected.norm()
        assert error < 2e-2, (inner, outer, error.item())
