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


def _part(tensor: torch.Tensor, dim: int, index: int, count: int) -> torch.Tensor:
    return tensor.chunk(count, dim)[index].contiguous()


def language_model_shard(reader: SafetensorsReader, text_config, names: Names, shard: Shard, tied: bool,
                         mtp_layers: int = 0) -> dict[str, torch.Tensor]:
    """This rank's GPTModel state dict, read from the HF files (`mtp_layers`: the multi-token-prediction layers
    the model was built with; they live on the last stage, which then holds the embedding too)."""
    tp, r = shard.tp, shard.tp_rank
    kinds = names.family.decoder_kinds(text_config)
    out = {}
    if shard.first_stage or (mtp_layers and shard.last_stage):
        out["embedding.word_embeddings.weight"] = reader.part(names.embed, 0, r, tp)
    if shard.last_stage:
        out["decoder.final_layernorm.weight"] = reader.get(names.final_norm)
        if not tied:
            out["output_layer.weight"] = reader.part(names.lm_head, 0, r, tp)
        elif not shard.first_stage:  # tied, PP > 1: the last stage holds its own copy as the output layer
            out["output_layer.weight"] = reader.part(names.embed, 0, r, tp)
    for local, i in enumerate(shard.layers):
        layer = _layer_shard(reader, text_config, names, shard, names.layer(i, "", ""), kinds[i].attention,
                             kinds[i].moe)
        out.update({f"decoder.layers.{local}.{key}": value for key, value in layer.items()})
    mtp = names.layout.mtp
    for k in range(mtp_layers if shard.last_stage else 0):
        m = f"mtp.layers.{k}."
        out[m + "eh_proj.weight"] = reader.part(mtp.fc, 0, r, tp)
        out[m + "enorm.weight"] = reader.get(mtp.embedding_norm)
        out[m + "hnorm.weight"] = reader.get(mtp.hidden_norm)
        out[m + "final_layernorm.weight"] = reader.get(mtp.final_norm)
        layer = _layer_shard(reader, text_config, names, shard, f"{mtp.layers}.{k}.", "softmax", kinds[-1].moe)
        out.update({m + "transformer_layer." + key: value for key, value in layer.items()})
    return out


def _gated_query_rows(q: torch.Tensor, groups: int, per_group: int, head_dim: int) -> torch.Tensor:
    """Gated attention's q_proj rows ([query; gate] per head) as Megatron-Core's [queries; gates] per group."""
    rest = q.shape[1:]
    q = q.reshape(groups, per_group, 2, head_dim, *rest)
    return torch.cat([q[:, :, 0].reshape(groups, per_group * head_dim, *rest),
                      q[:, :, 1].reshape(groups, per_group * head_dim, *rest)], 1)


def _layer_shard(reader, text_config, names: Names, shard: Shard, prefix: str, attention: str,
                 moe: bool) -> dict[str, torch.Tensor]:
    """One decoder layer's tensors for this rank (`prefix`: the layer's HF prefix, ending in a dot)."""
    L, layout = names.layout.layer, names.layout
    tp, r = shard.tp, shard.tp_rank
    out = {"input_layernorm.weight": reader.get(prefix + L.input_norm + ".weight"),
           "pre_mlp_layernorm.weight": reader.get(prefix + L.post_attention_norm + ".weight")}
    if attention == "linear":
        mixer = f"{prefix}{names.family.modules.linear_attention}."
        out.update(_linear_attention_shard(reader, text_config, layout.linear_attention, mixer, r, tp))
    else:
        out.update(_attention_shard(reader, text_config, names, prefix, r, tp))
    if not moe:
        out["mlp.linear_fc1.weight"] = torch.cat([reader.part(prefix + L.gate + ".weight", 0, r, tp),
                                                  reader.part(prefix + L.up + ".weight", 0, r, tp)])
        out["mlp.linear_fc2.weight"] = reader.part(prefix + L.down + ".weight", 1, r, tp)
        return out
    out["mlp.router.weight"] = reader.get(prefix + names.family.modules.routers[0] + ".weight")
    experts, ffn, hidden = text_config.num_experts, text_config.moe_intermediate_size, text_config.hidden_size
    per_rank = experts // shard.ep
    experts_prefix = prefix + names.family.modules.experts
    for j in range(per_rank):
        gate, up, down = reader.expert_matrices(experts_prefix, L, shard.ep_rank * per_rank + j, ffn, hidden)
        part = shard.etp_rank
        out[f"mlp.experts.local_experts.{j}.linear_fc1.weight"] = torch.cat([_part(gate, 0, part, shard.etp),
                                                                             _part(up, 0, part, shard.etp)])
        out[f"mlp.experts.local_experts.{j}.linear_fc2.weight"] = _part(down, 1, part, shard.etp)
    shared = layout.shared_expert
    if shared is not None:
        out["mlp.shared_experts.linear_fc1.weight"] = torch.cat([reader.part(prefix + shared.gate, 0, r, tp),
                                                                 reader.part(prefix + shared.up, 0, r, tp)])
        out["mlp.shared_experts.linear_fc2.weight"] = reader.part(prefix + shared.down, 1, r, tp)
        out["mlp.shared_experts.gate_weight"] = reader.get(prefix + shared.router)
    return out


def _attention_shard(reader, text_config, names: Names, prefix: str, r: int, tp: int) -> dict[str, torch.Tensor]:
    """q/k/v fused per query group as [its query heads (then, gated, their gates), k, v], whole groups per rank."""
    L, (heads, groups, head_dim, _) = names.layout.layer, _dims(text_config)
    per_group = heads // groups

    local = groups // tp

    def qkv(suffix: str) -> torch.Tensor:  # q_proj's heads (and their gates) come group by group: read rank r's
        q, k, v = (reader.part(prefix + name + suffix, 0, r, tp) for name in (L.q, L.k, L.v))
        rest = q.shape[1:]
        queries = (_gated_query_rows(q, local, per_group, head_dim) if names.layout.gated_attention
                   else q.reshape(local, per_group * head_dim, *rest))
        fused = torch.cat([queries, k.reshape(local, head_dim, *rest), v.reshape(local, head_dim, *rest)], 1)
        return fused.reshape(-1, *rest)

    out = {"self_attention.linear_qkv.weight": qkv(".weight"),
           "self_attention.linear_proj.weight": reader.part(prefix + L.o + ".weight", 1, r, tp)}
    if names.layout.qkv_bias:
        out["self_attention.linear_qkv.bias"] = qkv(".bias")
    if L.q_norm is not None:
        out["self_attention.q_layernorm.weight"] = reader.get(prefix + L.q_norm + ".weight")
        out["self_attention.k_layernorm.weight"] = reader.get(prefix + L.k_norm + ".weight")
    return out


def _linear_sizes(text_config) -> tuple[int, int, int]:
    """Rows of the GDN's q, k and v parts (and of z: v's)."""
    qk = text_config.linear_num_key_heads * text_config.linear_key_head_dim
    return qk, qk, text_config.linear_num_value_heads * text_config.linear_value_head_dim


def _linear_attention_shard(reader, text_config, G, prefix: str, r: int, tp: int) -> dict[str, torch.Tensor]:
    """`prefix`: the mixer's, ending in a dot. Megatron-Core's in_proj holds, on rank r,
    [q_r; k_r; v_r; z_r; beta_r; alpha_r] (each the r-th part of HF's,
    whole heads) and its conv1d [q_r; k_r; v_r] channels."""
    q, k, v = reader.get(prefix + G.qkv).split(_linear_sizes(text_config), 0)
    conv_q, conv_k, conv_v = reader.get(prefix + G.conv).split(_linear_sizes(text_config), 0)
    return {"self_attention.in_proj.weight": torch.cat(
                [_part(x, 0, r, tp) for x in (q, k, v)]
                + [reader.part(prefix + name, 0, r, tp) for name in (G.z, G.b, G.a)]),
            "self_attention.conv1d.weight": torch.cat([_part(x, 0, r, tp) for x in (conv_q, conv_k, conv_v)]),
            "self_attention.A_log": reader.part(prefix + G.a_log, 0, r, tp),
            "self_attention.dt_bias": reader.part(prefix + G.dt_bias, 0, r, tp),
            "self_attention.out_norm.weight": reader.get(prefix + G.norm),
            "self_attention.out_proj.weight": reader.part(prefix + G.out, 1, r, tp)}


def hf_language_model(state: dict[str, torch.Tensor], text_config, names: Names, tied: bool,
                      mtp_layers: int = 0) -> dict[str, torch.Tensor]:
    """The HF tensors of a whole (one-rank) GPTModel state dict: the inverse of language_model_shard."""
    kinds = names.family.decoder_kinds(text_config)
    out = {names.embed: state["embedding.word_embeddings.weight"],
           names.final_norm: state["decoder.final_layernorm.weight"]}
    if not tied:
        out[names.lm_head] = state["output_layer.weight"]
    for i in range(text_config.num_hidden_layers):
        layer = _hf_layer(state, f"decoder.layers.{i}.", text_config, names, kinds[i].attention, kinds[i].moe)
        out.update({names.layer(i, key, ""): value for key, value in layer.items()})
    mtp = names.layout.mtp
    for k in range(mtp_layers):
        m = f"mtp.layers.{k}."
        out.update({mtp.fc: state[m + "eh_proj.weight"], mtp.embedding_norm: state[m + "enorm.weight"],
                    mtp.hidden_norm: state[m + "hnorm.weight"], mtp.final_norm: state[m + "final_layernorm.weight"]})
        layer = _hf_layer(state, m + "transformer_layer.", text_config, names, "softmax", kinds[-1].moe)
        out.update({f"{mtp.layers}.{k}.{key}": value for key, value in layer.items()})
    return out


def _hf_layer(state, m: str, text_config, names: Names, attention: str, moe: bool) -> dict[str, torch.Tensor]:
    """One whole Megatron-Core layer (`m`: its prefix) as HF tensors named within the layer."""
    L, layout = names.layout.layer, names.layout
    out = {L.input_norm + ".weight": state[m + "input_layernorm.weight"],
           L.post_attention_norm + ".weight": state[m + "pre_mlp_layernorm.weight"]}
    if attention == "linear":
        G, sizes = layout.linear_attention, _linear_sizes(text_config)
        heads = text_config.linear_num_value_heads
        q, k, v, z, b, a = state[m + "self_attention.in_proj.weight"].split([*sizes, sizes[2], heads, heads], 0)
        mixer = {G.qkv: torch.cat([q, k, v]), G.z: z.contiguous(), G.b: b.contiguous(), G.a: a.contiguous(),
                 G.conv: state[m + "self_attention.conv1d.weight"], G.a_log: state[m + "self_attention.A_log"],
                 G.dt_bias: state[m + "self_attention.dt_bias"], G.norm: state[m + "self_attention.out_norm.weight"],
                 G.out: state[m + "self_attention.out_proj.weight"]}
        out.update({f"{names.family.modules.linear_attention}.{key}": value for key, value in mixer.items()})
    else:
        out.update(_hf_attention(state, m, text_config, names))
    if not moe:
        gate, up = state[m + "mlp.linear_fc1.weight"].chunk(2)
        out[L.gate + ".weight"], out[L.up + ".weight"] = gate.contiguous(), up.contiguous()
        out[L.down + ".weight"] = state[m + "mlp.linear_fc2.weight"]
        return out
    out[names.family.modules.routers[0] + ".weight"] = state[m + "mlp.router.weight"]
    experts, prefix = range(text_config.num_experts), names.family.modules.experts
    fc1 = [state[m + f"mlp.experts.local_experts.{e}.linear_fc1.weight"] for e in experts]
    fc2 = [state[m + f"mlp.experts.local_experts.{e}.linear_fc2.weight"] for e in experts]
    if layout.experts_per_file_tensor:
        gate, up, down = L.expert_matrices
        for e in experts:
            g, u = fc1[e].chunk(2)
            out.update({f"{prefix}.{e}.{gate}.weight": g.contiguous(), f"{prefix}.{e}.{up}.weight": u.contiguous(),
                        f"{prefix}.{e}.{down}.weight": fc2[e]})
    else:
        out[f"{prefix}.{L.experts_gate_up}"] = torch.stack(fc1)
        out[f"{prefix}.{L.experts_down}"] = torch.stack(fc2)
    shared = layout.shared_expert
    if shared is not None:
        gate, up = state[m + "mlp.shared_experts.linear_fc1.weight"].chunk(2)
        out.update({shared.gate: gate.contiguous(), shared.up: up.contiguous(),
                    shared.down: state[m + "mlp.shared_experts.linear_fc2.weight"],
                    shared.router: state[m + "mlp.shared_experts.gate_weight"]})
    return out


def _hf_attention(state, m: str, text_config, names: Names) -> dict[str, torch.Tensor]:
    L, (heads, groups, head_dim, _) = names.layout.layer, _dims(text_config)
    per_group = heads // groups
    q_rows = (2 if names.layout.gated_attention else 1) * per_group * head_dim
    out = {}
    for suffix in (".weight", ".bias") if names.layout.qkv_bias else (".weight",):
        fused = state[m + "self_attention.linear_qkv" + suffix]
        rest = fused.shape[1:]
        fused = fused.reshape(groups, q_rows + 2 * head_dim, *rest)
        queries = fused[:, :q_rows]
        if names.layout.gated_attention:  # [queries; gates] per group -> [query; gate] per head
            queries = queries.reshape(groups, 2, per_group, head_dim, *rest).transpose(1, 2)
        out[L.q + suffix] = queries.reshape(-1, *rest).contiguous()
        out[L.k + suffix] = fused[:, q_rows:q_rows + head_dim].reshape(-1, *rest).contiguous()
        out[L.v + suffix] = fused[:, q_rows + head_dim:].reshape(-1, *rest).contiguous()
    out[L.o + ".weight"] = state[m + "self_attention.linear_proj.weight"]
    if L.q_norm is not None:
        out[L.q_norm + ".weight"] = state[m + "self_attention.q_layernorm.weight"]
        out[L.k_norm + ".weight"] = state[m + "self_attention.k_layernorm.weight"]
    return out


def vision_shard(reader: SafetensorsReader, names: Names) -> dict[str, torch.Tensor]:
    """The vision tower's tensors as they are, keyed as inside the tower."""
    return {key[len(names.vision):]: reader.get(key) for key in reader.keys() if key.startswith(names.vision)}


def hf_vision(state: dict[str, torch.Tensor], names: Names) -> dict[str, torch.Tensor]:
    return {names.vision + key: value for key, value in state.items()}
