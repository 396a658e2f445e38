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


def test_lora_dtype_casts_the_adapters_alone_and_they_train(tiny_model_dir, tmp_path):
    """--lora_dtype bfloat16 on float32 weights: LoRA A/B (and DoRA's magnitudes) in bfloat16, every other
    parameter as loaded; a forward and backward run and give the adapters bfloat16 gradients; saved as bfloat16."""
    from safetensors import safe_open

    from tests.train.test_packing_parity import lora_args
    from vlft.families import get_family
    from vlft.train.model import load_model
    from vlft.train.tuners import cast_adapters, prepare_trainable

    model = load_model(tiny_model_dir("qwen3_vl"), torch.float32, "sdpa")
    args = lora_args()
    args.use_dora = True
    model = prepare_trainable(model, get_family("qwen3_vl"), args)
    assert cast_adapters(model, torch.bfloat16) > 0
    for name, parameter in model.named_parameters():
        adapter = ".lora_" in name
        assert parameter.dtype == (torch.bfloat16 if adapter else torch.float32), name
        assert parameter.requires_grad == adapter, name
    ids = torch.randint(0, 1000, (1, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if ".lora_" in n and p.grad is not None]
    assert grads and all(g.dtype == torch.bfloat16 for g in grads)
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "adapter_model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}


def test_float16_runs_train_float32_parameters_the_loss_scaler_can_unscale(tiny_model_dir):
    """A float16 full fine-tuning step through transformers' loss scaler: with float16 trained parameters
    unscale_ raises "Attempting to unscale FP16 gradients" (vlft sft crashed at its first step on a GPU); after
    upcast_trained_float16 the trained parameters are float32, the frozen ones float16, and the step runs."""
    from tests.train.test_packing_parity import lora_args
    from vlft.families import get_family
    from vlft.train.model import load_model
    from vlft.train.tuners import prepare_trainable, upcast_trained_float16

    def one_step(upcast: bool) -> None:
        model = load_model(tiny_model_dir("qwen3_vl"), torch.float16, "sdpa")
        args = lora_args()
        args.train_type = "full"
        model = prepare_trainable(model, get_family("qwen3_vl"), args)
        if upcast:
            assert upcast_trained_float16(model) > 0
            assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
            assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.float16}  # the ViT
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        scaler = torch.amp.GradScaler("cpu")
        ids = torch.randint(0, 1000, (1, 12))
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(input_ids=ids, labels=ids).loss
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        scaler.step(optimizer)

    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
        one_step(upcast=False)
    one_step(upcast=True)
