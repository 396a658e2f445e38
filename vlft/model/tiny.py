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
TINY_VERSION = 5  # bump when the tiny models change, so caches rebuild


def tiny_names() -> dict[str, str]:
    """`vlft/tiny-*` suffix -> family name, from the family registry."""
    from vlft.families import FAMILIES

    return {family.tiny_name: name for name, family in FAMILIES.items()}


def tiny_family(model: str) -> str | None:
    """The family of a `vlft/tiny-*` model name, or None if `model` is not one."""
    if not model.startswith(TINY_PREFIX):
        return None
    name, names = model[len(TINY_PREFIX):], tiny_names()
    if name not in names:
        raise VlftError(f"unknown built-in model {model!r}; known: " + ", ".join(TINY_PREFIX + n for n in names))
    return names[name]


def tiny_config(family_name: str):
    """A small config of the family's real architecture (its TinySpec), on the family's real token ids."""
    import transformers

    from vlft.families import get_family

    family = get_family(family_name)
    vocab = family.tokenizer
    ids = dict(image_token_id=vocab.id_of("<|image_pad|>"), video_token_id=vocab.id_of("<|video_pad|>"),
               vision_start_token_id=vocab.id_of("<|vision_start|>"),
               vision_end_token_id=vocab.id_of("<|vision_end|>"))
    cls = getattr(transformers, family.tiny.config_class)
    return cls(text_config=dict(family.tiny.text), vision_config=dict(family.tiny.vision), tie_word_embeddings=False,
               **ids)


def official_file(family: str, name: str) -> Path | None:
    """A file of the family's official repo shipped with vlft (templates/official/), if present."""
    from vlft.families import get_family

    path = resources.files("vlft.templates") / "official" / get_family(family).official_files / name
    return Path(str(path)) if path.is_file() else None


def _settings(family: str, name: str, drop: tuple[str, ...]) -> dict:
    settings = json.loads(official_file(family, name).read_text())
    return {k: v for k, v in settings.items() if k not in drop}


def build_processor(family_name: str, tokenizer):
    """The family's HF processor (its TinySpec's classes) from its official settings, the given tokenizer and
    its official chat template."""
    import transformers

    from vlft.families import get_family

    tiny = get_family(family_name).tiny
    image_settings = _settings(family_name, "preprocessor_config.json", ("image_processor_type", "processor_class"))
    image_processor = getattr(transformers, tiny.image_processor_class)(**image_settings)
    if official_file(family_name, "video_preprocessor_config.json") is not None:
        video_settings = _settings(family_name, "video_preprocessor_config.json",
                                   ("video_processor_type", "processor_class"))
    else:  # Qwen2-VL / Qwen2.5-VL: videos are processed with the image settings
        video_settings = dict(image_settings)
    video_processor = getattr(transformers, tiny.video_processor_class)(**video_settings)
    chat_template = official_file(family_name, "chat_template.jinja").read_text()
    return getattr(transformers, tiny.processor_class)(image_processor=image_processor,
                                                       video_processor=video_processor, tokenizer=tokenizer,
                                                       chat_template=chat_template)


def build_tiny_model(family_name: str, output_dir: Path, seed: int = 0) -> Path:
    """Write a tiny random model of the family to output_dir (a plain HF model dir, as a hub download is)."""
    from transformers import AutoModelForImageTextToText, GenerationConfig

    from vlft.families import get_family

    family = get_family(family_name)
    output_dir = Path(output_dir)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(tiny_config(family_name), dtype=torch.float32)
    model.save_pretrained(output_dir)
    if family.tiny.unloaded_tensor_shapes is not None:
        add_unloaded_tensors(output_dir, family.tiny.unloaded_tensor_shapes(model.config.text_config), seed)
    build_processor(family_name, build_qwen_tokenizer(family.tokenizer)).save_pretrained(output_dir)
    vocab = family.tokenizer
    endoftext, im_end = vocab.id_of("<|endoftext|>"), vocab.id_of("<|im_end|>")
    GenerationConfig(bos_token_id=endoftext, eos_token_id=[im_end, endoftext], pad_token_id=endoftext,
                     do_sample=False).save_pretrained(output_dir)
    return output_dir


def add_unloaded_tensors(model_dir: Path, shapes: dict[str, tuple[int, ...]], seed: int) -> None:
    """Random tensors of these shapes written beside the model's own (e.g. Qwen3.5's `mtp.*` head): real
    checkpoints carry them and transformers does not load them, so the tiny model tests that exports keep them."""
    from safetensors.torch import load_file, save_file

    generator = torch.Generator().manual_seed(seed + 1)
    path = model_dir / "model.safetensors"
    tensors = load_file(str(path))
    tensors.update({k: torch.randn(shape, generator=generator) for k, shape in shapes.items()})
    save_file(tensors, str(path), metadata={"format": "pt"})


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
