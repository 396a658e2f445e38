"""What trains: LoRA adapters on the unfrozen parts' linears, or the unfrozen parts in full."""

from __future__ import annotations

from vlft.errors import VlftError
from vlft.families.base import Family
from vlft.train.modules import freeze_parts, lora_target_modules, trainable_parts


def prepare_trainable(model, family: Family, args):
    """The model with LoRA applied (train_type lora) or with frozen parts (full)."""
    parts = trainable_parts(args.freeze_vit, args.freeze_aligner, args.freeze_llm)
    if args.train_type == "full":
        freeze_parts(model, family, parts)
        return model
    from peft import LoraConfig, get_peft_model

    if not parts and not args.modules_to_save:
        raise VlftError("--freeze_vit, --freeze_aligner and --freeze_llm all true: no part for LoRA to adapt")
    try:
        targets = lora_target_modules(model, family, args.target_modules, parts)
    except ValueError as e:
        raise VlftError(str(e)) from None
    config = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                        target_modules=targets, use_dora=args.use_dora, use_rslora=args.use_rslora,
                        modules_to_save=args.modules_to_save or None)
    return get_peft_model(model, config)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    def numel(p) -> int:
        return getattr(p, "ds_numel", p.numel())  # ZeRO-3 partitions parameters: ds_numel is the full size

    return sum(numel(p) for p in model.parameters() if p.requires_grad), sum(numel(p) for p in model.parameters())
