"""Expert LoRA per routed token group (vlft/train/grouped_expert_lora.py) against PEFT's own `target_parameters`
LoRA (W + B A built for every expert), the ground truth: the same tiny MoE model and adapter weights give the
same loss and the same gradients of every adapter (float32, CPU: 1e-5 relative), for Qwen3-VL-MoE and
Qwen3.5-MoE (its shared expert and gate stay plain PEFT linears). The adapter's saved keys are PEFT's."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parametrize

from tests.train.test_packing_parity import lora_args
from vlft.families import detect_family
from vlft.train import grouped_expert_lora, tuners
from vlft.train.grouped_expert_lora import ParamWrapper as GroupedExpertsLora
from vlft.train.model import load_model


def lora_model(model_dir, grouped: bool, monkeypatch):
    torch.manual_seed(0)
    with monkeypatch.context() as patch:
        if not grouped:  # PEFT's own ParamWrapper on the experts
            patch.setattr(grouped_expert_lora, "register_grouped_expert_lora", lambda *args: None)
        model = tuners.prepare_trainable(load_model(model_dir, torch.float32, "sdpa"), detect_family(model_dir),
                                         lora_args())
    return model


def experts_modules(model) -> list[torch.nn.Module]:
    """The transformers experts modules under PEFT's wrappers."""
    return [m for m in model.modules() if "gate_up_proj" in dict(m.named_parameters(recurse=False))]


@pytest.mark.parametrize("family", ["qwen3_vl_moe", "qwen3_5_moe"])
def test_grouped_expert_lora_equals_peft(family, tiny_model_dir, monkeypatch):
    model_dir = tiny_model_dir(family)
    grouped, reference = lora_model(model_dir, True, monkeypatch), lora_model(model_dir, False, monkeypatch)
    wrappers = [m for m in grouped.modules() if isinstance(m, GroupedExpertsLora)]
    assert wrappers and not any(isinstance(m, GroupedExpertsLora) for m in reference.modules())
    torch.manual_seed(1)
    for name, param in grouped.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero, which would hide a wrong layout
            torch.nn.init.normal_(param, std=0.05)
    state = grouped.state_dict()
    assert set(state) == set(reference.state_dict())  # PEFT's names, nested wrappers included
    reference.load_state_dict(state)

    parametrized_in_forward = {}
    for label, model in (("grouped", grouped), ("reference", reference)):
        seen = []
        for experts in experts_modules(model):
            experts.register_forward_pre_hook(lambda m, args: seen.append(parametrize.is_parametrized(m)))
        parametrized_in_forward[label] = seen

    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(100, 3000, (2, 48), generator=generator)
    results = {}
    for label, model in (("grouped", grouped), ("reference", reference)):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        results[label] = (loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})

    # which forward ran: PEFT's parametrizes the experts' weights (W + B A); the grouped one never calls the module
    assert parametrized_in_forward["reference"] and all(parametrized_in_forward["reference"])
    assert parametrized_in_forward["grouped"] == []
    (loss, grads), (reference_loss, reference_grads) = results["grouped"], results["reference"]
    assert abs(loss - reference_loss) <= 1e-5 * abs(reference_loss)
    assert grads.keys() == reference_grads.keys()
    expert_grads = [n for n in grads if ".experts." in n]
    assert len(expert_grads) >= 4
    relative = {name: ((grad - reference_grads[name]).norm() / reference_grads[name].norm()).item()
                for name, grad in grads.items() if reference_grads[name].norm() > 0}
    print(family, "worst relative gradient difference:", max(relative.values()), max(relative, key=relative.get))
    for name in expert_grads:  # the adapters the two paths compute differently
        assert relative[name] <= 1e-5, (name, relative[name])
    everything = torch.cat([g.flatten() for g in reference_grads.values()])
    difference = torch.cat([(grads[n] - reference_grads[n]).flatten() for n in reference_grads])
    # every other adapter: 1e-5 of the whole gradient (Qwen3.5's linear attention amplifies float32 rounding on
    # its smallest gradients, measured up to 1.1e-5 of such a tensor's own norm)
    assert difference.norm() <= 1e-5 * everything.norm()
