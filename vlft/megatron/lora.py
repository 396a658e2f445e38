"""LoRA on vlft's Megatron-Core model, in PEFT's terms: one adapter (A: r x in, B: out x r) per HF projection, so
that a run's adapters are a standard PEFT adapter of the HF model with no approximation. Megatron-Core fuses
projections (q, k and v into `linear_qkv`, per query group; gate and up into `linear_fc1`): the adapters of a fused
linear add their products in its output layout, through a forward hook on the linear (its public hook). MoE
experts get one adapter per expert, as PEFT's `target_parameters` LoRA on transformers' fused expert weights.

Tensor parallelism 1 only (Megatron-Core's local spec trains MoE layers at TP 1): each adapter is whole on its
rank. Expert adapters are marked `allreduce = False`, so Megatron-Core's DDP reduces their gradients over the
expert-data-parallel ranks that hold the same experts, as it does the experts'."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vlft.families.mcore_layout import LayerNames


class Adapter(nn.Module):
    """One projection's A and B (PEFT's initialisation: A Kaiming-uniform, B zero)."""

    def __init__(self, in_features: int, out_features: int, rank: int, dtype: torch.dtype, device):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features, dtype=dtype, device=device))
        self.B = nn.Parameter(torch.zeros(out_features, rank, dtype=dtype, device=device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.A.t()) @ self.B.t()


class LinearAdapters(nn.Module):
    """The adapters of one Megatron-Core linear, by HF projection name, and how their outputs make the linear's:
    `groups` > 0 interleaves q, k and v per query group (linear_qkv); otherwise the outputs are concatenated in
    order (gate then up for linear_fc1)."""

    def __init__(self, adapters: dict[str, Adapter], scaling: float, dropout: float, groups: int = 0):
        super().__init__()
        self.adapters = nn.ModuleDict(adapters)
        self.scaling, self.groups = scaling, groups
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x).to(next(self.parameters()).dtype)
        outputs = [adapter(x) for adapter in self.adapters.values()]
        if self.groups:
            outputs = [out.reshape(*out.shape[:-1], self.groups, -1) for out in outputs]
            return torch.cat(outputs, dim=-1).flatten(-2) * self.scaling
        return torch.cat(outputs, dim=-1) * self.scaling


def grouped_adapters_output(loras: list[LinearAdapters], x: torch.Tensor, matmul) -> torch.Tensor:
    """The adapters of a group of linears (one per MoE expert, the same projections each) on their token groups
    at once: `matmul(rows, weights_t)` multiplies each group's rows by its own matrix of weights_t [groups, in,
    out] (grouped_experts.grouped_matmul). Equals each linear's LinearAdapters on its own rows."""
    first = loras[0]
    if first.groups:
        raise ValueError("grouped adapters add their outputs in order; q/k/v interleaving is not grouped")
    x = first.dropout(x).to(next(first.parameters()).dtype)
    outputs = []
    for name in first.adapters:
        down = torch.stack([lora.adapters[name].A for lora in loras]).transpose(1, 2)  # [groups, in, r]
        up = torch.stack([lora.adapters[name].B for lora in loras]).transpose(1, 2)  # [groups, r, out]
        outputs.append(matmul(matmul(x, down), up))
    return torch.cat(outputs, dim=-1) * first.scaling


def _hook(module, args, output):
    """A Megatron-Core linear's output (out, bias) with its adapters' contribution added to `out`."""
    out, bias = output
    return out + module.lora(args[0]).to(out.dtype), bias


@dataclass(frozen=True)
class LoraSettings:
    rank: int
    alpha: int
    dropout: float
    rslora: bool
    experts: bool  # adapters on the MoE experts too
    projections: frozenset[str]  # the LayerNames fields adapted (q, k, v, o, gate, up, down)

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


# Adapters are keyed by the family's LayerNames field of their HF projection; fused together in Megatron-Core:
ATTENTION = ("q", "k", "v")  # linear_qkv
DENSE_MLP = ("gate", "up")  # linear_fc1
PROJECTIONS = (*ATTENTION, "o", *DENSE_MLP, "down")
EXPERTS = ("experts_gate_up", "experts_down")  # an expert's linear_fc1 and linear_fc2


def short_name(names: LayerNames, field: str) -> str:
    """The PEFT module name --target_modules uses for a projection (`q_proj` for `self_attn.q_proj`)."""
    return getattr(names, field).rsplit(".", 1)[-1]


def add_lora(model, text_config, names: LayerNames, experts_module: str, settings: LoraSettings,
             dtype: torch.dtype, device) -> list[str]:
    """Adapters on this rank's decoder layers (the rest of the model frozen); returns the HF modules adapted,
    relative to the decoder layers (`{i}.self_attn.q_proj`, `{i}.<experts_module>`)."""
    from megatron.core.transformer.moe.experts import SequentialMLP

    heads, groups = text_config.num_attention_heads, text_config.num_key_value_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    hidden = text_config.hidden_size
    for param in model.parameters():
        param.requires_grad = False

    def attach(linear, adapters: dict[str, Adapter], groups_: int = 0, expert: bool = False) -> None:
        linear.lora = LinearAdapters(adapters, settings.scaling, settings.dropout, groups_)
        linear.register_forward_hook(_hook)
        if expert:
            for param in linear.lora.parameters():
                param.allreduce = False

    def new(in_features: int, out_features: int) -> Adapter:
        return Adapter(in_features, out_features, settings.rank, dtype, device)

    def together(fields: tuple[str, ...], parts: dict) -> dict:
        if parts and len(parts) != len(fields):
            together_names = ", ".join(short_name(names, field) for field in fields)
            raise ValueError(f"{together_names} are adapted together in Megatron-Core (one fused linear): target "
                             "all or none of them")
        return parts

    adapted = []
    for layer in model.language_model.decoder.layers:
        i = layer.layer_number - 1
        attention = layer.self_attention
        parts = together(ATTENTION, {field: new(hidden, (heads if field == "q" else groups) * head_dim)
                                     for field in ATTENTION if field in settings.projections})
        if parts:
            attach(attention.linear_qkv, parts, groups)
        fields = list(parts)
        if "o" in settings.projections:
            attach(attention.linear_proj, {"o": new(heads * head_dim, hidden)})
            fields.append("o")
        mlp = layer.mlp
        experts = getattr(mlp, "experts", None)
        if experts is None:
            ffn = text_config.intermediate_size
            parts = together(DENSE_MLP, {field: new(hidden, ffn) for field in DENSE_MLP
                                         if field in settings.projections})
            if parts:
                attach(mlp.linear_fc1, parts)
            fields += parts
            if "down" in settings.projections:
                attach(mlp.linear_fc2, {"down": new(ffn, hidden)})
                fields.append("down")
        elif settings.experts:
            if not isinstance(experts, SequentialMLP):  # grouped_experts' module is one
                raise ValueError(f"LoRA on experts needs Megatron-Core's SequentialMLP, not {type(experts).__name__}")
            ffn = text_config.moe_intermediate_size
            for local in experts.local_experts:
                attach(local.linear_fc1, {"experts_gate_up": new(hidden, 2 * ffn)}, expert=True)
                attach(local.linear_fc2, {"experts_down": new(ffn, hidden)}, expert=True)
            fields.append(None)
        adapted += [f"{i}.{getattr(names, field) if field else experts_module}" for field in fields]
    return adapted


def lora_settings(args, names: LayerNames) -> LoraSettings:
    """The adapted projections of --target_modules: all-linear (every projection, the experts too), or PEFT's module
    names of them (q_proj, ..., down_proj) and `experts`."""
    by_name = {short_name(names, field): field for field in PROJECTIONS}
    given = set(args.target_modules)
    all_linear = "all-linear" in given
    unknown = given - set(by_name) - {"all-linear", "experts"}
    if unknown:
        raise ValueError(f"--target_modules {' '.join(sorted(unknown))}: vlft megatron sft adapts all-linear or "
                         f"these projections: {', '.join(sorted(by_name))}, experts")
    experts = all_linear or "experts" in given
    dropout = args.lora_dropout if args.lora_dropout is not None else (0.0 if experts else 0.05)
    fields = PROJECTIONS if all_linear else tuple(field for name, field in by_name.items() if name in given)
    return LoraSettings(args.lora_rank, args.lora_alpha, dropout, args.use_rslora, experts=experts,
                        projections=frozenset(fields))
