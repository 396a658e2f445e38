"""Qwen3.5's decoder on Megatron-Core's local (torch) layers: per-layer specs that follow the text config's
layer kinds (Gated DeltaNet or gated softmax attention; dense MLP or MoE with a gated shared expert), the
multi-token-prediction block, and the two pieces Megatron-Core 0.16.1 lacks without TransformerEngine.

- Norms: Qwen3.5's RMSNorms scale by (1 + weight) with the weight stored zero-centred; Megatron-Core's torch
  norm refuses `layernorm_zero_centered_gamma`, and its own hybrid-model spec needs TransformerEngine. So the
  specs name ZeroCenteredRMSNorm (HF's formula, weights stored as HF stores them: round trips stay bit-exact)
  and PlainRMSNorm for the Gated DeltaNet's gated output norm (a plain weight in HF).
- TorchGatedDeltaNet: Megatron-Core's GatedDeltaNet runs fla's Triton kernels (l2norm, the chunked delta
  rule), which need a GPU. This subclass keeps its parameters, names, tensor-parallel split and checkpoint
  layout and replaces only the forward's kernels by torch ones (a torch l2norm and Megatron-Core's own
  `torch_chunk_gated_delta_rule`). It is used where fla cannot run (on the CPU, or without fla).
"""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F


def _rms_normalized(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) over the last dim, in float32."""
    x32 = x.float()
    return x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)


class ZeroCenteredRMSNorm(torch.nn.Module):
    """y = x / rms(x) * (1 + w), in float32 and cast back (HF's Qwen3_5RMSNorm); built from a spec."""

    def __init__(self, config=None, hidden_size: int = 0, eps: float = 1e-6, **kwargs):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.zeros(hidden_size, dtype=getattr(config, "params_dtype", None)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (_rms_normalized(x, self.eps) * (1.0 + self.weight.float())).type_as(x)


class PlainRMSNorm(torch.nn.Module):
    """y = w * (x / rms(x)) (HF's Qwen3_5RMSNormGated without its gate, which the GDN layer applies)."""

    def __init__(self, config=None, hidden_size: int = 0, eps: float = 1e-6, **kwargs):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=getattr(config, "params_dtype", None)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * _rms_normalized(x, self.eps).to(x.dtype)


def fla_runs(device: torch.device) -> bool:
    """Whether Megatron-Core's GatedDeltaNet can run its fla kernels here."""
    return device.type == "cuda" and importlib.util.find_spec("fla") is not None


@contextmanager
def gated_delta_net_without_fla() -> Iterator[None]:
    """Megatron-Core's GatedDeltaNet refuses to be built when fla does not import (its module flag HAVE_FLA),
    though TorchGatedDeltaNet never calls fla: within the block the flag says True (restored on exit)."""
    import megatron.core.ssm.gated_delta_net as gated_delta_net

    old = gated_delta_net.HAVE_FLA
    gated_delta_net.HAVE_FLA = True
    try:
        yield
    finally:
        gated_delta_net.HAVE_FLA = old


def torch_gated_delta_net_class():
    from megatron.core.ssm.gated_delta_net import GatedDeltaNet, torch_chunk_gated_delta_rule

    def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:  # fla's formula
        return x * torch.rsqrt((x.float() * x.float()).sum(-1, keepdim=True) + eps).to(x.dtype)

    class TorchGatedDeltaNet(GatedDeltaNet):
        """GatedDeltaNet on torch kernels (see the module docstring); unpacked sequences, no inference cache."""

        def forward(self, hidden_states, attention_mask=None, key_value_states=None, inference_context=None,
                    attention_bias=None, packed_seq_params=None, sequence_len_offset=None, *,
                    inference_params=None, **kwargs):
            if inference_context is not None or inference_params is not None or packed_seq_params is not None:
                raise NotImplementedError("TorchGatedDeltaNet runs unpacked sequences without an inference cache")
            seq_len, batch, _ = hidden_states.shape
            seq_len, tp = seq_len * self.sp_size, self.tp_size
            qkvzba, _ = self.in_proj(hidden_states)
            qkv, gate, beta, alpha = torch.split(
                qkvzba.transpose(0, 1), [(self.qk_dim * 2 + self.v_dim) // tp, self.v_dim // tp,
                                         self.num_value_heads // tp, self.num_value_heads // tp], dim=-1)
            qkv = self.act_fn(self.conv1d(qkv.transpose(1, 2).contiguous())[..., :seq_len]).transpose(1, 2)
            query, key, value = torch.split(qkv, [self.qk_dim // tp, self.qk_dim // tp, self.v_dim // tp], dim=-1)
            query = query.reshape(batch, seq_len, -1, self.key_head_dim)
            key = key.reshape(batch, seq_len, -1, self.key_head_dim)
            value = value.reshape(batch, seq_len, -1, self.value_head_dim)
            if self.use_qk_l2norm:
                query, key = l2norm(query), l2norm(key)
            repeat = self.num_value_heads // self.num_key_heads
            if repeat > 1:
                query, key = query.repeat_interleave(repeat, dim=2), key.repeat_interleave(repeat, dim=2)
            g = -self.A_log.exp() * F.softplus(alpha.float() + self.dt_bias)
            out, _ = torch_chunk_gated_delta_rule(query.contiguous(), key.contiguous(), value.contiguous(), g=g,
                                                  beta=beta.sigmoid(), initial_state=None,
                                                  output_final_state=False, use_qk_l2norm_in_kernel=False)
            gate = gate.reshape(batch, seq_len, -1, self.value_head_dim)
            normed = self.out_norm(out.reshape(-1, out.shape[-1]))  # eager: the parent's is torch.compiled
            out = (normed * self.act_fn(gate.reshape(-1, gate.shape[-1]).float())).to(out.dtype)
            return self.out_proj(out.reshape(batch, seq_len, -1).transpose(0, 1).contiguous())

    return TorchGatedDeltaNet


def packed_gated_delta_net_class(base: type) -> type:
    """`base` (a GatedDeltaNet) that keeps packed samples apart: Megatron-Core 0.16.1's refuses PackedSeqParams,
    so given a packed row this one runs each sample through `base` on its own (its short convolution and its
    recurrence restart with every sample, as fla's varlen kernels do with cu_seqlens) and joins the outputs."""

    class PackedGatedDeltaNet(base):
        def forward(self, hidden_states, attention_mask=None, key_value_states=None, inference_context=None,
                    attention_bias=None, packed_seq_params=None, sequence_len_offset=None, **kwargs):
            if packed_seq_params is None:
                return super().forward(hidden_states, attention_mask, key_value_states, inference_context,
                                       attention_bias, None, sequence_len_offset, **kwargs)
            padded = packed_seq_params.cu_seqlens_q_padded  # batches.sample_boundaries': the same, on the host
            bounds = (padded if padded is not None else packed_seq_params.cu_seqlens_q).tolist()
            outputs = [super(PackedGatedDeltaNet, self).forward(
                hidden_states[a:b], attention_mask, key_value_states, inference_context, attention_bias, None,
                sequence_len_offset, **kwargs) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
            return torch.cat([out for out, _ in outputs]), outputs[0][1]

    return PackedGatedDeltaNet


# The norms TransformerEngine's spec fuses into the next linear, named as it (and so ms-swift) names them.
def _te_keys_map(linear: bool, moe: bool) -> dict[str, str]:
    keys = {"input_layernorm.": "self_attention.in_proj.layer_norm_" if linear
            else "self_attention.linear_qkv.layer_norm_"}
    if not moe:
        keys["pre_mlp_layernorm."] = "mlp.linear_fc1.layer_norm_"
    return keys


def layer_spec(config, linear: bool, moe: bool, device: torch.device):
    """One decoder layer: zero-centred input and pre-MLP norms; Gated DeltaNet or gated softmax attention with
    zero-centred q/k norms; a dense MLP or the local MoE (with the shared expert the config asks for)."""
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
    from megatron.core.models.backends import LocalSpecProvider
    from megatron.core.models.gpt.moe_module_specs import get_moe_module_spec_for_backend
    from megatron.core.ssm.gated_delta_net import GatedDeltaNet, GatedDeltaNetSubmodules
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.mlp import MLP, MLPSubmodules
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

    from vlft.megatron.grouped_experts import with_grouped_experts
    from vlft.megatron.packed_attention import packed_core_attention_class

    if linear:
        gdn = packed_gated_delta_net_class(GatedDeltaNet if fla_runs(device) else torch_gated_delta_net_class())
        attention = ModuleSpec(module=gdn, submodules=GatedDeltaNetSubmodules(
            in_proj=ColumnParallelLinear, out_norm=PlainRMSNorm, out_proj=RowParallelLinear))
    else:
        attention = ModuleSpec(module=SelfAttention, params={"attn_mask_type": AttnMaskType.causal},
                               submodules=SelfAttentionSubmodules(
                                   linear_qkv=ColumnParallelLinear, core_attention=packed_core_attention_class(),
                                   linear_proj=RowParallelLinear, q_layernorm=ZeroCenteredRMSNorm,
                                   k_layernorm=ZeroCenteredRMSNorm))
    if moe:
        mlp = get_moe_module_spec_for_backend(LocalSpecProvider(), num_experts=config.num_moe_experts,
                                              moe_grouped_gemm=False)  # SequentialMLP
        if config.moe_grouped_gemm:
            with_grouped_experts(mlp)
    else:
        mlp = ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear,
                                                              linear_fc2=RowParallelLinear))
    return ModuleSpec(module=TransformerLayer, submodules=TransformerLayerSubmodules(
        input_layernorm=ZeroCenteredRMSNorm, self_attention=attention, self_attn_bda=get_bias_dropout_add,
        pre_mlp_layernorm=ZeroCenteredRMSNorm, mlp=mlp, mlp_bda=get_bias_dropout_add,
        sharded_state_dict_keys_map=_te_keys_map(linear, moe)))


def block_spec(config, kinds, device: torch.device):
    """This pipeline stage's layers (`kinds`: the family's decoder kinds of every layer) and the final norm."""
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    specs = [layer_spec(config, kind.attention == "linear", kind.moe, device) for kind in kinds]
    offset = get_transformer_layer_offset(config)
    return TransformerBlockSubmodules(layer_specs=specs[offset:offset + get_num_layers_to_build(config)],
                                      layer_norm=ZeroCenteredRMSNorm)


def mtp_block_spec(config, moe: bool, device: torch.device):
    """The multi-token-prediction block: each layer joins the normed next-token embedding and hidden state by
    `eh_proj`, then runs a softmax-attention decoder layer and a final norm (all norms zero-centred)."""
    from megatron.core.tensor_parallel import ColumnParallelLinear
    from megatron.core.transformer.multi_token_prediction import (MultiTokenPredictionBlockSubmodules,
                                                                  MultiTokenPredictionLayer,
                                                                  MultiTokenPredictionLayerSubmodules)
    from megatron.core.transformer.spec_utils import ModuleSpec

    layer = ModuleSpec(module=MultiTokenPredictionLayer, submodules=MultiTokenPredictionLayerSubmodules(
        enorm=ZeroCenteredRMSNorm, hnorm=ZeroCenteredRMSNorm, eh_proj=ColumnParallelLinear,
        transformer_layer=layer_spec(config, False, moe, device), layer_norm=ZeroCenteredRMSNorm))
    return MultiTokenPredictionBlockSubmodules(layer_specs=[layer] * config.mtp_num_layers)
