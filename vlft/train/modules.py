"""Which parameters belong to the vision tower (ViT), the aligner and the LLM (the family's prefixes);
freezing; LoRA targets (the family's experts and routers)."""

from __future__ import annotations

import re
from typing import Iterable, Literal

from torch import nn

from vlft.families.base import Family

Part = Literal["vit", "aligner", "llm"]
PEFT_PREFIX = "base_model.model."


def module_part(name: str, family: Family) -> Part | None:
    """The part a parameter or module name belongs to (PEFT's wrapper prefix ignored)."""
    if name.startswith(PEFT_PREFIX):
        name = name[len(PEFT_PREFIX):]
    name += "."
    if name.startswith(family.aligner_prefixes):  # inside model.visual, so test it first
        return "aligner"
    if name.startswith(family.vit_prefixes):
        return "vit"
    if name.startswith(family.llm_prefixes):
        return "llm"
    return None


def trainable_parts(freeze_vit: bool, freeze_aligner: bool, freeze_llm: bool) -> set[Part]:
    """The parts left unfrozen by the three freeze flags."""
    return {part for part, frozen in (("vit", freeze_vit), ("aligner", freeze_aligner), ("llm", freeze_llm))
            if not frozen}


def freeze_parts(model: nn.Module, family: Family, parts: set[Part]) -> None:
    """Full fine-tuning: parameters of `parts` train, all others are frozen."""
    for name, param in model.named_parameters():
        param.requires_grad = module_part(name, family) in parts


def _is_router(name: str, family: Family) -> bool:
    """MoE routers (the family's `routers` inside a decoder layer, e.g. `mlp.gate`) are not LoRA targets."""
    layers = family.modules.decoder_layers + "."
    if name.startswith(PEFT_PREFIX):
        name = name[len(PEFT_PREFIX):]
    if not name.startswith(layers):
        return False
    inside_layer = name[len(layers):].split(".", 1)[-1]
    return inside_layer in family.modules.routers


def router_names(model: nn.Module, family: Family) -> list[str]:
    """Names of the MoE routers (the modules that score the experts)."""
    return [name for name, _ in model.named_modules() if _is_router(name, family)]


def expert_parameter_names(model: nn.Module, family: Family, parts: set[Part]) -> list[str]:
    """Names of the MoE experts' fused 3-D weights inside `parts` (`...mlp.experts.gate_up_proj`, `.down_proj`).

    transformers 5 holds each layer's experts as one [experts, out, in] parameter per projection instead of
    one nn.Linear per expert, so LoRA reaches them through PEFT's parameter targeting, not module names.
    """
    names = []
    for module_name, module in model.named_modules():
        if not module_name.endswith("." + family.modules.experts):
            continue
        for param_name, param in module.named_parameters(recurse=False):
            name = f"{module_name}.{param_name}"
            if len(getattr(param, "ds_shape", param.shape)) == 3 and module_part(name, family) in parts:
                names.append(name)
    return names


def linear_names(model: nn.Module, family: Family, parts: set[Part]) -> list[str]:
    """Names of every nn.Linear inside `parts`, never lm_head nor an MoE router."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name.split(".")[-1] == family.modules.lm_head:
            continue
        if module_part(name, family) in parts and not _is_router(name, family):
            names.append(name)
    return names


def _matches(name: str, suffixes: tuple[str, ...]) -> bool:
    return name.split(".")[-1] in suffixes or name.endswith(tuple("." + s for s in suffixes))


def lora_targets(model: nn.Module, family: Family, targets: Iterable[str], parts: set[Part]
                 ) -> tuple[str | None, list[str]]:
    """What LoRA adapts: (a regex of exact module names, the names of 3-D expert parameters).

    `all-linear`: every linear of the unfrozen parts, and the MoE experts' fused weights. Names
    (`q_proj`, `gate_up_proj`): those linears and expert weights whose name ends with one of them.
    A single entry with regex syntax is used as given (modules only).
    """
    targets = list(targets)
    if len(targets) == 1 and targets[0] != "all-linear" and re.search(r"[\\^$*+?()\[\]|]", targets[0]):
        # PEFT matches a regex against each module's whole name; one that matches nothing is an error here, naming
        # a few of the model's linears, rather than PEFT's after the adapter is half made.
        if not any(re.fullmatch(targets[0], n) for n, _ in model.named_modules()):
            names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            shown = ", ".join(names[:3] + names[-2:]) if len(names) > 5 else ", ".join(names)
            raise ValueError(f"--target_regex / --target_modules {targets[0]!r} matches no module's full name "
                             f"(the model's {len(names)} linears are named like {shown})")
        return targets[0], []
    linears, experts = linear_names(model, family, parts), expert_parameter_names(model, family, parts)
    if "all-linear" not in targets:
        suffixes = tuple(t for t in targets if t != "all-linear")
        linears = [n for n in linears if _matches(n, suffixes)]
        experts = [n for n in experts if _matches(n, suffixes)]
    if not linears and not experts:
        raise ValueError(f"no linear layer matches --target_modules {' '.join(targets)} in the unfrozen parts "
                         f"({', '.join(sorted(parts)) or 'none'})")
    regex = "^(?:" + "|".join(re.escape(n) for n in linears) + ")$" if linears else None
    return regex, experts
