"""What trains: LoRA adapters on the unfrozen parts' linears (and MoE experts), or the unfrozen parts in full."""

from __future__ import annotations

import torch

from vlft.errors import VlftError
from vlft.families.base import Family
from vlft.train.modules import freeze_parts, lora_targets, router_names, trainable_parts

DEFAULT_LORA_DROPOUT = 0.05


def resolve_lora_dropout(lora_dropout: float | None, adapts_experts: bool) -> float:
    """The dropout LoRA gets: 0.05 by default, 0 when it reaches MoE experts.

    PEFT adapts a fused 3-D expert weight by adding B @ A to the weight itself, so there is no
    input to drop out: it refuses any dropout there (peft 0.21, `lora.ParamWrapper`).
    """
    if not adapts_experts:
        return DEFAULT_LORA_DROPOUT if lora_dropout is None else lora_dropout
    if lora_dropout:
        raise VlftError(f"--lora_dropout {lora_dropout}: LoRA on MoE experts (fused 3-D weights) has no dropout; "
                        "pass --lora_dropout 0, or leave the experts out with --target_modules q_proj k_proj ...")
    return 0.0


def prepare_trainable(model, family: Family, args):
    """The model with LoRA applied (train_type lora) or with frozen parts (full)."""
    parts = trainable_parts(args.freeze_vit, args.freeze_aligner, args.freeze_llm)
    routers = router_names(model, family)
    if args.train_type == "full":
        freeze_parts(model, family, parts)
        if args.freeze_router:
            for name in routers:
                model.get_submodule(name).requires_grad_(False)
        return model
    from peft import LoraConfig, get_peft_model

    from vlft.train.grouped_expert_lora import register_grouped_expert_lora

    if not parts and not args.modules_to_save:
        raise VlftError("--freeze_vit, --freeze_aligner and --freeze_llm all true: no part for LoRA to adapt")
    try:
        modules, experts = lora_targets(model, family, args.target_modules, parts)
    except ValueError as e:
        raise VlftError(str(e)) from None
    # An unfrozen router trains in full beside the adapters (and is saved with them). Routers are the family's
    # `routers` inside each decoder layer (modules.router_names); their last names select exactly them.
    modules_to_save = list(args.modules_to_save)
    if routers and "llm" in parts and not args.freeze_router:
        modules_to_save += sorted({name.rsplit(".", 1)[-1] for name in routers})
    config = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha,
                        lora_dropout=resolve_lora_dropout(args.lora_dropout, bool(experts)),
                        target_modules=modules, target_parameters=experts or None, use_dora=args.use_dora,
                        use_rslora=args.use_rslora, modules_to_save=modules_to_save or None)
    if experts:  # expert adapters per routed token group, beside the grouped GEMM (grouped_expert_lora.py)
        register_grouped_expert_lora(config, model, experts)
    return get_peft_model(model, config)


ADAPTER_PARAMETER_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")


def cast_adapters(model, dtype: torch.dtype) -> int:
    """--lora_dtype (ms-swift's): the LoRA (and DoRA) parameters in `dtype`; PEFT keeps them in float32 beside
    half-precision weights otherwise. Returns how many tensors it cast."""
    adapters = [p for name, p in model.named_parameters()
                if any(f".{part}." in f".{name}." for part in ADAPTER_PARAMETER_PARTS)]
    for parameter in adapters:
        parameter.data = parameter.data.to(dtype)
    return len(adapters)


def upcast_trained_float16(model) -> int:
    """The float16 parameters that train, in float32 (CUDA float16 runs without DeepSpeed: accelerate's loss scaler
    refuses to unscale float16 gradients, "Attempting to unscale FP16 gradients"; autocast still computes in
    float16; ms-swift does the same). Returns how many it upcast."""
    trained = [p for p in model.parameters() if p.requires_grad and p.dtype == torch.float16]
    for parameter in trained:
        parameter.data = parameter.data.float()
    return len(trained)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    def numel(p) -> int:
        if getattr(p, "quant_state", None) is not None:  # QLoRA: bitsandbytes packs two 4-bit weights per byte
            return p.quant_state.shape.numel()
        return getattr(p, "ds_numel", p.numel())  # ZeRO-3 partitions parameters: ds_numel is the full size

    return sum(numel(p) for p in model.parameters() if p.requires_grad), sum(numel(p) for p in model.parameters())
