"""model/grouped_gemm.py's one-by-one path (CPU): a custom operator whose values and gradients are each group's
own product (float64 ground truth), which torch.compile keeps as one call (no graph break on the host read of
the group ends), which computes no gradient of a frozen weight (LoRA's experts), and which passes torch.library's
own operator checks."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vlft.model.grouped_gemm import grouped_matmul, grouped_matmul_op

SIZES = [3, 0, 5, 1, 0, 7]


def inputs(dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(sum(SIZES), 6, generator=generator, dtype=dtype, requires_grad=True)
    weight_t = torch.randn(len(SIZES), 6, 4, generator=generator, dtype=dtype, requires_grad=True)
    ends = torch.cumsum(torch.tensor(SIZES), 0).to(torch.int32)
    return x, weight_t, ends


def test_values_and_gradients_are_each_groups_product():
    x, weight_t, ends = inputs()
    out = grouped_matmul(x, weight_t, ends)
    (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    x_ref, w_ref = x.detach().clone().requires_grad_(), weight_t.detach().clone().requires_grad_()
    want = torch.cat([rows @ w_ref[g] for g, rows in enumerate(torch.split(x_ref, SIZES))])
    (want * torch.arange(want.numel(), dtype=want.dtype).view_as(want)).sum().backward()
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(weight_t.grad, w_ref.grad, rtol=0, atol=1e-12)
    assert weight_t.grad[1].abs().sum() == 0 and weight_t.grad[4].abs().sum() == 0  # empty groups


def test_compiles_without_a_graph_break():
    x, weight_t, ends = inputs(torch.float32)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(lambda a, w, e: grouped_matmul(a, w, e).sum())(x, weight_t, ends)
    assert explained.graph_break_count == 0 and explained.graph_count == 1


def test_operator_checks():
    x, weight_t, ends = inputs(torch.float32)
    torch.library.opcheck(grouped_matmul_op, (x, weight_t, ends))
    # a transposed view, as the LoRA A factors come (gradients come back contiguous on both paths, as the fake says)
    transposed = weight_t.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    torch.library.opcheck(grouped_matmul_op, (x, transposed, ends))


class OperatorsCalled(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def test_a_frozen_weight_gets_no_gradient_computed():
    x, weight_t, ends = inputs()
    frozen = weight_t.detach()
    with OperatorsCalled() as called:
        grouped_matmul(x, frozen, ends).pow(2).sum().backward()
    assert not any("weight_gradient" in name for name in called.names), called.names
    assert x.grad is not None and frozen.grad is None
    with OperatorsCalled() as called:
        grouped_matmul(x.detach(), weight_t, ends).pow(2).sum().backward()
    assert any("weight_gradient" in name for name in called.names)  # the check above can fail
