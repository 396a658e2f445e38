"""Gradient accumulation with gradients written into reused memory, as CUDA graphs write them: without
copy_first_gradients the first micro-step's gradient is overwritten by the second; with it, the accumulated
gradient is the sum autograd computes without reused memory."""

from __future__ import annotations

import torch
from torch import nn

from vlft.train.graph_gradients import copy_first_gradients


class StaticMemoryLinear(torch.autograd.Function):
    """y = x W^T whose weight gradient is written into one storage on every backward, returned as a new tensor over
    that storage: what a CUDA graph replay hands autograd (the graph keeps the storage, not the tensor)."""

    @staticmethod
    def forward(ctx, x, weight, memory):
        ctx.save_for_backward(x, weight)
        ctx.memory = memory
        return x @ weight.T

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        out = torch.empty(0, dtype=weight.dtype).set_(ctx.memory, 0, weight.shape)
        out.copy_(grad_out.T @ x)
        return grad_out @ weight, torch.empty(0, dtype=weight.dtype).set_(ctx.memory, 0, weight.shape), None


class Layer(nn.Module):
    def __init__(self, reused_memory: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
        self.memory = torch.empty(12, dtype=torch.float64).untyped_storage() if reused_memory else None

    def forward(self, x):
        if self.memory is None:
            return x @ self.weight.T
        return StaticMemoryLinear.apply(x, self.weight, self.memory)


def accumulated(layer: Layer, micro_batches: list[torch.Tensor]) -> torch.Tensor:
    for step in range(2):  # two optimizer steps (gradients unset between them, as zero_grad does)
        layer.weight.grad = None
        for x in micro_batches[2 * step: 2 * step + 2]:
            layer(x).pow(2).sum().backward()
    return layer.weight.grad.clone()


def micro_batches() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(5, 4, dtype=torch.float64, generator=generator) for _ in range(4)]


def test_reused_gradient_memory_loses_the_first_micro_step_without_the_copy():
    expected = accumulated(Layer(reused_memory=False), micro_batches())
    assert not torch.allclose(accumulated(Layer(reused_memory=True), micro_batches()), expected)


def test_copied_first_gradients_accumulate_as_autograd_does():
    expected = accumulated(Layer(reused_memory=False), micro_batches())
    layer = Layer(reused_memory=True)
    handles = copy_first_gradients(layer)
    assert len(handles) == 1
    torch.testing.assert_close(accumulated(layer, micro_batches()), expected, rtol=1e-12, atol=1e-12)


def test_only_trained_parameters_get_the_hook():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].requires_grad_(False)
    assert len(copy_first_gradients(model)) == 2


def test_the_hooks_leave_compiled_checkpointed_layers_whole_and_their_gradients_exact():
    """Hooks on the parameters of layers compiled whole (gradient checkpoint inside, AOT autograd as Inductor uses it):
    no graph break, and two accumulated micro-steps give the eager gradients."""
    from torch._dynamo.utils import counters
    from torch.utils.checkpoint import checkpoint

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(8, 8, dtype=torch.float64)

        def forward(self, x):
            return checkpoint(lambda h: x + torch.tanh(self.linear(h)), x, use_reentrant=False)

    def gradients(compiled: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(Block(), Block())
        if compiled:
            copy_first_gradients(model)
            for block in model:
                block.compile(backend="aot_eager", fullgraph=True)
        for x in micro_batches():
            model(torch.cat([x, x], dim=1)).pow(2).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    torch._dynamo.reset()
    counters.clear()
    for got, expected in zip(gradients(True), gradients(False)):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert not counters["graph_break"]
