"""ViT / aligner / LLM membership of every parameter, freezing and LoRA targets, per family."""

from __future__ import annotations

import re

import pytest
import torch

from tests.conftest import FAMILIES
from tests.train.test_packing_parity import lora_args
from vlft.families import get_family
from vlft.train.model import load_model
from vlft.train.modules import lora_targets, module_part, trainable_parts
from vlft.train.tuners import prepare_trainable

SOFTMAX_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj"}
GATED_DELTANET_LINEARS = {"in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj"}  # never conv1d
MLP_LINEARS = {"gate_proj", "up_proj", "down_proj"}


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    return {f: load_model(tiny_model_dir(f), torch.float32, "sdpa") for f in FAMILIES}


@pytest.mark.parametrize("family_name", FAMILIES)
def test_every_parameter_has_one_part(family_name, models):
    family, model = get_family(family_name), models[family_name]
    parts = {name: module_part(name, family) for name, _ in model.named_parameters()}
    assert None not in parts.values(), [n for n, p in parts.items() if p is None]
    aligner = {n for n, p in parts.items() if p == "aligner"}
    assert aligner and all(".visual.merger." in n or ".visual.deepstack_merger_list." in n for n in aligner)
    if family_name.startswith("qwen3_vl"):
        assert any("deepstack_merger_list" in n for n in aligner)
    if family_name.startswith("qwen3_5"):  # Qwen3.5's ViT has no DeepStack
        assert not any("deepstack" in n for n in parts)
    vit = {n for n, p in parts.items() if p == "vit"}
    assert any(".visual.blocks." in n for n in vit) and any("patch_embed" in n for n in vit)
    llm = {n for n, p in parts.items() if p == "llm"}
    assert all(n.startswith(("model.language_model.", "lm_head.")) for n in llm)
    assert any("embed_tokens" in n for n in llm)


def _targets(model, family, parts, targets=("all-linear",)):
    regex, _ = lora_targets(model, family, targets, parts)
    return [name for name, _ in model.named_modules() if re.fullmatch(regex, name)]


@pytest.mark.parametrize("family_name", FAMILIES)
def test_all_linear_is_the_unfrozen_parts_linears(family_name, models):
    family, model = get_family(family_name), models[family_name]
    default = _targets(model, family, trainable_parts(True, True, False))
    assert default and all(n.startswith("model.language_model.") for n in default)
    assert "lm_head" not in default
    expected = []
    for i, layer_type in enumerate(getattr(model.config.text_config, "layer_types", None) or
                                   ["full_attention"] * model.config.text_config.num_hidden_layers):
        mixer = SOFTMAX_LINEARS if layer_type == "full_attention" else GATED_DELTANET_LINEARS
        # MoE experts are fused 3D parameters, not nn.Linear (targeted as parameters); routers never are;
        # Qwen3.5-MoE's shared expert is a plain MLP (its one-output gate is a router).
        mlp = {"qwen3_vl_moe": set(), "qwen3_5_moe": {"shared_expert." + n for n in MLP_LINEARS}}.get(
            family_name, MLP_LINEARS)
        expected += [f"model.language_model.layers.{i}.{kind}.{n}" for kind, names in
                     (("linear_attn" if layer_type != "full_attention" else "self_attn", mixer), ("mlp", mlp))
                     for n in names]
    assert sorted(default) == sorted(expected)
    with_vit = _targets(model, family, trainable_parts(False, True, False))
    vit_only = set(with_vit) - set(default)
    assert vit_only and all(module_part(n, family) == "vit" for n in vit_only)
    with_aligner = set(_targets(model, family, trainable_parts(True, False, True)))
    assert with_aligner and all(module_part(n, family) == "aligner" for n in with_aligner)


def test_named_targets_stay_inside_unfrozen_parts(models):
    family, model = get_family("qwen2_5_vl"), models["qwen2_5_vl"]
    # Qwen2.5-VL's ViT MLP also has gate_proj/up_proj/down_proj: a frozen ViT keeps them out.
    names = _targets(model, family, trainable_parts(True, True, False), targets=("gate_proj", "q_proj"))
    assert names and all(n.startswith("model.language_model.") for n in names)
    assert {n.split(".")[-1] for n in names} == {"gate_proj", "q_proj"}


@pytest.mark.parametrize("family_name", ["qwen3_vl", "qwen2_vl"])
def test_lora_model_trains_only_adapters(family_name, tiny_model_dir):
    model = prepare_trainable(load_model(tiny_model_dir(family_name), torch.float32, "sdpa"),
                              get_family(family_name), lora_args())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any(".visual." in n for n in trainable)


def test_moe_all_linear_reaches_every_experts_weights_but_not_the_router(models):
    family, model = get_family("qwen3_vl_moe"), models["qwen3_vl_moe"]
    _, experts = lora_targets(model, family, ["all-linear"], trainable_parts(True, True, False))
    layers = model.config.text_config.num_hidden_layers
    assert sorted(experts) == sorted(f"model.language_model.layers.{i}.mlp.experts.{p}"
                                     for i in range(layers) for p in ("gate_up_proj", "down_proj"))
    _, named = lora_targets(model, family, ["q_proj", "down_proj"], trainable_parts(True, True, False))
    assert named and all(n.endswith(".experts.down_proj") for n in named)
    _, frozen_llm = lora_targets(model, family, ["all-linear"], trainable_parts(False, True, True))
    assert frozen_llm == []


def test_moe_lora_trains_adapters_and_experts_and_the_router_only_when_asked(tiny_model_dir):
    from tests.train.test_packing_parity import lora_args

    family = get_family("qwen3_vl_moe")
    model = prepare_trainable(load_model(tiny_model_dir("qwen3_vl_moe"), torch.float32, "sdpa"), family, lora_args())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n for n in trainable) and any(".experts." in n for n in trainable)
    assert not any(".mlp.gate." in n for n in trainable)

    args = lora_args()
    args.freeze_router = False
    model = prepare_trainable(load_model(tiny_model_dir("qwen3_vl_moe"), torch.float32, "sdpa"), family, args)
    routers = [n for n, p in model.named_parameters() if p.requires_grad and ".mlp.gate." in n]
    assert len(routers) == model.config.text_config.num_hidden_layers  # one trained copy per layer


def test_lora_dropout_defaults_to_zero_on_experts_and_refuses_an_explicit_one(tiny_model_dir):
    from vlft.errors import VlftError
    from vlft.train.tuners import resolve_lora_dropout

    assert resolve_lora_dropout(None, adapts_experts=False) == 0.05
    assert resolve_lora_dropout(None, adapts_experts=True) == 0.0
    with pytest.raises(VlftError, match="--lora_dropout 0"):
        resolve_lora_dropout(0.1, adapts_experts=True)


def test_router_aux_loss_is_added_to_the_loss(tiny_model_dir):
    from vlft.errors import VlftError
    from vlft.train.model import set_router_aux_loss

    model = load_model(tiny_model_dir("qwen3_vl_moe"), torch.float32, "sdpa").eval()
    ids = torch.tensor([[151644, 872, 198, 9707, 151645, 198, 151644, 77091, 198, 9707, 151645]])
    with torch.no_grad():
        plain = model(input_ids=ids, labels=ids).loss
        set_router_aux_loss(model, 0.5)
        out = model(input_ids=ids, labels=ids)
    assert out.aux_loss is not None and out.aux_loss > 0
    assert out.loss.item() == pytest.approx(plain.item() + 0.5 * out.aux_loss.item(), rel=1e-5)
    with pytest.raises(VlftError, match="no MoE router"):
        set_router_aux_loss(load_model(tiny_model_dir("qwen3_vl"), torch.float32, "sdpa"), 0.1)
