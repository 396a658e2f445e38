"""MoE experts as two grouped GEMMs, with Megatron-Core's SequentialMLP's parameters.

Megatron-Core 0.16.1 without TransformerEngine runs the local spec's experts one by one (SequentialMLP: a
Python loop of 2 GEMMs and an activation per expert, 128 experts a layer on Qwen3-VL-30B-A3B); its grouped
module needs the `grouped_gemm` CUDA extension. This module keeps SequentialMLP's children (`local_experts.{j}.
linear_fc1 / linear_fc2`), so every key, the distributed checkpoint, the HF mapping and the expert LoRA are
unchanged, and runs the routed tokens of all local experts through torch's grouped GEMM
(`torch.nn.functional.grouped_mm`), the one transformers' experts use in `vlft sft`. Expert LoRA adapters (lora.py)
run grouped the same way: x -> A_e -> B_e per expert's token group, W + BA never built.

The stacked weights are not kept for the backward pass: a saved-tensor hook stores a note instead and stacks them
again when the gradient needs them (else every MoE layer would hold a copy of its experts until its backward).
Where torch's grouped GEMM does not run (CPU, float32) the groups are multiplied one by one: the same module and
the same arithmetic, which the CPU tests check against SequentialMLP's own loop."""

from __future__ import annotations

import torch

from vlft.megatron.lora import grouped_adapters_output
from vlft.model.grouped_gemm import grouped_matmul


class _RestackedWeights:
    """Autograd keeps this note instead of a stacked copy of the experts' weights; unpacking stacks them again."""

    def __init__(self, weights: list[torch.Tensor]):
        self.weights = weights

    def unpack(self) -> torch.Tensor:
        return torch.stack([w.detach() for w in self.weights]).transpose(1, 2)


def grouped_linear(x: torch.Tensor, linears, sizes: list[int], ends: torch.Tensor) -> torch.Tensor:
    """Megatron-Core linears (one per expert, nn.Linear layout, no bias) applied to their token groups, with their
    LoRA adapters where lora.py attached them."""
    weights = [linear.weight for linear in linears]
    stacked = torch.stack(weights).transpose(1, 2)  # [experts, in, out]
    pointer = stacked.data_ptr()

    def pack(tensor: torch.Tensor):
        return _RestackedWeights(weights) if tensor.data_ptr() == pointer and tensor.shape == stacked.shape else tensor

    def unpack(saved):
        return saved.unpack() if isinstance(saved, _RestackedWeights) else saved

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        out = grouped_matmul(x, stacked, ends, sizes)
    if getattr(linears[0], "lora", None) is not None:
        out = out + grouped_adapters_output([linear.lora for linear in linears], x, lambda a, w: grouped_matmul(
            a, w, ends, sizes)).to(out.dtype)
    return out


def grouped_sequential_mlp_class():
    from megatron.core.transformer.moe.experts import SequentialMLP

    class GroupedSequentialMLP(SequentialMLP):
        """SequentialMLP whose forward runs all local experts at once (see the module's docstring)."""

        def _runs_grouped(self) -> bool:
            config = self.config
            return (self.num_local_experts > 1 and config.gated_linear_unit and not config.add_bias_linear
                    and not config.moe_apply_probs_on_input and not (config.fp8 or config.fp4)
                    and not config.use_te_activation_func)

        def forward(self, hidden: torch.Tensor, tokens_per_expert: torch.Tensor, probs: torch.Tensor):
            if not self._runs_grouped():
                return super().forward(hidden, tokens_per_expert, probs)
            config = self.config
            sizes = tokens_per_expert.tolist()  # on the host already (the token dispatcher moved it there)
            ends = torch.cumsum(tokens_per_expert, 0).to(device=hidden.device, dtype=torch.int32, non_blocking=True)
            experts = self.local_experts
            up = grouped_linear(hidden, [expert.linear_fc1 for expert in experts], sizes, ends)
            # MLP.forward's unfused gated activation and per-token scale, in its order and dtypes
            gate, linear = torch.chunk(up, 2, dim=-1)
            if (clamp := config.activation_func_clamp_value) is not None:
                gate, linear = gate.clamp(min=None, max=clamp), linear.clamp(min=-clamp, max=clamp)
            inner = config.activation_func(gate) * (linear + config.glu_linear_offset)
            inner = (inner * probs.unsqueeze(-1)).to(inner.dtype)
            return grouped_linear(inner, [expert.linear_fc2 for expert in experts], sizes, ends), None

    return GroupedSequentialMLP


def with_grouped_experts(moe_spec):
    """Megatron-Core's local MoE module spec with its SequentialMLP experts run grouped (same parameters)."""
    moe_spec.submodules.experts.module = grouped_sequential_mlp_class()
    return moe_spec
