"""The one place vlft loads a model, a processor or a LoRA adapter from disk: training (vlft/train/model.py),
inference (vlft/infer/engine.py), export (vlft/export/merge.py) and data encoding (vlft/data/pipeline.py) all come
here, so they load the same way."""

from __future__ import annotations

from pathlib import Path

import torch


def load_pretrained(model_dir: Path, dtype: torch.dtype | str = "auto", attn_implementation: str = "sdpa",
                    quantization_config=None, device: torch.device | None = None):
    """The model of `model_dir` with transformers' own classes (never remote code), in `dtype`; with a
    `quantization_config` (QLoRA, vlft/train/quantization.py) quantized as it loads onto `device` (bitsandbytes'
    weights are not moved after loading: the Trainer leaves them where they are)."""
    from transformers import AutoModelForImageTextToText

    placement = {} if quantization_config is None else {"quantization_config": quantization_config,
                                                        "device_map": {"": device or "cpu"}}
    return AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype, attn_implementation=attn_implementation,
                                                       **placement)


def load_processor(model_dir: Path, fallback: Path | None = None):
    """The HF processor of `model_dir` (tokenizer, image and video processors, chat template); `fallback`'s when
    `model_dir` holds none (an adapter checkpoint saved without processor files)."""
    from transformers import AutoProcessor

    if fallback is None:
        return AutoProcessor.from_pretrained(model_dir)
    try:
        return AutoProcessor.from_pretrained(model_dir)
    except (OSError, ValueError, KeyError):
        return AutoProcessor.from_pretrained(fallback)


def merge_adapter(model, adapter: Path):
    """`model` with the LoRA checkpoint `adapter` applied and merged into its weights (so several can stack)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()


def attach_adapter(model, adapter: Path, name: str):
    """`model` with the LoRA checkpoint `adapter` attached under `name`, not merged (a PeftModel gains one more
    adapter; a plain model becomes a PeftModel)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model.load_adapter(str(adapter), adapter_name=name)
        return model
    return PeftModel.from_pretrained(model, str(adapter), adapter_name=name)
