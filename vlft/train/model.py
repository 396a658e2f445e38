"""Loading the model for training: dtype, attention kernel, cache off, gradient checkpointing."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from pathlib import Path

import torch

from vlft.errors import VlftError
from vlft.families import family_of, get_family, module_at
from vlft.families.base import Family
from vlft.model.loading import load_pretrained
from vlft.train.attention import (ATTENTION_NAME, attach_row_boundaries, register_varlen_attention,
                                  use_varlen_in_vision_tower)
from vlft.train.linear_attention import fla_available, fla_dtype_refusal, fla_refusal, replace_linear_attention

logger = logging.getLogger("vlft")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
ATTN_ALIASES = {"flash_attn": "flash_attn", "flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn",
                "fa2": "flash_attn", "fa3": "flash_attn", "varlen": "varlen", ATTENTION_NAME: "varlen",
                "sdpa": "sdpa", "eager": "eager"}


def resolve_dtype(torch_dtype: str | None, cuda: bool) -> torch.dtype:
    """--torch_dtype, or bfloat16 on CUDA and float32 on CPU."""
    if torch_dtype is None:
        return torch.bfloat16 if cuda else torch.float32
    return DTYPES[torch_dtype]


def resolve_attention(attn_impl: str | None, padding_free: bool, cuda: bool) -> tuple[str, str]:
    """(transformers attn_implementation, a sentence saying which kernel runs)."""
    asked = ATTN_ALIASES.get(attn_impl or ("varlen" if cuda and padding_free else "sdpa"))
    if asked is None:
        raise VlftError(f"--attn_impl {attn_impl}: unknown; use varlen, flash_attn, sdpa or eager"
                        + ("" if attn_impl != "flex_attention" else " (transformers refuses flex_attention for "
                                                                     "Qwen-VL models)"))
    if not cuda:
        if asked in ("varlen", "flash_attn"):
            return "sdpa", f"attention: sdpa (CPU; --attn_impl {attn_impl} needs CUDA), block mask from positions"
        return asked, f"attention: {asked} (CPU)"
    if asked == "flash_attn":
        if importlib.util.find_spec("flash_attn_interface") is not None:
            return "flash_attention_3", "attention: flash-attn 3 (flash_attn_interface)"
        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2", "attention: flash-attn 2"
        asked = "varlen"
        note = "flash-attn is not installed: "
    else:
        note = ""
    if asked == "varlen":
        if not padding_free:
            return "sdpa", "attention: sdpa (varlen attention needs --padding_free true or --packing true)"
        return register_varlen_attention(), f"attention: {note}torch.nn.attention.varlen (PyTorch FlashAttention)"
    return asked, f"attention: {asked}"


def load_model(model_dir: Path, dtype: torch.dtype, attn_implementation: str, quantization=None,
               device: torch.device | None = None):
    """The HF model (with `quantization`, a BitsAndBytesConfig, its LLM linears in 4-bit on `device`: QLoRA,
    quantization.py), with the KV cache off on the text config (else packed samples attend to each other),
    the packed row's boundaries handled by attention.RowBoundaries (under the varlen attention, computed once
    per forward), under the varlen attention the vision tower's images attended in one call per block, and
    a hybrid family's linear-attention layers replaced by ones that keep packed samples apart
    (linear_attention.py; fla's kernels where they train, else the exact torch ones)."""
    if attn_implementation == ATTENTION_NAME:
        register_varlen_attention()
    with _zero3_expert_loading(model_dir):
        model = load_pretrained(model_dir, dtype, attn_implementation, quantization, device)
    model.config.use_cache = False
    model.config.text_config.use_cache = False
    attach_row_boundaries(model, varlen=attn_implementation == ATTENTION_NAME)
    if attn_implementation == ATTENTION_NAME:
        use_varlen_in_vision_tower(model)
    family = family_of(model)
    if family.hybrid:
        replace_linear_attention(module_at(model, family.modules.decoder_layers), family.modules.linear_attention,
                                 "fla" if fla_available(dtype) else "torch")
    return model


def check_linear_attention_kernels(family: Family, padding_free: bool, cuda: bool,
                                   dtype: torch.dtype = torch.bfloat16) -> None:
    """A hybrid family's packed rows need boundary-aware linear attention: fla on CUDA, in a dtype whose
    gradients it gets right. Without it a packed run stops here (transformers' own fallback would mix the
    samples, and vlft's exact per-sample torch path is far too slow for a GPU); padded batches train with the
    torch path."""
    if not (family.hybrid and cuda and padding_free):
        return
    if (reason := fla_refusal()) is not None:
        raise VlftError(f"{family.name}: packed rows (--packing / --padding_free true) on CUDA need fla's "
                        f"linear-attention kernels, and {reason}; fix that (fla#640 names the Triton and "
                        "tilelang versions), or train unpacked with --packing false --padding_free false")
    if (reason := fla_dtype_refusal(dtype)) is not None:
        raise VlftError(f"{family.name}: packed rows on CUDA need fla's linear-attention kernels, and {reason}; "
                        "or train unpacked with --packing false --padding_free false")


def _zero3_expert_loading(model_dir: Path):
    """Under ZeRO-3, MoE checkpoints already in transformers' expert layout load unconverted (expert_layout.py)."""
    from transformers import AutoConfig
    from transformers.integrations import is_deepspeed_zero3_enabled

    from vlft.train.expert_layout import experts_loaded_as_stored, stored_in_model_layout

    if is_deepspeed_zero3_enabled():
        config = AutoConfig.from_pretrained(model_dir)
        if stored_in_model_layout(Path(model_dir), config, get_family(config.model_type)):
            return experts_loaded_as_stored(config.model_type)
    return contextlib.nullcontext()


def set_router_aux_loss(model, coef: float | None) -> None:
    """MoE: add `coef` x the load-balancing loss to the loss (None keeps the config's setting; 0 turns it off)."""
    if coef is None:
        return
    text_config = model.config.text_config
    if not hasattr(text_config, "router_aux_loss_coef"):
        raise VlftError(f"--router_aux_loss_coef: {model.config.model_type} has no MoE router")
    text_config.router_aux_loss_coef = coef
    text_config.output_router_logits = coef > 0


def enable_gradient_checkpointing(model, llm: bool, vit: bool) -> None:
    """Recompute activations in the LLM and/or the ViT blocks (non-reentrant: frozen inputs are fine)."""
    if not (llm or vit):
        return
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.23's name; the old one warns there
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    modules = family_of(model).modules
    for part, keep in ((module_at(model, modules.vision_tower), vit), (module_at(model, modules.language_model), llm)):
        if not keep:
            for module in part.modules():
                if hasattr(module, "gradient_checkpointing"):
                    module.gradient_checkpointing = False
