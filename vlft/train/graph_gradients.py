"""Gradient accumulation under CUDA graphs (`--torch_compile_mode reduce-overhead` with
`--gradient_accumulation_steps` above 1).

A layer replayed as a CUDA graph writes its weight gradients into the graph's own memory, and the next replay
writes there again. When a parameter has no gradient yet, autograd keeps the incoming tensor itself as `.grad`; the
first micro-step's gradients would then sit in graph memory that the second micro-step overwrites (torch stops the
run: "accessing tensor output of CUDAGraphs that has been overwritten by a subsequent run"). A hook on each trained
parameter copies the gradient out of graph memory when it first arrives in a step; later micro-steps add into that
copy in place, as autograd does. On an H100 this gives the eager gradients of two accumulated micro-steps (worst
relative error 3e-3 in bf16, the same as compiled without graphs; bench/compile_obstacles.py, BENCHMARKS.md).
Only the parameters of the layers replayed as graphs (the decoder layers) get the hook; the copy costs one
gradient's memory per such parameter and one copy per parameter per optimizer step: small for LoRA.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


def copy_first_gradients(module: nn.Module) -> list[RemovableHandle]:
    """Hooks on every parameter of `module` that trains: a gradient arriving while `.grad` is unset is copied (the
    optimizer step's zero_grad unsets it). Returns the hooks' handles."""
    return [param.register_hook(_copy_when_first(param)) for param in module.parameters() if param.requires_grad]


def _copy_when_first(param: nn.Parameter):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad.clone() if param.grad is None else grad

    return hook
