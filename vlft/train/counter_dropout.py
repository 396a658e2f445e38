"""LoRA dropout without a random-number op, so that a decoder layer with dropout still compiles whole.

PEFT drops LoRA's input with `nn.Dropout`. Inside a decoder layer compiled whole, the gradient checkpoint is part
of the graph and torch 2.11's partitioner fails on its random op on CUDA ("Node ... was invalid, but is output";
pytorch/pytorch#121966, huggingface/peft#3020), so such layers were compiled part by part (a smaller speed-up)
and the seed page's command (`--lora_dropout 0.05`) missed the fast path.

`CounterDropout` draws the same kind of mask (each element kept with probability 1 - p, kept ones scaled by
1 / (1 - p)) from an integer hash of (a step counter, the module's salt, the element's index): plain integer
arithmetic the compiler fuses into the kernel that reads the input, and that gives the same mask again when the
checkpoint recomputes the layer. The counter is one int64 tensor shared by every such module and advanced in
place before each forward of the model (a new mask every micro-batch); each module's salt is its own, so no two
modules draw the same mask. The counter and the salts are buffers, inputs of the compiled graphs, so the layers,
which are identical, share one compiled graph.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import has_length

_MASK_32 = 0xFFFFFFFF


def _mix(h: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xor-shift-multiply rounds) on int64 tensors holding 32-bit values."""
    h = ((h ^ (h >> 16)) * 0x45D9F3B) & _MASK_32
    h = ((h ^ (h >> 16)) * 0x45D9F3B) & _MASK_32
    return h ^ (h >> 16)


def keep_mask(counter: torch.Tensor, salt: torch.Tensor, like: torch.Tensor, p: float) -> torch.Tensor:
    """Bool mask shaped like `like`: each element True with probability 1 - p (24-bit resolution), a function of
    (counter, salt, element index) only."""
    key = _mix((counter * 0x9E3779B1 + salt) & _MASK_32)
    second = _mix((key + 0x632BE5AB) & _MASK_32)
    index = torch.arange(like.numel(), device=like.device, dtype=torch.int64).view(like.shape)
    h = _mix(_mix((index + key) & _MASK_32) ^ second)
    return (h & 0xFFFFFF) >= int(p * (1 << 24))


class CounterDropout(nn.Module):
    """Dropout whose mask is keep_mask(counter, salt, input): see the module docstring."""

    def __init__(self, p: float, counter: torch.Tensor, salt: int):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability {p} outside [0, 1)")
        self.p = p
        self.register_buffer("counter", counter, persistent=False)
        self.register_buffer("salt", torch.tensor(salt, dtype=torch.int64, device=counter.device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * keep_mask(self.counter, self.salt, x, self.p).to(x.dtype) * (1 / (1 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def replace_lora_dropouts(model: nn.Module, stream: int = 0) -> DropoutCounter | None:
    """Swap every LoRA `nn.Dropout` with p > 0 (PEFT keeps them in `lora_dropout` ModuleDicts) for a
    CounterDropout of the same p, all sharing one counter that a forward pre-hook on `model` advances; returns
    that hook (None: nothing to swap, nothing changed). `stream`: the process's rank, so that ranks of a
    data- or sequence-parallel run draw other masks."""
    counter = torch.zeros((), dtype=torch.int64, device=next(model.parameters()).device)
    found = [(module, adapter, dropout) for name, module in model.named_modules()
             if name.endswith("lora_dropout") and isinstance(module, nn.ModuleDict)
             for adapter, dropout in module.items() if isinstance(dropout, nn.Dropout) and dropout.p > 0]
    if not found:
        return None
    for index, (module, adapter, dropout) in enumerate(found):
        module[adapter] = CounterDropout(dropout.p, counter, salt=stream * len(found) + index)
    advance = DropoutCounter([module[adapter] for module, adapter, _ in found], found)
    advance.hook = model.register_forward_pre_hook(advance)
    return advance


class DropoutCounter:
    """The forward pre-hook that advances the shared counter: a new mask for every training forward of the
    model. Moving the model (`.to`, as the Trainer does) gives each module's buffer its own copy; the first
    module's counter is shared again here."""

    def __init__(self, modules: list[CounterDropout], originals: list[tuple[nn.ModuleDict, str, nn.Module]]):
        self.modules = modules
        self.originals = originals  # (ModuleDict, adapter name, the nn.Dropout swapped out)
        self.hook = None

    def restore(self) -> None:
        """Put the original dropouts back and remove the hook (a run that does not compile after all)."""
        for module, adapter, dropout in self.originals:
            module[adapter] = dropout
        if self.hook is not None:
            self.hook.remove()

    def shared(self) -> torch.Tensor:
        counter = self.modules[0].counter
        for module in self.modules[1:]:
            if module.counter is not counter:
                module.counter = counter
        return counter

    def start_at(self, forwards: int) -> None:
        """Continue as after `forwards` training forwards (a resumed run draws the masks it would have drawn)."""
        with torch.no_grad():
            self.shared().fill_(forwards)

    def __call__(self, model: nn.Module, args) -> None:
        if model.training:
            with torch.no_grad():
                self.shared().add_(1)


def forwards_done(steps: int, accumulation: int, batches_per_epoch: int | None) -> int:
    """Training forwards (micro-steps) in the first `steps` optimizer steps: transformers' Trainer makes an epoch's
    last step of the batches left over (fewer than `accumulation` when they do not divide)."""
    if not batches_per_epoch:
        return steps * accumulation
    steps_per_epoch = max(math.ceil(batches_per_epoch / accumulation), 1)
    epochs, rest = divmod(steps, steps_per_epoch)
    return epochs * batches_per_epoch + rest * accumulation


class ResumeDropoutCounter(TrainerCallback):
    """At the start of training (a resumed run included): the counter as after the steps already trained."""

    def __init__(self, counter: DropoutCounter):
        self.counter = counter

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        batches = len(train_dataloader) if has_length(train_dataloader) else None
        self.counter.start_at(forwards_done(state.global_step, args.gradient_accumulation_steps, batches))
