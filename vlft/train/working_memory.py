"""What the loss and one decoder layer's backward allocate beyond what they are handed, measured on the GPU with
torch's allocator (the memory plan's `transient`, memory_plan.py).

Counting bytes by formula left the plan's estimate low by a near-constant 1.7-2.4 GiB on the Qwen3-VL-4B shape at
8192 tokens, whatever the number of recomputed layers (BENCHMARKS.md, sessions 15 and 22): the working memory of
the loss and of a layer's backward, which depend on kernels (torch's logsumexp makes a full copy of a chunk's
logits; a compiled backward recomputes what its forward did not keep). Here each runs once, as the step will run
it, and the allocator's peak above what was allocated before is the answer. CUDA only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from vlft.families import family_of, module_at


@contextlib.contextmanager
def checkpointing_off(layers) -> Iterator[None]:
    """While open, the `layers` run without their gradient checkpoints (transformers' per-layer switch); their
    switches are restored afterwards."""
    recomputing = {layer: layer.gradient_checkpointing for layer in layers if hasattr(layer, "gradient_checkpointing")}
    for layer in recomputing:
        layer.gradient_checkpointing = False
    try:
        yield
    finally:
        for layer, flag in recomputing.items():
            layer.gradient_checkpointing = flag


def peak_above_now(device: torch.device, work: Callable[[], object]) -> int:
    """Bytes the allocator's peak rises above what is allocated now while `work()` runs (its result dropped)."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    work()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def loss_working_bytes(model: nn.Module, tokens: int, chunked_loss: bool, dtype: torch.dtype,
                       device: torch.device, step_context: Callable) -> int:
    """The loss of `tokens` positions, every one trained (the most a step's loss holds), from final hidden states of
    the model's dtype, forward and backward as the training step runs them: chunked_loss.py's chunks, or the
    lm_head's logits of every position and the model's own loss function (transformers' float32 copy)."""
    from vlft.train.chunked_loss import chunked_cross_entropy

    text = model.config.get_text_config()
    head = module_at(model, family_of(model).modules.lm_head)
    weight = head.weight.detach().requires_grad_(head.weight.requires_grad)  # no gradient reaches the model's
    hidden = torch.randn(1, tokens, text.hidden_size, dtype=dtype, device=device, requires_grad=True)
    labels = torch.randint(0, text.vocab_size, (1, tokens), device=device)

    def run():
        with step_context():
            if chunked_loss:
                loss = chunked_cross_entropy(hidden, weight, labels)
            else:
                logits = nn.functional.linear(hidden, weight)
                loss = model.loss_function(logits=logits, labels=labels, vocab_size=text.vocab_size)
        loss.backward()

    return peak_above_now(device, run)


@contextlib.contextmanager
def first_layer_input(layers: nn.ModuleList) -> "contextlib.AbstractContextManager[dict]":
    """While open, a forward records the hidden states entering the first decoder layer and the other arguments
    each layer gets (rotary tables, row boundaries): {"hidden": tensor, "calls": {index: (args, kwargs)}}, each
    layer's hidden states left out of its own record (they would keep every layer's input alive)."""
    seen: dict = {"hidden": None, "calls": {}}

    def hook_for(index: int):
        def hook(module, args, kwargs):
            hidden_as_arg = bool(args)
            hidden = args[0] if hidden_as_arg else kwargs["hidden_states"]
            if index == 0:
                seen["hidden"] = hidden.detach()
            rest = (args[1:], kwargs) if hidden_as_arg else (args, {k: v for k, v in kwargs.items()
                                                                  if k != "hidden_states"})
            seen["calls"][index] = (hidden_as_arg, *rest)
        return hook

    handles = [layer.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def layer_backward_bytes(layer: nn.Module, hidden: torch.Tensor, call: tuple, device: torch.device,
                         step_context: Callable) -> int:
    """What `layer`'s backward allocates above what its forward left (its saved tensors, its output and the
    incoming gradient), the layer run without its gradient checkpoint on `hidden` and its recorded arguments
    (first_layer_input); its parameters' gradients are dropped afterwards."""
    hidden_as_arg, args, kwargs = call
    try:
        x = hidden.detach().requires_grad_(True)
        with checkpointing_off([layer]), torch.enable_grad(), step_context():
            out = layer(x, *args, **kwargs) if hidden_as_arg else layer(*args, hidden_states=x, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        gradient = torch.ones_like(out)
        return peak_above_now(device, lambda: out.backward(gradient))
    finally:
        for param in layer.parameters():
            param.grad = None
