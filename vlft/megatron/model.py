"""The Megatron-Core model of a Qwen-VL checkpoint, structured as ms-swift's: `language_model` (Megatron-Core's
GPTModel, local layer spec) and, on the first pipeline stage, `visual.visual` (the HF vision tower as is,
replicated over tensor-parallel ranks)."""

from __future__ import annotations

import torch

from vlft.errors import VlftError
from vlft.families.base import Family
from vlft.megatron.config import rope_parameters
from vlft.megatron.layouts import McoreLayout

# The local spec names the norms it fuses into the next linear as the TransformerEngine spec does
# (`self_attention.linear_qkv.layer_norm_*`, `mlp.linear_fc1.layer_norm_*`). For MoE layers the TE spec keeps a
# separate `pre_mlp_layernorm`, so MoE layers keep only the attention norm's rename (keys as ms-swift writes).
_MOE_KEYS_MAP = {"input_layernorm.": "self_attention.linear_qkv.layer_norm_"}


def interleaved_mrope_class():
    """Qwen3-VL's mrope: frequency j takes its position from t, h or w by j % 3 (for j below 3 * section),
    where Megatron-Core's MultimodalRotaryEmbedding takes them in chunks [t..., h..., w...] (Qwen2-VL's)."""
    from megatron.core.models.common.embeddings.rotary_pos_embedding import MultimodalRotaryEmbedding

    class InterleavedMRoPE(MultimodalRotaryEmbedding):
        def forward(self, position_ids: torch.Tensor, mrope_section: list[int], cp_group=None) -> torch.Tensor:
            positions = position_ids.to(device=self.inv_freq.device, dtype=self.inv_freq.dtype)
            freqs = positions[..., None] * self.inv_freq  # [3, B, L, dim / 2]
            mixed = freqs[0].clone()
            for axis in (1, 2):
                picked = slice(axis, mrope_section[axis] * 3, 3)
                mixed[..., picked] = freqs[axis, ..., picked]
            emb = torch.cat((mixed, mixed), dim=-1)  # [B, L, dim]
            return emb[..., None, :].transpose(0, 1).contiguous()  # [L, B, 1, dim]

    return InterleavedMRoPE


def layer_spec(config, moe_kinds: list[bool]):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from vlft.megatron.grouped_experts import with_grouped_experts
    from vlft.megatron.packed_attention import packed_core_attention_class

    if len(set(moe_kinds)) > 1:
        raise VlftError("models that mix dense and MoE decoder layers cannot be converted to Megatron-Core yet")
    moe = moe_kinds[0]
    spec = get_gpt_layer_local_spec(num_experts=config.num_moe_experts if moe else None, moe_grouped_gemm=False,
                                    qk_layernorm=config.qk_layernorm, normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = packed_core_attention_class()  # packed rows
    if moe:
        spec.submodules.sharded_state_dict_keys_map = dict(_MOE_KEYS_MAP)
        if config.moe_grouped_gemm:
            with_grouped_experts(spec.submodules.mlp)
    return spec


def vision_tower_class(layout: McoreLayout) -> type:
    """The transformers class named by the layout: a top-level name, or a dotted path for one transformers does
    not export (Qwen2-VL's tower)."""
    import importlib

    import transformers

    module, _, name = layout.vision_class.rpartition(".")
    return getattr(importlib.import_module(module) if module else transformers, name)


def build_model(config, hf_config, family: Family, layout: McoreLayout, *, pre_process: bool, post_process: bool,
                device: torch.device):
    """This rank's part of the model (weights allocated, not initialised)."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.huggingface.module import HuggingFaceModule
    from megatron.core.transformer.module import MegatronModule

    from vlft.megatron import hybrid
    from vlft.train.attention import VISION_ATTENTION_NAME, register_varlen_attention

    text_config = hf_config.text_config
    rope = rope_parameters(text_config)
    rotary_percent = float(rope.get("partial_rotary_factor", 1.0))
    kinds = family.decoder_kinds(text_config)
    own_layers = layout.zero_centered_norms or layout.linear_attention is not None  # Qwen3.5's (hybrid.py)

    class VisionTower(HuggingFaceModule):
        """The HF vision tower as `.visual` (so its keys are ms-swift's `visual.visual.*`)."""

        def __init__(self):
            super().__init__(config)
            self.visual = vision_tower_class(layout)._from_config(hf_config.vision_config, dtype=config.params_dtype)
            # vlft sft's attention: all images of a batch in one varlen call per block, no host read per image
            register_varlen_attention()
            self.visual.config._attn_implementation = VISION_ATTENTION_NAME

    class VisionLanguageModel(MegatronModule):
        def __init__(self):
            super().__init__(config=config)
            self.pre_process, self.post_process = pre_process, post_process
            if own_layers:
                spec = hybrid.block_spec(config, kinds, device)
                # the multi-token-prediction head lives on the last pipeline stage
                mtp = (hybrid.mtp_block_spec(config, kinds[-1].moe, device)
                       if config.mtp_num_layers and post_process else None)
            else:
                spec, mtp = layer_spec(config, [kind.moe for kind in kinds]), None
            self.language_model = GPTModel(
                config, spec, vocab_size=text_config.vocab_size,
                max_sequence_length=text_config.max_position_embeddings, pre_process=pre_process,
                post_process=post_process, parallel_output=False,
                share_embeddings_and_output_weights=bool(getattr(hf_config, "tie_word_embeddings", False)),
                position_embedding_type="mrope", rotary_percent=rotary_percent, rotary_base=rope["rope_theta"],
                mtp_block_spec=mtp)
            if rope.get("mrope_interleaved"):
                self.language_model.rotary_pos_emb = interleaved_mrope_class()(
                    kv_channels=config.kv_channels, rotary_percent=rotary_percent,
                    rotary_interleaved=config.rotary_interleaved, rotary_base=rope["rope_theta"])
            if pre_process:
                self.visual = VisionTower()
            # What Megatron-Core's schedules and gradient finalisation read off the model they train.
            self.model_type = self.language_model.model_type
            self.share_embeddings_and_output_weights = self.language_model.share_embeddings_and_output_weights

        def shared_embedding_or_output_weight(self):
            return self.language_model.shared_embedding_or_output_weight()

        def set_input_tensor(self, input_tensor):
            self.language_model.set_input_tensor(input_tensor)

        def forward(self, *args, **kwargs):
            return self.language_model(*args, **kwargs)

    if layout.linear_attention is not None and not hybrid.fla_runs(device):
        with hybrid.gated_delta_net_without_fla():
            return VisionLanguageModel()
    return VisionLanguageModel()


def mark_tensor_parallel_attributes(model) -> None:
    """Mark each tensor-parallel weight (`tensor_model_parallel`, `partition_dim`, `partition_stride`) as
    Megatron-Core's initialisers do, which the conversion's models skip (`perform_initialization=False`): the
    gradient norm counts an unmarked weight on tensor-parallel rank 0 only, so training needs them."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.layers import (ColumnParallelLinear, RowParallelLinear,
                                                       VocabParallelEmbedding, set_tensor_model_parallel_attributes)

    for module in model.modules():
        if isinstance(module, (ColumnParallelLinear, VocabParallelEmbedding)):
            dim = 0
        elif isinstance(module, RowParallelLinear):
            dim = 1
        else:
            continue
        group = getattr(module, "tp_group", None)
        size = group.size() if group is not None else parallel_state.get_tensor_model_parallel_world_size()
        weight = getattr(module, "weight", None)
        if weight is not None and not hasattr(weight, "tensor_model_parallel"):
            set_tensor_model_parallel_attributes(weight, size > 1, dim, 1)
