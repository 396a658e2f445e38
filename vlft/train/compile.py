"""`--torch_compile true`: every decoder layer of the language model compiled with torch.compile, one
layer at a time (regional compilation), instead of transformers' whole-model compile.

A layer's graph holds its gradient checkpoint too, so the recomputation in the backward pass runs
compiled as well, and the compiler fuses what eager mode runs as many small kernels: RMSNorm, the q/k
norms, rotary, SwiGLU, LoRA's dropout, scale and add, the residuals. The layers are identical, so one
graph serves all of them (torch passes their parameters as graph inputs). The attention kernel is in the
graph: the packed row's boundaries reach it as arguments (attention.py), nothing is read back to the
host inside a layer. What lies between the layers (vision tower, deepstack, loss) runs as before.

`compile_frozen_vision_blocks` compiles a frozen vision tower's blocks (--freeze_vit true, the default),
forward only: nothing of them is needed for the backward pass (neither their weights nor their inputs need
gradients), so their gradient checkpointing is switched off and each block runs as one graph instead of a
few dozen eager launches. `vlft sft --torch_compile true` calls it after compile_decoder_layers. Tested on
CPU (no graph break, eager's output) and in the bf16 GPU parity test; on an H200 the frozen tower's forward
of a 4B step went from 41.7 to 30.1 ms (3 ms of it matmuls; BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from vlft.families import family_of, module_at
from vlft.families.base import DecoderKind


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The language model's decoder layers (the family's `decoder_layers` path)."""
    return module_at(model, family_of(model).modules.decoder_layers)


def compile_decoder_layers(model: nn.Module, backend: str = "inductor", mode: str | None = None) -> tuple[int, int]:
    """Compile every decoder layer in place (nn.Module.compile); returns (layers, layers compiled whole).
    Shapes become dynamic at the second distinct row length (torch's default), so rows of varying length
    do not recompile.

    `mode` is torch.compile's, for the layers compiled whole; "reduce-overhead" replays each layer's
    forward and backward kernels as CUDA graphs (one launch instead of ~100 per layer and pass), which needs
    rows of one fixed shape (PaddingFreeCollator's fixed_shape) and the boundaries the collator gives.

    MoE layers compile whole too: their experts run as grouped GEMMs over the token-expert pairs sorted by expert
    (transformers' `grouped_mm` experts, or grouped_expert_lora.py with expert LoRA), whose shapes do not depend
    on the routing, and the one-by-one CPU fallback is one custom operator (model/grouped_gemm.py), so routing
    breaks no graph.

    Two kinds of layer are compiled part by part instead (attention block, MLP, norms; the checkpoint and
    the residual adds stay eager):
    - layers with torch's nn.Dropout (p > 0): torch 2.11's partitioner fails on random ops inside a compiled
      checkpoint on CUDA ("Node ... was invalid, but is output", measured on an H100). `vlft sft` swaps PEFT's
      LoRA dropouts for counter_dropout.CounterDropout before compiling, which has no random op, so LoRA
      layers with --lora_dropout > 0 compile whole there;
    - linear-attention layers (Qwen3.5's Gated DeltaNet): their mixer keeps packed samples apart with fla's
      Triton kernels or a per-sample loop (linear_attention.py), neither of which the compiler traces; the
      mixer stays eager, the other parts compile.
    Their parts use the default mode (CUDA graphs around parts inside an eager checkpoint were not tried).
    """
    family = family_of(model)
    kinds = family.decoder_kinds(model.config.get_text_config())
    layers = decoder_layers(model)
    whole = 0
    for layer, kind in zip(layers, kinds):
        if whole_layer_compiles(layer, kind):
            layer.compile(backend=backend, mode=mode)
            whole += 1
        else:
            for name, part in layer.named_children():
                if name != family.modules.linear_attention:
                    part.compile(backend=backend)
    return len(layers), whole


# torch's backend that stops after inductor's decompositions and its partition of the forward from the backward: it
# generates no kernel, and a forward through it saves for the backward what inductor's compiled graphs save.
PARTITION_ONLY = "aot_eager_decomp_partition"


@contextlib.contextmanager
def layers_compiled_for_probing(model: nn.Module) -> Iterator[None]:
    """The decoder layers compiled as compile_decoder_layers compiles them, with PARTITION_ONLY: what a forward saves
    is what the compiled layers will save (the min-cut partition recomputes cheap pointwise results, such as the
    norms' outputs, SwiGLU's product and LoRA's counter-based dropout, instead of keeping them). Afterwards every
    layer and part calls its eager forward again and dynamo's caches are emptied, so that the probe's graphs count
    toward no recompile limit; nothing may be compiled before (the memory plan runs before compile_decoder_layers)."""
    modules = [module for layer in decoder_layers(model) for module in (layer, *layer.children())]
    compile_decoder_layers(model, backend=PARTITION_ONLY)
    try:
        yield
    finally:
        for module in modules:
            module._compiled_call_impl = None  # nn.Module.compile's own attribute: None calls forward eagerly
        torch._dynamo.reset()


def whole_layer_compiles(layer: nn.Module, kind: DecoderKind) -> bool:
    """False for linear-attention layers and layers with active dropout (see compile_decoder_layers)."""
    dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for m in layer.modules())
    return not (kind.attention == "linear" or dropout)


def vision_blocks(model: nn.Module) -> nn.ModuleList:
    """The vision tower's blocks (the family's `vision_blocks` path)."""
    return module_at(model, family_of(model).modules.vision_blocks)


def compile_frozen_vision_blocks(model: nn.Module, backend: str = "inductor") -> int:
    """Compile every vision block in place when none of their weights train (see the module docstring);
    returns how many were compiled (0 when the ViT trains: its blocks then stay eager)."""
    blocks = vision_blocks(model)
    if any(param.requires_grad for param in blocks.parameters()):
        return 0
    for block in blocks:
        if hasattr(block, "gradient_checkpointing"):
            block.gradient_checkpointing = False  # nothing to recompute: no gradient flows through the block
        block.compile(backend=backend)
    return len(blocks)
