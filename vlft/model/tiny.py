"""Built-in tiny models: a normal HF model dir per family with random weights, the real Qwen
tokenizer, and the family's real chat template and processor settings. Tests and the README's
default job use them (`--model vlft/tiny-qwen3-vl`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import torch

from vlft.errors import VlftError
from vlft.model.tokenizer import build_qwen_tokenizer

TINY_PREFIX = "vlft/tiny-"
TINY_VERSION = 2  # bump when the tiny models change, so caches rebuild
TINY_NAMES = {"qwen3-vl": "qwen3_vl", "qwen3-vl-moe": "qwen3_vl_moe", "qwen2.5-vl": "qwen2_5_vl",
              "qwen2-vl": "qwen2_vl"}
VOCAB_SIZE = 151936  # the real models' padded embedding size
TOKEN_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                 vision_end_token_id=151653)


def tiny_family(model: str) -> str | None:
    """The family of a `vlft/tiny-*` model name, or None if `model` is not one."""
    if not model.startswith(TINY_PREFIX):
        return None
    name = model[len(TINY_PREFIX):]
    if name not in TINY_NAMES:
        raise VlftError(f"unknown built-in model {model!r}; known: "
                        + ", ".join(TINY_PREFIX + n for n in TINY_NAMES))
    return TINY_NAMES[name]


def _text_config(family: str) -> dict:
    text = dict(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=32768,
                rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151645, pad_token_id=151643,
                # Real models use 0.02 at hidden 2048-5120; at hidden 64 that leaves logits within about +-1,
                # too flat to learn anything. 0.125 keeps the logit scale of a real model.
                initializer_range=0.125)
    if family.startswith("qwen3_vl"):
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [4, 2, 2],
                                   "mrope_interleaved": True}
    else:
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}
    if family == "qwen3_vl_moe":
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
    return text


def tiny_config(family: str):
    """A small config of the family's real architecture (2 LLM layers, 2 ViT blocks)."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig, Qwen3VLConfig, Qwen3VLMoeConfig

    text = _text_config(family)
    if family.startswith("qwen3_vl"):
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                      spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64,
                      num_position_embeddings=64, deepstack_visual_indexes=[0, 1])
        cls = Qwen3VLMoeConfig if family == "qwen3_vl_moe" else Qwen3VLConfig
        return cls(text_config=text, vision_config=vision, tie_word_embeddings=False, **TOKEN_IDS)
    if family == "qwen2_5_vl":
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, window_size=56,
                      fullatt_block_indexes=[1], out_hidden_size=64, spatial_merge_size=2, temporal_patch_size=2)
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **TOKEN_IDS)
    vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    return Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **TOKEN_IDS)


def official_file(family: str, name: str) -> Path | None:
    """A file of the family's official repo shipped with vlft (templates/official/), if present."""
    path = resources.files("vlft.templates") / "official" / family / name
    return Path(str(path)) if path.is_file() else None


def build_processor(family: str, tokenizer):
    """The family's HF processor from its official settings, the given tokenizer and chat template."""
    from transformers import (Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLProcessor,
                              Qwen2VLVideoProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor)

    image_settings = json.loads(official_file(family, "preprocessor_config.json").read_text())
    for key in ("image_processor_type", "processor_class"):
        image_settings.pop(key, None)
    chat_template = official_file(family, "chat_template.jinja").read_text()
    image_processor = Qwen2VLImageProcessor(**image_settings)
    if family.startswith("qwen3_vl"):
        video_settings = json.loads(official_file(family, "video_preprocessor_config.json").read_text())
        for key in ("video_processor_type", "processor_class"):
            video_settings.pop(key, None)
        video_processor = Qwen3VLVideoProcessor(**video_settings)
        return Qwen3VLProcessor(image_processor=image_processor, video_processor=video_processor,
                                tokenizer=tokenizer, chat_template=chat_template)
    video_processor = Qwen2VLVideoProcessor(**{k: v for k, v in image_settings.items()})
    cls = Qwen2_5_VLProcessor if family == "qwen2_5_vl" else Qwen2VLProcessor
    return cls(image_processor=image_processor, video_processor=video_processor, tokenizer=tokenizer,
               chat_template=chat_template)


def build_tiny_model(family: str, output_dir: Path, seed: int = 0) -> Path:
    """Write a tiny random model of `family` to output_dir (a plain HF model dir)."""
    from transformers import AutoModelForImageTextToText, GenerationConfig

    output_dir = Path(output_dir)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(tiny_config(family), dtype=torch.float32)
    model.save_pretrained(output_dir)
    tokenizer = build_qwen_tokenizer()
    build_processor(family, tokenizer).save_pretrained(output_dir)
    GenerationConfig(bos_token_id=151643, eos_token_id=[151645, 151643], pad_token_id=151643,
                     do_sample=False).save_pretrained(output_dir)
    return output_dir


def tiny_cache_dir(cache_root: Path) -> Path:
    return Path(cache_root) / "tiny" / f"v{TINY_VERSION}"


def ensure_tiny_model(family: str, cache_root: Path) -> Path:
    """The cached tiny model dir of `family`, built on first use (one process builds, others wait)."""
    from filelock import FileLock

    target = tiny_cache_dir(cache_root) / family
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{family}.lock")):
        if (target / "config.json").is_file():  # built by another process while we waited
            return target
        if target.exists():  # a build that was interrupted before its rename cannot be: staging is separate
            shutil.rmtree(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{family}-", dir=target.parent))
        try:
            build_tiny_model(family, staging)
            os.rename(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target
