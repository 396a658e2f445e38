"""FLOP counts against parameter counts of the real modules, and the attention term's sum of squares."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import FAMILIES
from vlft.families import get_family
from vlft.model.tiny import tiny_config
from vlft.train.flops import (attention_flops_per_square, device_peak_flops, linear_attention_core_flops,
                              llm_parameters, sequence_square_sum, training_flops, vit_parameters)
from vlft.train.model import load_model


@pytest.mark.parametrize("family_name", [f for f in FAMILIES if not f.endswith("moe")])
def test_parameter_counts_match_the_model(family_name, tiny_model_dir):
    """Dense families: every linear weight of the language model and the vision blocks is counted once."""
    family = get_family(family_name)
    model = load_model(tiny_model_dir(family_name), torch.float32, "sdpa")
    linears = sum(m.weight.numel() for n, m in model.model.language_model.named_modules()
                  if isinstance(m, torch.nn.Linear))
    assert llm_parameters(family, model.config.text_config) == linears + model.lm_head.weight.numel()
    blocks = sum(m.weight.numel() for n, m in model.model.visual.blocks.named_modules()
                 if isinstance(m, torch.nn.Linear))
    assert vit_parameters(family, model.config.vision_config) == blocks
    config = model.config
    core = 3 * linear_attention_core_flops(family, config.text_config) * 10
    assert training_flops(family, config, 10, 4) == 60 * llm_parameters(family, config.text_config) + core + \
        2 * vit_parameters(family, config.vision_config) * 4 * 4
    assert (core > 0) == family.hybrid


@pytest.mark.parametrize("family_name", [f for f in FAMILIES if f.endswith("moe")])
def test_moe_active_parameters_match_the_model(family_name, tiny_model_dir):
    """MoE families: per layer the mixer, the router, top-k of the experts (and the shared expert with its gate)."""
    family = get_family(family_name)
    model = load_model(tiny_model_dir(family_name), torch.float32, "sdpa")
    text = model.config.text_config
    layer = model.model.language_model.layers
    per_layer = 0
    for block in layer:
        mlp = block.mlp
        expert_weights = sum(p.numel() for p in mlp.experts.parameters())
        others = sum(p.numel() for n, p in block.named_parameters() if p.dim() == 2 and "experts." not in n
                     and "embed" not in n)
        per_layer += others + expert_weights * text.num_experts_per_tok // text.num_experts
    assert llm_parameters(family, text) == per_layer + model.lm_head.weight.numel()


def test_softmax_attention_is_counted_only_in_softmax_layers():
    """Qwen3.5's 3:1 pattern: one layer in four has the n^2 attention term."""
    text = tiny_config("qwen3_5").text_config
    assert text.layer_types == ["linear_attention"] * 3 + ["full_attention"]
    # By hand for the tiny config: 3 DeltaNet layers x (4 value heads x (6 x 16 x 16 + 2 x 64 x (16 + 16)) +
    # the conv's 2 x 4 taps x 128 channels).
    by_hand = 3 * (4 * (6 * 16 * 16 + 2 * 64 * 32) + 2 * 4 * 128)
    assert linear_attention_core_flops(get_family("qwen3_5"), text) == by_hand
    assert attention_flops_per_square(get_family("qwen3_5"), text) == 6 * text.num_attention_heads * text.head_dim


def test_peaks():
    assert device_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert device_peak_flops("Some CPU") is None


def test_square_sum_leaves_a_fixed_shape_rows_padding_out():
    """Samples of 3 and 2 tokens then a padding segment of 4: 3^2 + 2^2 = 13, worked out by hand."""
    text = torch.tensor([0, 1, 2, 0, 1, 0, 1, 2, 3])
    positions = torch.stack([text] * 4)[:, None, :]
    assert int(sequence_square_sum({"position_ids": positions, "row_padding": 4})) == 13
    assert int(sequence_square_sum({"position_ids": positions})) == 13 + 16
