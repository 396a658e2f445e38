"""HF <-> Megatron-Core tensors of a Qwen-VL language model, driven by the family's ModuleMap and McoreLayout.

Megatron-Core's layout (as ms-swift's bridge writes it): q/k/v fused per query group as [its q heads, k, v] and
split over tensor-parallel ranks by whole groups; `linear_fc1` is [gate; up] of each rank's slice; `linear_proj`
and `linear_fc2` are split on their input dim; embeddings and the output layer on the vocabulary; experts are
split over expert-parallel ranks (local expert j of rank r is expert r * experts_per_rank + j) and their matrices
over expert-tensor-parallel ranks as dense MLPs are."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlft.families.base import Family
from vlft.megatron.layouts import McoreLayout
from vlft.megatron.reader import SafetensorsReader


@dataclass(frozen=True)
class Shard:
    """Which part of the model one rank holds."""

    tp_rank: int = 0
    tp: int = 1
    ep_rank: int = 0
    ep: int = 1
    etp_rank: int = 0
    etp: int = 1
    layers: tuple[int, ...] = ()  # the global index of each local decoder layer
    first_stage: bool = True
    last_stage: bool = True


@dataclass(frozen=True)
class Names:
    """The HF keys of one family's language model."""

    family: Family
    layout: McoreLayout

    def language(self, name: str) -> str:
        return f"{self.family.modules.language_model}.{name}.weight"

    def layer(self, i: int, name: str, suffix: str = ".weight") -> str:
        return f"{self.family.modules.decoder_layers}.{i}.{name}{suffix}"

    def experts(self, i: int, name: str) -> str:
        return f"{self.family.modules.decoder_layers}.{i}.{self.family.modules.experts}.{name}"

    @property
    def lm_head(self) -> str:
        return f"{self.family.modules.lm_head}.weight"

    @property
    def embed(self) -> str:
        return self.language("embed_tokens")

    @property
    def final_norm(self) -> str:
        return f"{self.family.modules.final_norm}.weight"

    @property
    def vision(self) -> str:
        return self.family.modules.vision_tower + "."


def _dims(text_config) -> tuple[int, int, int, int]:
    heads, groups = text_config.num_attention_heads, text_config.num_key_value_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    return heads, groups, head_dim, text_config.hidden_size


def language_model_shard(reader: SafetensorsReader, text_config, names: Names, shard: Shard, moe: bool,
                         tied: bool) -> dict[str, torch.Tensor]:
    """This rank's GPTModel state dict, read from the HF files."""
    tp, r = shard.tp, shard.tp_rank
    out = {}
    if shard.first_stage:
        out["embedding.word_embeddings.weight"] = reader.part(names.embed, 0, r, tp)
    if shard.last_stage:
        out["decoder.final_layernorm.weight"] = reader.get(names.final_norm)
        if not tied:
            out["output_layer.weight"] = reader.part(names.lm_head, 0, r, tp)
    for local, i in enumerate(shard.layers):
        layer = _layer_shard(reader, text_config, names, shard, i, moe)
        out.update({f"decoder.layers.{local}.{key}": value for key, value in layer.items()})
    return out


def _layer_shard(reader, text_config, names: Names, shard: Shard, i: int, moe: bool) -> dict[str, torch.Tensor]:
    L, (heads, groups, head_dim, _) = names.layout.layer, _dims(text_config)
    tp, r = shard.tp, shard.tp_rank
    local_groups = groups // tp

    def qkv(suffix: str) -> torch.Tensor:
        q, k, v = (reader.part(names.layer(i, name, suffix), 0, r, tp) for name in (L.q, L.k, L.v))
        rest = q.shape[1:]
        fused = torch.cat([q.reshape(local_groups, heads // groups * head_dim, *rest),
                           k.reshape(local_groups, head_dim, *rest), v.reshape(local_groups, head_dim, *rest)], 1)
        return fused.reshape(-1, *rest)

    out = {"self_attention.linear_qkv.weight": qkv(".weight"),
           "self_attention.linear_proj.weight": reader.part(names.layer(i, L.o), 1, r, tp),
           "input_layernorm.weight": reader.get(names.layer(i, L.input_norm)),
           "pre_mlp_layernorm.weight": reader.get(names.layer(i, L.post_attention_norm))}
    if names.layout.qkv_bias:
        out["self_attention.linear_qkv.bias"] = qkv(".bias")
    if L.q_norm is not None:
        out["self_attention.q_layernorm.weight"] = reader.get(names.layer(i, L.q_norm))
        out["self_attention.k_layernorm.weight"] = reader.get(names.layer(i, L.k_norm))
    if not moe:
        out["mlp.linear_fc1.weight"] = torch.cat([reader.part(names.layer(i, L.gate), 0, r, tp),
                                                  reader.part(names.layer(i, L.up), 0, r, tp)])
        out["mlp.linear_fc2.weight"] = reader.part(names.layer(i, L.down), 1, r, tp)
        return out
    out["mlp.router.weight"] = reader.get(names.layer(i, names.family.modules.routers[0]))
    experts, ffn, hidden = text_config.num_experts, text_config.moe_intermediate_size, text_config.hidden_size
    per_rank = experts // shard.ep
    gate_up, down = names.experts(i, L.experts_gate_up), names.experts(i, L.experts_down)
    for j in range(per_rank):
        e = shard.ep_rank * per_rank + j
        gate, up = reader.expert(gate_up, e, (2 * ffn, hidden)).chunk(2)
        part = shard.etp_rank
        out[f"mlp.experts.local_experts.{j}.linear_fc1.weight"] = torch.cat([gate.chunk(shard.etp)[part],
                                                                             up.chunk(shard.etp)[part]])
        out[f"mlp.experts.local_experts.{j}.linear_fc2.weight"] = (
            reader.expert(down, e, (hidden, ffn)).chunk(shard.etp, 1)[part].contiguous())
    return out


def hf_language_model(state: dict[str, torch.Tensor], text_config, names: Names, moe: bool,
                      tied: bool) -> dict[str, torch.Tensor]:
    """The HF tensors of a whole (one-rank) GPTModel state dict: the inverse of language_model_shard."""
    L, (heads, groups, head_dim, _) = names.layout.layer, _dims(text_config)
    q_rows = heads // groups * head_dim
    out = {names.embed: state["embedding.word_embeddings.weight"],
           names.final_norm: state["decoder.final_layernorm.weight"]}
    if not tied:
        out[names.lm_head] = state["output_layer.weight"]
    for i in range(text_config.num_hidden_layers):
        m = f"decoder.layers.{i}."
        suffixes = (".weight", ".bias") if names.layout.qkv_bias else (".weight",)
        for suffix in suffixes:
            fused = state[m + "self_attention.linear_qkv" + suffix]
            fused = fused.reshape(groups, q_rows + 2 * head_dim, *fused.shape[1:])
            for name, rows in ((L.q, slice(0, q_rows)), (L.k, slice(q_rows, q_rows + head_dim)),
                               (L.v, slice(q_rows + head_dim, None))):
                part = fused[:, rows]
                out[names.layer(i, name, suffix)] = part.reshape(-1, *part.shape[2:]).contiguous()
        out[names.layer(i, L.o)] = state[m + "self_attention.linear_proj.weight"]
        out[names.layer(i, L.input_norm)] = state[m + "input_layernorm.weight"]
        out[names.layer(i, L.post_attention_norm)] = state[m + "pre_mlp_layernorm.weight"]
        if L.q_norm is not None:
            out[names.layer(i, L.q_norm)] = state[m + "self_attention.q_layernorm.weight"]
            out[names.layer(i, L.k_norm)] = state[m + "self_attention.k_layernorm.weight"]
        if not moe:
            gate, up = state[m + "mlp.linear_fc1.weight"].chunk(2)
            out[names.layer(i, L.gate)], out[names.layer(i, L.up)] = gate.contiguous(), up.contiguous()
            out[names.layer(i, L.down)] = state[m + "mlp.linear_fc2.weight"]
            continue
        out[names.layer(i, names.family.modules.routers[0])] = state[m + "mlp.router.weight"]
        experts = range(text_config.num_experts)
        out[names.experts(i, L.experts_gate_up)] = torch.stack(
            [state[m + f"mlp.experts.local_experts.{e}.linear_fc1.weight"] for e in experts])
        out[names.experts(i, L.experts_down)] = torch.stack(
            [state[m + f"mlp.experts.local_experts.{e}.linear_fc2.weight"] for e in experts])
    return out


def vision_shard(reader: SafetensorsReader, names: Names) -> dict[str, torch.Tensor]:
    """The vision tower's tensors as they are, keyed as inside the tower."""
    return {key[len(names.vision):]: reader.get(key) for key in reader.keys() if key.startswith(names.vision)}


def hf_vision(state: dict[str, torch.Tensor], names: Names) -> dict[str, torch.Tensor]:
    return {names.vision + key: value for key, value in state.items()}
