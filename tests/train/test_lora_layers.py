"""LoraLayers.input_casting_off: the same switch as PEFT's disable_input_dtype_casting (every tuner layer's input
cast off inside, each layer's own setting back after, also after an error), with the layers found once."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.helpers import disable_input_dtype_casting
from peft.tuners.tuners_utils import BaseTunerLayer

from vlft.train.trainer import LoraLayers


def tiny_lora_model():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4), torch.nn.Linear(4, 2))
    return get_peft_model(model, LoraConfig(r=2, target_modules=["0", "2", "3"]))


def casting(model):
    return {name: m.cast_input_dtype_enabled for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


def test_switches_the_layers_peft_switches_and_restores_each_layers_setting():
    model = tiny_lora_model()
    model.base_model.model[3].cast_input_dtype_enabled = False  # a layer already off stays off after
    before = casting(model)
    assert len(before) == 3 and sum(before.values()) == 2
    with disable_input_dtype_casting(model):
        peft_inside = casting(model)
    layers = LoraLayers(model)
    with layers.input_casting_off():
        ours_inside = casting(model)
    assert ours_inside == peft_inside == {name: False for name in before}
    assert casting(model) == before
    with pytest.raises(RuntimeError), layers.input_casting_off():
        raise RuntimeError("a failing step")
    assert casting(model) == before


def test_forward_under_autocast_with_casting_off_keeps_the_output_dtype():
    model = tiny_lora_model()
    layers = LoraLayers(model)
    x = torch.randn(3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16), layers.input_casting_off():
        out = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16), disable_input_dtype_casting(model):
        expected = model(x)
    assert out.dtype == expected.dtype
    torch.testing.assert_close(out, expected)
