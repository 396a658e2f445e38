"""FLOP counts against parameter counts of the real modules, and the attention term's sum of squares."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import FAMILIES
from vlft.train.flops import device_peak_flops, llm_parameters, sequence_square_sum, training_flops, vit_parameters
from vlft.train.model import load_model


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "qwen3_vl_moe"])
def test_parameter_counts_match_the_model(family, tiny_model_dir):
    model = load_model(tiny_model_dir(family), torch.float32, "sdpa")
    linears = sum(m.weight.numel() for n, m in model.model.language_model.named_modules()
                  if isinstance(m, torch.nn.Linear))
    assert llm_parameters(model.config.text_config) == linears + model.lm_head.weight.numel()
    blocks = sum(m.weight.numel() for n, m in model.model.visual.blocks.named_modules()
                 if isinstance(m, torch.nn.Linear))
    assert vit_parameters(model.config.vision_config) == blocks
    config = model.config
    assert training_flops(config, 10, 4) == 60 * llm_parameters(config.text_config) + \
        2 * vit_parameters(config.vision_config) * 4 * 4


def test_peaks():
    assert device_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert device_peak_flops("Some CPU") is None


def test_square_sum_leaves_a_fixed_shape_rows_padding_out():
    """Samples of 3 and 2 tokens then a padding segment of 4: 3^2 + 2^2 = 13, worked out by hand."""
    text = torch.tensor([0, 1, 2, 0, 1, 0, 1, 2, 3])
    positions = torch.stack([text] * 4)[:, None, :]
    assert int(sequence_square_sum({"position_ids": positions, "row_padding": 4})) == 13
    assert int(sequence_square_sum({"position_ids": positions})) == 13 + 16
