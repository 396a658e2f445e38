"""What a family's HF checkpoint looks like to the Megatron-Core converter (vlft/megatron/), as data: the names
of a decoder layer's tensors, how they fuse into Megatron-Core's, and the HF class of the vision tower. The HF
prefixes (the language model, the output head, the vision tower, the experts, the router) come from the family's
ModuleMap and which layers are MoE from its decoder kinds. Nothing here imports Megatron-Core."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerNames:
    """A decoder layer's HF tensor names (relative to the layer; `.weight` is added)."""

    q: str = "self_attn.q_proj"
    k: str = "self_attn.k_proj"
    v: str = "self_attn.v_proj"
    o: str = "self_attn.o_proj"
    q_norm: str | None = "self_attn.q_norm"  # None: no qk-norm (Qwen2.5-VL)
    k_norm: str | None = "self_attn.k_norm"
    input_norm: str = "input_layernorm"
    post_attention_norm: str = "post_attention_layernorm"
    gate: str = "mlp.gate_proj"
    up: str = "mlp.up_proj"
    down: str = "mlp.down_proj"
    # Inside the family's `experts` module: the fused 3-D expert tensors, [experts, 2*ffn, hidden] (gate rows
    # first) and [experts, hidden, ffn] as transformers holds them (a file may store them transposed).
    experts_gate_up: str = "gate_up_proj"
    experts_down: str = "down_proj"
    # Files that store each expert on its own (Qwen3.5-MoE's, as transformers' save_pretrained writes them):
    # `<experts>.<e>.<name>.weight` for these names.
    expert_matrices: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LinearAttentionNames:
    """A Gated DeltaNet mixer's HF tensor names (relative to the mixer, the ModuleMap's `linear_attention`),
    Qwen3.5's."""

    qkv: str = "in_proj_qkv.weight"  # rows [q; k; v]
    z: str = "in_proj_z.weight"  # the output gate
    b: str = "in_proj_b.weight"  # beta
    a: str = "in_proj_a.weight"  # alpha (the decay's input)
    conv: str = "conv1d.weight"  # [q; k; v channels, 1, kernel]
    a_log: str = "A_log"
    dt_bias: str = "dt_bias"
    norm: str = "norm.weight"  # the gated output norm (plain weight, not zero-centred)
    out: str = "out_proj.weight"


@dataclass(frozen=True)
class SharedExpertNames:
    """An MoE layer's shared expert (relative to the decoder layer), Qwen3.5-MoE's."""

    gate: str = "mlp.shared_expert.gate_proj.weight"
    up: str = "mlp.shared_expert.up_proj.weight"
    down: str = "mlp.shared_expert.down_proj.weight"
    router: str = "mlp.shared_expert_gate.weight"  # [1, hidden]: how much of the shared expert a token takes


@dataclass(frozen=True)
class MtpNames:
    """The multi-token-prediction head's tensors in the files (transformers does not load them)."""

    fc: str = "mtp.fc.weight"  # [hidden, 2 * hidden] over [embedding; hidden state]
    embedding_norm: str = "mtp.pre_fc_norm_embedding.weight"
    hidden_norm: str = "mtp.pre_fc_norm_hidden.weight"
    final_norm: str = "mtp.norm.weight"
    layers: str = "mtp.layers"  # decoder layers with the names of a softmax-attention layer


@dataclass(frozen=True)
class McoreLayout:
    """A family's conversion data (see the module docstring)."""

    # transformers class of the vision tower, built from config.vision_config: a name transformers exports, or a
    # dotted module path
    vision_class: str
    layer: LayerNames = LayerNames()
    qkv_bias: bool = False  # q/k/v projections carry biases (Qwen2.5-VL)
    # q_proj emits, per head, the query then an output gate of the same size (Qwen3.5's gated attention)
    gated_attention: bool = False
    zero_centered_norms: bool = False  # RMSNorms scale by (1 + weight) (Qwen3.5's), the GDN's gated norm aside
    linear_attention: LinearAttentionNames | None = None  # the layout of `linear` decoder layers
    shared_expert: SharedExpertNames | None = None
    mtp: MtpNames | None = None  # a multi-token-prediction head, when the text config has mtp layers
    experts_per_file_tensor: bool = False  # the files store experts one by one (LayerNames.expert_matrices)
    # (prefix as transformers loads it, prefix in the files): Qwen2-VL and Qwen2.5-VL files keep the names their
    # first transformers release used (`model.layers.*`, `visual.*`), which transformers renames at load and back
    # at save. Read under either name; --to_hf writes the files' names, as transformers' save_pretrained does.
    file_prefixes: tuple[tuple[str, str], ...] = ()

    def file_name(self, key: str) -> str:
        """`key` (as transformers loads it) as the files name it."""
        for loaded, stored in self.file_prefixes:
            if key.startswith(loaded):
                return stored + key[len(loaded):]
        return key

    def loaded_name(self, key: str) -> str:
        """A name of the files as transformers loads it."""
        for loaded, stored in self.file_prefixes:
            if key.startswith(stored) and not key.startswith(loaded):
                return loaded + key[len(stored):]
        return key
