"""Running Megatron-Core 0.16.1 on a machine without CUDA (conversion, CPU tests).

megatron-core 0.16.1 hard-codes CUDA in code paths that conversion needs, even with
`use_cpu_initialization=True`: buffers made with `device=torch.cuda.current_device()` (the rotary
embeddings' `inv_freq`, tensor-parallel gather buffers, the MoE router), `torch.cuda.synchronize()` in
dist_checkpointing's writer, a default causal mask built with `device="cuda"`, `Tensor.cuda()` on the pipeline's
embedding copies, and a router that names
TransformerEngine's `te_general_gemm` without defining it when TE is absent (NameError). None of these
has a public switch, so `cpu_shims()` patches exactly these attributes for the duration of a conversion,
in the converter's own process only, and only when it runs on the CPU; it restores them on exit. vlft never
applies them at import time.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator

import torch


def _cpu_causal_mask(sq: int, sk: int | None = None) -> torch.Tensor:
    return torch.triu(torch.ones(sq, sk or sq), diagonal=1).bool()


@contextmanager
def _patched(owner: object, name: str, value: object) -> Iterator[None]:
    missing = object()
    old = getattr(owner, name, missing)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if old is missing:
            delattr(owner, name)
        else:
            setattr(owner, name, old)


@contextmanager
def router_without_transformer_engine() -> Iterator[None]:
    """Megatron-Core 0.16.1's MoE router names TransformerEngine's `te_general_gemm` without defining it when TE is
    absent (NameError, on any device): within the block the name is None, and the router multiplies with torch."""
    import megatron.core.transformer.moe.moe_utils as moe_utils

    if hasattr(moe_utils, "te_general_gemm"):
        yield
        return
    with _patched(moe_utils, "te_general_gemm", None):
        yield


@contextmanager
def cpu_shims(device: torch.device) -> Iterator[None]:
    """Within the block, Megatron-Core's hard-coded CUDA calls work on CPU (on a GPU, only the router's missing
    name is given)."""
    if device.type != "cpu":
        with router_without_transformer_engine():
            yield
        return
    import megatron.core.fusions.fused_softmax as fused_softmax
    import megatron.core.transformer.utils as transformer_utils

    with ExitStack() as stack:
        stack.enter_context(_patched(torch.cuda, "current_device", lambda: "cpu"))
        stack.enter_context(_patched(torch.cuda, "synchronize", lambda *args, **kwargs: None))
        stack.enter_context(_patched(transformer_utils, "get_default_causal_mask", _cpu_causal_mask))
        stack.enter_context(_patched(fused_softmax, "get_default_causal_mask", _cpu_causal_mask))
        stack.enter_context(router_without_transformer_engine())
        # With PP > 1, a last stage that holds an embedding copy (tied embeddings, or a multi-token-prediction
        # head) moves it with `weight.data.cuda()` before all-reducing it over the embedding group.
        stack.enter_context(_patched(torch.Tensor, "cuda", lambda self, *args, **kwargs: self))
        yield


def _names_cuda(device) -> bool:
    """Whether a `device` argument names CUDA (no exception for other values: torch.compile traces this)."""
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, str) and device.startswith("cuda")


class CudaNamesOnCpu(torch.overrides.TorchFunctionMode):
    """Megatron-Core's training path (the schedules' token counts, gradient clipping, the optimizers' scale and
    overflow buffers) makes small tensors with the literal `device="cuda"`, and its optimizers check
    `param.type() == "torch.cuda.FloatTensor"`. Inside this mode (torch's public hook for tensor functions) such a
    tensor is made on the CPU, and `Tensor.type()` names the CUDA type of a CPU tensor."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _names_cuda(kwargs.get("device")):
            kwargs = {**kwargs, "device": "cpu"}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.to and len(args) > 1 and _names_cuda(args[1]):
            args = (args[0], "cpu", *args[2:])
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name if ".cuda." in name else name.replace("torch.", "torch.cuda.", 1)
        return func(*args, **kwargs)


@contextmanager
def cpu_training(device: torch.device) -> Iterator[None]:
    """cpu_shims, and for training CudaNamesOnCpu, on a CPU device (on a GPU, only the router's missing name)."""
    if device.type != "cpu":
        with router_without_transformer_engine():
            yield
        return
    with cpu_shims(device), CudaNamesOnCpu():
        yield
