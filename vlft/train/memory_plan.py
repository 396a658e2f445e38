"""`--gradient_checkpointing auto` (the default): recompute only as many decoder layers as the GPU's memory needs.

Before training, one forward pass over the run's longest row measures what each decoder layer keeps for its
backward (`probe_activations`: a saved-tensor hook counts every tensor autograd saves, once per storage, not
the weights, and keeps none of them, so the probe needs one layer's memory at a time); when the layers will be
compiled, through graphs partitioned as inductor partitions them (they keep less: measure_run_memory). The peak
of a step is then estimated for each number of recomputed layers (`PeakEstimate` below): the memory already allocated
(weights, adapters), the gradients and AdamW's two moments of what trains, the activations of the layers kept
(scaled from the probed row to --max_length x batch tokens), for a recomputed layer only its input plus one
layer recomputed at a time, and the larger of the loss's working memory and the backward's (one recomputed
layer's activations and what a layer's backward allocates), both measured on the GPU by running them once
(working_memory.py). `plan_checkpointing` picks the
fewest recomputed layers whose estimate fits `BUDGET_SHARE` of the memory the process can use, recomputing the
layers that keep the most first; when even all recomputed do not fit, all are, and the plan says the run may not
fit. The choice and the estimate are logged; an explicit `--gradient_checkpointing true/false` wins.

Only without DeepSpeed or several processes per model copy (their sharding changes what a process holds) and on
CUDA (the free memory is the GPU's); elsewhere `auto` recomputes every layer, ms-swift's default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass

import torch
from torch import nn

from vlft.train.compile import layers_compiled_for_probing
from vlft.train.summary import GIB, loss_transient_bytes, memory_estimate
from vlft.train.working_memory import (checkpointing_off, first_layer_input, layer_backward_bytes,
                                       loss_working_bytes)

logger = logging.getLogger("vlft")

# Share of the memory a process can use (free + what its allocator holds) the estimate may reach: the rest is
# for the allocator's fragmentation, cuBLAS / compile workspaces and what the estimate leaves out.
BUDGET_SHARE = 0.9


@dataclass(frozen=True)
class ActivationProbe:
    """Bytes kept for the backward pass by one forward over `tokens` tokens."""

    tokens: int
    per_layer: list[int]  # by each decoder layer, not recomputed
    outside: int  # by everything outside the decoder layers (embeddings, vision tower, final norm)
    layer_input: int  # a recomputed layer's input (its hidden states), which the checkpoint keeps
    # what one layer's backward allocates beyond what the layer keeps, measured on the GPU (working_memory.py);
    # None: taken as the largest layer's activations over again (gradients about their size)
    layer_backward: int | None = None

    @property
    def backward_working(self) -> int:
        return max(self.per_layer, default=0) if self.layer_backward is None else self.layer_backward


@dataclass(frozen=True)
class PeakEstimate:
    """The estimated peak of a step, in bytes, and its parts."""

    static: int  # weights and buffers allocated before training, gradients, optimizer states
    kept: int  # activations kept to the backward
    transient: int  # the loss's or the backward's working memory at the peak

    @property
    def total(self) -> int:
        return self.static + self.kept + self.transient


@dataclass(frozen=True)
class CheckpointPlan:
    """Which decoder layers recompute their activations, and the estimate it was chosen by."""

    recomputed: frozenset[int]
    layers: int
    estimate: PeakEstimate
    budget: int
    fits: bool

    def line(self) -> str:
        n = len(self.recomputed)
        choice = ("no gradient checkpointing" if n == 0 else "gradient checkpointing of all "
                  f"{self.layers} decoder layers" if n == self.layers else
                  f"gradient checkpointing of {n} of {self.layers} decoder layers")
        e = self.estimate
        fit = "" if self.fits else "; even so it may not fit: lower --max_length or the batch"
        return (f"memory plan (--gradient_checkpointing auto): {choice}; estimated peak {e.total / GIB:.1f} GiB "
                f"(weights, gradients, optimizer {e.static / GIB:.1f}, activations {e.kept / GIB:.1f}, working "
                f"{e.transient / GIB:.1f}) of {self.budget / GIB:.1f} GiB usable{fit}")


def probe_activations(model: nn.Module, layers: nn.ModuleList, inputs: dict, hidden_size: int,
                      step_context=contextlib.nullcontext) -> ActivationProbe:
    """What one forward over `inputs` (a collated training batch on the model's device, labels dropped) keeps for
    the backward, by decoder layer, with every decoder layer's checkpointing off during the probe. Each saved
    storage is counted once per layer it is saved in and none is kept. `step_context()`: the training step's own
    context (autocast, LoRA input casting), so that what is saved has the dtypes training saves."""
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    per_layer = [0] * len(layers)
    outside = 0
    current: list[int | None] = [None]
    held: list[torch.Tensor] = []  # this layer's saved tensors, alive until it ends: one count per storage
    counted: set[int] = set()

    def pack(tensor: torch.Tensor):
        nonlocal outside
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer in weights or pointer in counted or storage.device.type == "meta":
            return None
        counted.add(pointer)
        held.append(tensor)
        if current[0] is None:
            outside += storage.nbytes()
        else:
            per_layer[current[0]] += storage.nbytes()
        return None

    def unpack(_):
        raise RuntimeError("the activation probe keeps no tensor for a backward pass")

    def enter(index: int):
        def hook(module, args, kwargs=None):
            release()
            current[0] = index
        return hook

    def leave(module, args, output):
        release()
        current[0] = None

    def release():
        counted.difference_update(t.untyped_storage().data_ptr() for t in held)
        held.clear()

    handles = []
    for index, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(enter(index)))
        handles.append(layer.register_forward_hook(leave))
    inputs = model_inputs(inputs)
    tokens = inputs["input_ids"].numel()  # every position runs through the layers, a row's padding too
    try:
        with checkpointing_off(layers), torch.enable_grad(), step_context(), \
                torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            model(**inputs, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
        release()
    # The hidden states' dtype is the input embedding's (float32 where a float16 run trains it in float32).
    dtype_bytes = max(p.element_size() for p in model.get_input_embeddings().parameters())
    return ActivationProbe(tokens=tokens, per_layer=per_layer, outside=outside,
                           layer_input=tokens * hidden_size * dtype_bytes)


def model_inputs(batch: dict) -> dict:
    """A collated batch without what only the loss reads (labels, --loss_scale's weights)."""
    return {k: v for k, v in batch.items() if k not in ("labels", "loss_scale")}


def estimate_peak(probe: ActivationProbe, recomputed: frozenset[int], tokens: int, static: int,
                  loss_transient: int) -> PeakEstimate:
    """The peak for `tokens` tokens per step with `recomputed` layers checkpointed (see the module docstring):
    what is kept at the end of the forward, plus the larger of the loss's working memory and the backward's
    (one recomputed layer's activations again, and what a layer's backward allocates: probe.backward_working)."""
    scale = tokens / probe.tokens
    kept = probe.outside + len(recomputed) * probe.layer_input + sum(
        size for i, size in enumerate(probe.per_layer) if i not in recomputed)
    recompute = max((probe.per_layer[i] for i in recomputed), default=0)
    backward = recompute + probe.backward_working
    return PeakEstimate(static=static, kept=round(kept * scale),
                          transient=max(loss_transient, round(backward * scale)))


def plan_checkpointing(probe: ActivationProbe, tokens: int, static: int, loss_transient: int,
                       usable: int) -> CheckpointPlan:
    """The fewest recomputed layers (those keeping the most first) whose estimate fits BUDGET_SHARE of
    `usable` bytes; all of them when none does."""
    budget = int(usable * BUDGET_SHARE)
    order = sorted(range(len(probe.per_layer)), key=lambda i: (-probe.per_layer[i], i))
    for count in range(len(order) + 1):
        recomputed = frozenset(order[:count])
        estimate = estimate_peak(probe, recomputed, tokens, static, loss_transient)
        if estimate.total <= budget:
            return CheckpointPlan(recomputed, len(order), estimate, budget, fits=True)
    return CheckpointPlan(frozenset(order), len(order), estimate, budget, fits=False)


def static_bytes(model: nn.Module, allocated: int, copied: nn.Module | None = None) -> int:
    """What a step holds besides activations: `allocated` (weights and buffers, measured) plus the gradients and
    AdamW's moments of every trained parameter, as the run summary counts them (summary.memory_estimate), and
    the gradients of `copied`'s trained parameters once more (CUDA graphs with gradient accumulation: each in graph
    memory and its copy, graph_gradients.py; an upper bound, as the graphs may reuse a copied gradient's memory)."""
    trained = [p for p in model.parameters() if p.requires_grad]
    copied_trained = [p for p in copied.parameters() if p.requires_grad] if copied is not None else []
    held = memory_estimate(0, _bytes(trained), sum(p.numel() for p in trained), 0)
    return allocated + held.gradients + _bytes(copied_trained) + held.optimizer


def _bytes(params: list[nn.Parameter]) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def apply_plan(layers: nn.ModuleList, recomputed: frozenset[int]) -> None:
    """Checkpointing on for the planned decoder layers, off for the others (transformers' per-layer switch)."""
    for index, layer in enumerate(layers):
        if hasattr(layer, "gradient_checkpointing"):
            layer.gradient_checkpointing = index in recomputed


@dataclass(frozen=True)
class RunMemory:
    """What the plan of a run is made from: the probe, the static bytes, the loss's working memory, the bytes the
    process can use and the tokens of a step."""

    probe: ActivationProbe
    static: int
    loss_transient: int
    usable: int
    step_tokens: int

    def estimate(self, recomputed: frozenset[int]) -> PeakEstimate:
        return estimate_peak(self.probe, recomputed, self.step_tokens, self.static, self.loss_transient)

    def plan(self) -> CheckpointPlan:
        return plan_checkpointing(self.probe, self.step_tokens, self.static, self.loss_transient, self.usable)


def measure_run_memory(model: nn.Module, layers: nn.ModuleList, batch: dict, step_tokens: int, chunked_loss: bool,
                       dtype: torch.dtype, device: torch.device, copied_gradients: bool = False,
                       compiled: bool = False) -> RunMemory:
    """For a run on `device` (CUDA): the model moved there (as the Trainer would), `batch` (the collated longest
    row) probed under the training step's autocast and LoRA input casting, the memory the process can use read
    from the device; `step_tokens`: tokens of a step (every row of a batch, padding included); `copied_gradients`: the
    decoder layers' gradients are copied out of CUDA graph memory (static_bytes); `compiled`: the decoder layers will
    be compiled, so the probe counts what their compiled graphs save (compile.layers_compiled_for_probing; about
    a third less than eager on the Qwen3-VL-4B shape), or what eager layers save where that probe fails. The loss's
    working memory (at `step_tokens`) and the backward's of the layer keeping the most are measured by running them
    (working_memory.py); where a measurement fails they are counted by formula."""
    from vlft.train.chunked_loss import CHUNK
    from vlft.train.trainer import LoraLayers

    if next(model.parameters()).device != device:  # quantized models load onto the device; others move there
        model.to(device)
    text = model.config.get_text_config()
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    lora = LoraLayers(model)
    half = dtype in (torch.bfloat16, torch.float16)

    def step_context():
        stack = contextlib.ExitStack()
        if half:
            stack.enter_context(torch.autocast(device.type, dtype=dtype))
            stack.enter_context(lora.input_casting_off())
        return stack

    training = model.training
    model.train()
    try:
        seen = layer_inputs(model, layers, batch, step_context)
        probe = None
        if compiled:
            try:
                with layers_compiled_for_probing(model):
                    probe = probe_activations(model, layers, batch, text.hidden_size, step_context)
                    probe = with_layer_backward(probe, layers, seen, device, step_context)
            except Exception as e:  # a graph the partition cannot take: eager's count is an upper bound
                logger.warning(f"memory plan: counting what eager layers keep ({type(e).__name__} probing the "
                               f"compiled ones: {first_line(e)})")
                probe = None
        if probe is None:
            probe = probe_activations(model, layers, batch, text.hidden_size, step_context)
            probe = with_layer_backward(probe, layers, seen, device, step_context)
        del seen
        loss_transient = measured("the loss's working memory", device, lambda: loss_working_bytes(
            model, step_tokens, chunked_loss, dtype, device, step_context))
    finally:
        model.train(training)
    if loss_transient is None:
        loss_transient = loss_transient_bytes(step_tokens, text.vocab_size, text.hidden_size, chunked_loss, CHUNK,
                                              dtype.itemsize)
    static = static_bytes(model, torch.cuda.memory_allocated(device), layers if copied_gradients else None)
    return RunMemory(probe=probe, static=static, loss_transient=loss_transient,
                     usable=torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device),
                     step_tokens=step_tokens)


def layer_inputs(model: nn.Module, layers: nn.ModuleList, batch: dict, step_context) -> dict:
    """The first decoder layer's input and every layer's other arguments (working_memory.first_layer_input), from a
    forward without gradients and without the layers' checkpoints."""
    with checkpointing_off(layers), first_layer_input(layers) as seen, torch.no_grad(), step_context():
        model(**model_inputs(batch), logits_to_keep=1)
    return seen


def with_layer_backward(probe: ActivationProbe, layers: nn.ModuleList, seen: dict, device: torch.device,
                        step_context) -> ActivationProbe:
    """`probe` with the measured working memory of the backward of the layer keeping the most (run as the layers
    run now: compiled for probing or eager)."""
    index = max(range(len(layers)), key=lambda i: probe.per_layer[i])
    size = measured(f"decoder layer {index}'s backward", device, lambda: layer_backward_bytes(
        layers[index], seen["hidden"], seen["calls"][index], device, step_context))
    return probe if size is None else dataclasses.replace(probe, layer_backward=size)


def measured(what: str, device: torch.device, measure) -> int | None:
    """measure(), or None (logged) where it fails, such as out of memory: the estimate then counts by formula."""
    try:
        return measure()
    except Exception as e:
        torch.cuda.empty_cache()
        logger.warning(f"memory plan: {what} estimated, not measured ({type(e).__name__}: {first_line(e)})")
        return None


def first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else ""
