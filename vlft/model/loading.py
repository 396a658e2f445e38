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


# Rows of a grown embedding come in multiples of this (ms-swift's rounding).
EMBEDDING_ROW_MULTIPLE = 128


def fit_embeddings(model, tokens: int) -> int | None:
    """Grow the language model's embedding (and an untied output head) to hold `tokens` ids when it has fewer rows
    (--new_special_tokens beyond the free rows), to the next multiple of EMBEDDING_ROW_MULTIPLE, as ms-swift does;
    the new rows are the mean of the old ones (in float64: the same on every load and device; ms-swift samples them
    around that mean instead), so training, inference and export agree without saving them (train them with
    --modules_to_save embed_tokens lm_head). Returns the new row count, None
    when the rows already suffice."""
    embedding = model.get_input_embeddings()
    rows = embedding.num_embeddings
    if tokens <= rows:
        return None
    grown = -(-tokens // EMBEDDING_ROW_MULTIPLE) * EMBEDDING_ROW_MULTIPLE
    model.resize_token_embeddings(grown, mean_resizing=False)
    with torch.no_grad():
        for module in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings())
                       if m is not None}.values():
            module.weight[rows:] = module.weight[:rows].double().mean(0).to(module.weight.dtype)
            bias = getattr(module, "bias", None)
            if bias is not None:
                bias[rows:] = bias[:rows].double().mean().to(bias.dtype)
    return grown

