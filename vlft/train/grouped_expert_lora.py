"""LoRA on MoE experts computed per routed token group, next to the experts' grouped GEMM.

PEFT's LoRA on transformers' fused expert weights (`target_parameters`, its ParamWrapper) parametrizes each
weight as W + scaling * B A for every expert of the layer in every forward: on Qwen3-VL-30B-A3B that is a
second copy of 128 experts' weights built, used and kept for the backward pass, per layer. Here the adapters
act on the activations instead: each routed token group goes x -> A_e -> B_e beside the base grouped GEMM
(two thin grouped GEMMs of rank r), so nothing of the experts' size is built.

The adapters stay PEFT's own (a ParamWrapper subclass registered through LoraConfig's custom-module mapping, so
lora_A / lora_B keep PEFT's `target_parameters` layout: A expert-major [experts * r, in], B expert-minor
[out, r * experts]); saved adapters, merging and inference are PEFT's. Routing, routing weights and the
router's auxiliary loss stay the model's (its MoE block calls the experts as before). Where this path does not
apply (DeepSpeed ZeRO-3's partitioned weights, several active adapters, a merged adapter, an experts module
of another shape) PEFT's own forward runs."""

from __future__ import annotations

import torch
from peft.tuners.lora.layer import ParamWrapper as PeftParamWrapper

from vlft.model.grouped_gemm import grouped_matmul

PROJECTIONS = ("gate_up_proj", "down_proj")  # transformers' fused gated experts (gate and up concatenated)


def _adapter_factors(wrapper: PeftParamWrapper, adapter: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(A_t [experts, in, r], B_t [experts, r, out]) of one wrapped expert weight, for grouped_matmul."""
    experts = wrapper.num_experts
    a = wrapper.lora_A[adapter].weight  # [experts * r, in], expert-major
    b = wrapper.lora_B[adapter].weight  # [out, r * experts], expert-minor
    a_t = a.reshape(experts, -1, a.shape[-1]).transpose(1, 2)
    b_t = b.reshape(b.shape[0], -1, experts).permute(2, 1, 0).contiguous()
    return a_t.to(dtype), b_t.to(dtype)


class ParamWrapper(PeftParamWrapper):
    """PEFT's ParamWrapper on a fused expert weight; the outermost one of an experts module runs the experts and
    every adapter on them grouped (see the module's docstring). It keeps PEFT's class name: PEFT nests a second
    weight's wrapper only around a module whose class is named ParamWrapper."""

    def _chain(self) -> tuple[torch.nn.Module, dict[str, PeftParamWrapper]]:
        """The experts module under the wrappers, and the wrapper of each adapted weight."""
        wrappers, module = {}, self
        while isinstance(module, PeftParamWrapper):
            wrappers[module.parameter_name] = module
            module = module.base_layer
        return module, wrappers

    def _grouped_adapter(self, wrappers: dict[str, PeftParamWrapper]) -> str | None:
        """The one adapter every wrapper runs, when the grouped path applies."""
        experts, _ = self._chain()
        adapters = set()
        for wrapper in wrappers.values():
            active = [name for name in wrapper.active_adapters if name in wrapper.lora_A]
            if wrapper.disable_adapters or wrapper.merged or len(active) != 1:
                return None
            adapters.add(active[0])
        shape_ok = (getattr(experts, "has_gate", False) and not getattr(experts, "has_bias", True)
                    and getattr(experts, "is_concatenated", False) and not getattr(experts, "has_post_expert_norm", True)
                    and not getattr(experts, "_is_expert_parallel", True) and set(wrappers) <= set(PROJECTIONS))
        partitioned = any(hasattr(getattr(experts, name), "ds_id") for name in PROJECTIONS)  # DeepSpeed ZeRO-3
        return adapters.pop() if len(adapters) == 1 and shape_ok and not partitioned else None

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        experts, wrappers = self._chain()
        adapter = self._grouped_adapter(wrappers) if not kwargs and len(args) == 2 else None
        if adapter is None:
            return super().forward(hidden_states, *args, **kwargs)
        top_k_index, top_k_weights = args
        return grouped_experts_forward(experts, wrappers, adapter, hidden_states, top_k_index, top_k_weights)


def _projection(experts, wrappers: dict[str, PeftParamWrapper], adapter: str, name: str, x: torch.Tensor,
                ends: torch.Tensor) -> torch.Tensor:
    """One fused expert weight (and its adapter, when it has one) on the grouped rows x."""
    weight = getattr(experts, name)
    weight_t = weight if experts.is_transposed else weight.transpose(1, 2)  # [experts, in, out]
    x = x.to(weight.dtype)
    out = grouped_matmul(x, weight_t, ends)
    wrapper = wrappers.get(name)
    if wrapper is not None:
        a_t, b_t = _adapter_factors(wrapper, adapter, x.dtype)
        out = out + grouped_matmul(grouped_matmul(x, a_t, ends), b_t, ends) * wrapper.scaling[adapter]
    return out


def grouped_experts_forward(experts, wrappers: dict[str, PeftParamWrapper], adapter: str, hidden_states: torch.Tensor,
                            top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
    """transformers' grouped-GEMM experts forward (sort the token-expert pairs by expert, both projections per
    expert group, the gate, the routing weights, back to token order) with the adapters added per group."""
    top_k = top_k_index.shape[-1]
    expert_ids, order = torch.sort(top_k_index.reshape(-1))
    x = hidden_states[order // top_k]
    counts = torch.histc(expert_ids.float() if expert_ids.device.type == "cpu" else expert_ids.int(),
                         bins=experts.num_experts, min=0, max=experts.num_experts - 1)
    ends = torch.cumsum(counts, dim=0, dtype=torch.int32)
    hidden = experts._apply_gate(_projection(experts, wrappers, adapter, "gate_up_proj", x, ends))
    out = _projection(experts, wrappers, adapter, "down_proj", hidden, ends)
    out = out * top_k_weights.reshape(-1)[order].unsqueeze(-1)
    unsorted = torch.empty_like(out).index_copy_(0, order, out)
    return unsorted.view(-1, top_k, out.shape[-1]).sum(dim=1).to(hidden_states.dtype)


def register_grouped_expert_lora(config, model, expert_parameters: list[str]) -> None:
    """Have PEFT wrap the experts modules of `expert_parameters` (model parameter names) with this ParamWrapper."""
    classes = {type(model.get_submodule(name.rsplit(".", 1)[0])) for name in expert_parameters}
    config._register_custom_module({cls: ParamWrapper for cls in classes})
