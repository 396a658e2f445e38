"""vlft's Megatron-Core LoRA adapters (lora.py) as a standard PEFT adapter of the HF model, both ways: written
beside a run's checkpoints (`vlft infer --adapters` and `vlft export --merge_lora` take it), and read with
`--adapters` to start from one. PEFT's keys: `base_model.model.<HF module>.lora_A.weight` (r x in) and
`.lora_B.weight` (out x r); MoE experts as PEFT's `target_parameters` LoRA on transformers' fused
`mlp.experts.gate_up_proj` and `.down_proj`: A of all experts stacked expert-major ([E * r, in]), B
expert-minor ([out, r * E], column j * E + e is expert e's column j). PEFT nests the second targeted parameter
around the first: gate_up_proj's adapter is `mlp.experts.base_layer.lora_*`, down_proj's `mlp.experts.lora_*`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vlft.families.base import Family
from vlft.families.mcore_layout import LayerNames

PEFT_PREFIX = "base_model.model."


def _expert_module(family: Family, field: str) -> str:
    """The PEFT module (relative to a decoder layer) of an expert projection's adapter: PEFT wraps the experts
    module once per targeted parameter, the first (gate_up) innermost."""
    return f"{family.modules.experts}.base_layer" if field == "experts_gate_up" else family.modules.experts


def _decoder_layers(model):
    return [(layer.layer_number - 1, layer) for layer in model.language_model.decoder.layers]


def _dense_adapters(layer, names: LayerNames):
    """(HF module relative to the decoder layer, Adapter) of a layer's non-expert linears."""
    attention, mlp = layer.self_attention, layer.mlp
    for module in (attention.linear_qkv, attention.linear_proj, getattr(mlp, "linear_fc1", None),
                   getattr(mlp, "linear_fc2", None)):
        if module is not None and hasattr(module, "lora"):
            for field, adapter in module.lora.adapters.items():
                yield getattr(names, field), adapter


def _expert_adapters(layer, ep_rank: int):
    """(LayerNames field, global expert index, Adapter) of the layer's local experts."""
    experts = getattr(layer.mlp, "experts", None)
    if experts is None:
        return
    local = experts.local_experts
    for j, expert in enumerate(local):
        for linear in (expert.linear_fc1, expert.linear_fc2):
            if hasattr(linear, "lora"):
                for field, adapter in linear.lora.adapters.items():
                    yield field, ep_rank * len(local) + j, adapter


def peft_tensors(model, family: Family, names: LayerNames, num_experts: int) -> dict[str, torch.Tensor]:
    """The whole PEFT adapter (collective over the expert-parallel group; every rank returns it)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    layers = family.modules.decoder_layers
    tensors: dict[str, torch.Tensor] = {}
    experts: dict[tuple[int, str], dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
    ep_rank = parallel_state.get_expert_model_parallel_rank()
    for i, layer in _decoder_layers(model):
        for module, adapter in _dense_adapters(layer, names):
            base = f"{PEFT_PREFIX}{layers}.{i}.{module}"
            tensors[f"{base}.lora_A.weight"] = adapter.A.detach().cpu().float()
            tensors[f"{base}.lora_B.weight"] = adapter.B.detach().cpu().float()
        for name, e, adapter in _expert_adapters(layer, ep_rank):
            experts.setdefault((i, name), {})[e] = (adapter.A.detach().cpu().float(), adapter.B.detach().cpu().float())
    if parallel_state.get_expert_model_parallel_world_size() > 1:
        gathered = [None] * parallel_state.get_expert_model_parallel_world_size()
        dist.all_gather_object(gathered, experts, group=parallel_state.get_expert_model_parallel_group())
        experts = {}
        for part in gathered:
            for key, by_expert in part.items():
                experts.setdefault(key, {}).update(by_expert)
    for (i, name), by_expert in sorted(experts.items()):
        if len(by_expert) != num_experts:
            raise RuntimeError(f"layer {i} {name}: adapters of {len(by_expert)} experts gathered, not {num_experts}")
        a = torch.cat([by_expert[e][0] for e in range(num_experts)])  # [E * r, in], expert-major
        b = torch.stack([by_expert[e][1] for e in range(num_experts)], dim=-1).flatten(1)  # [out, r * E]
        base = f"{PEFT_PREFIX}{layers}.{i}.{_expert_module(family, name)}"
        tensors[f"{base}.lora_A.weight"], tensors[f"{base}.lora_B.weight"] = a, b
    return tensors


@torch.no_grad()
def load_peft_tensors(model, family: Family, names: LayerNames, tensors: dict[str, torch.Tensor],
                      source: str) -> None:
    """Fill this rank's adapters from a PEFT adapter's tensors; a ValueError naming what does not match."""
    from megatron.core import parallel_state

    others = sorted(key for key in tensors if ".lora_A." not in key and ".lora_B." not in key)
    if others:  # --modules_to_save copies (a grown embedding, say): not LoRA, and Megatron's model has no place
        raise ValueError(f"{source}: holds {len(others)} tensor(s) besides LoRA's ({others[0]}, ...: "
                         "--modules_to_save?), which vlft megatron sft does not load; merge the adapter first "
                         "(vlft export --merge_lora true) and train the merged model")
    layers = family.modules.decoder_layers
    ep_rank = parallel_state.get_expert_model_parallel_rank()
    used = set()

    def take(key: str, shape) -> torch.Tensor:
        if key not in tensors:
            raise ValueError(f"{source}: no {key} (the adapter must target what --target_modules names, at "
                             "--lora_rank)")
        used.add(key)
        return tensors[key]

    def fill(adapter, a: torch.Tensor, b: torch.Tensor, key: str) -> None:
        if a.shape != adapter.A.shape or b.shape != adapter.B.shape:
            raise ValueError(f"{source}: {key}: A {tuple(a.shape)} / B {tuple(b.shape)}, the model's adapter "
                             f"needs {tuple(adapter.A.shape)} / {tuple(adapter.B.shape)} (another --lora_rank?)")
        adapter.A.copy_(a)
        adapter.B.copy_(b)

    for i, layer in _decoder_layers(model):
        for module, adapter in _dense_adapters(layer, names):
            base = f"{PEFT_PREFIX}{layers}.{i}.{module}"
            fill(adapter, take(f"{base}.lora_A.weight", None), take(f"{base}.lora_B.weight", None), base)
        for name, e, adapter in _expert_adapters(layer, ep_rank):
            base = f"{PEFT_PREFIX}{layers}.{i}.{_expert_module(family, name)}"
            a, b = take(f"{base}.lora_A.weight", None), take(f"{base}.lora_B.weight", None)
            rank = adapter.A.shape[0]
            experts = a.shape[0] // rank
            fill(adapter, a[e * rank:(e + 1) * rank], b.reshape(b.shape[0], rank, experts)[:, :, e], base)


def read_adapter(path: Path) -> dict[str, torch.Tensor]:
    """A PEFT adapter dir's tensors, keys without PEFT's adapter name."""
    from safetensors.torch import load_file

    tensors = load_file(str(Path(path) / "adapter_model.safetensors"))
    return {key.replace(".default.", "."): value for key, value in tensors.items()}


def write_adapter(directory: Path, tensors: dict[str, torch.Tensor], adapted: list[str], family: Family,
                  names: LayerNames, settings, base_model: str, dtype: torch.dtype) -> None:
    """adapter_model.safetensors and adapter_config.json, as PEFT writes them for vlft sft's adapters."""
    import re

    from peft import LoraConfig
    from safetensors.torch import save_file

    layers = family.modules.decoder_layers
    experts = "." + family.modules.experts
    modules = [f"{layers}.{name}" for name in adapted if not name.endswith(experts)]
    parameters = [f"{layers}.{name}.{projection}" for name in adapted if name.endswith(experts)
                  for projection in (names.experts_gate_up, names.experts_down)]
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        use_rslora=settings.rslora,
                        target_modules="^(?:" + "|".join(re.escape(m) for m in modules) + ")$" if modules else None,
                        target_parameters=parameters or None, base_model_name_or_path=base_model)
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(directory))
    save_file({key: value.to(dtype).contiguous() for key, value in tensors.items()},
              str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    (directory / "adapter_config.json").write_text(json.dumps(json.loads(
        (directory / "adapter_config.json").read_text()), indent=2, sort_keys=True) + "\n")
