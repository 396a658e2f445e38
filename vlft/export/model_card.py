"""The README.md model card pushed with a model: YAML front matter the hubs index, then what the model is and
the arguments it was trained with (secrets left out)."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

ModelKind = Literal["adapter", "merged", "full"]

# Argument names that hold credentials: hub_token, hf_token, modelscope_api_token, api_key, password, ...
# (anchored at the end, so max_new_tokens or image_max_token_num stay).
_SECRET_KEY = re.compile(r"(?:^|_)(?:token|secret|password|api_key|credentials?)$", re.IGNORECASE)
# A hub model id (OWNER/NAME) as the front matter's base_model may name it; a local path may not.
_HUB_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Models built into vlft (vlft/tiny-qwen3-vl, ...) are on no hub.
_BUILT_IN_PREFIX = "vlft/"

_DESCRIPTION = {
    "adapter": "a LoRA adapter for {base}",
    "merged": "{base} with a LoRA adapter merged into its weights",
    "full": "a full model fine-tuned from {base}",
}
_WEIGHTS = {
    "adapter": "LoRA adapter in PEFT's format (`adapter_config.json`, `adapter_model.safetensors`)",
    "merged": "full model, the LoRA merged in: loads without PEFT",
    "full": "full model",
}
_USAGE = {
    "adapter": ("Download the repo, then `vlft infer --adapters DIR` (the base model comes from its `args.json`), "
                "or load it with PEFT: `PeftModel.from_pretrained(base_model, DIR)` (after "
                "`base_model.resize_token_embeddings` where the run's `--new_special_tokens` outgrew the "
                "embedding: vlft's new rows are the mean of the others)."),
    "merged": ("`vlft infer --model DIR`, or with transformers: `AutoModelForImageTextToText.from_pretrained(DIR)` "
               "and `AutoProcessor.from_pretrained(DIR)`."),
}
_USAGE["full"] = _USAGE["merged"]


def public_training_args(args: dict[str, Any]) -> dict[str, Any]:
    """The run's arguments without credentials (an args.json from another tool may hold a hub_token)."""
    return {key: value for key, value in args.items() if not _SECRET_KEY.search(key)}


def hub_base_model(model: str | None) -> str | None:
    """`model` when it names a hub model (OWNER/NAME), else None (a local path or a built-in tiny model)."""
    if not model or model.startswith(_BUILT_IN_PREFIX) or not _HUB_MODEL_ID.match(model):
        return None
    return model


def model_kind(is_adapter: bool, args: dict[str, Any] | None) -> ModelKind:
    """What a pushed dir holds: an adapter, a base with a LoRA merged in (its args.json says lora), or a full
    model (fully fine-tuned, or of unrecorded origin)."""
    if is_adapter:
        return "adapter"
    return "merged" if args and args.get("train_type", "lora") == "lora" else "full"


def _front_matter(base_model: str | None, kind: ModelKind) -> str:
    tags = ["vlft", "image-text-to-text", *(["lora"] if kind != "full" else [])]
    lines = ["---"]
    if base_model:
        lines.append(f"base_model: {json.dumps(base_model)}")  # a JSON string is a YAML string
    lines.append(f"library_name: {'peft' if kind == 'adapter' else 'transformers'}")
    lines.append("pipeline_tag: image-text-to-text")
    lines.append("tags:")
    lines += [f"- {tag}" for tag in tags]
    lines.append("---")
    return "\n".join(lines)


def model_card(*, repo_id: str, kind: ModelKind, base_model: str | None, hub_base: bool,
               args: dict[str, Any] | None, vlft_version: str) -> str:
    """README.md for a pushed model: front matter (base_model, library_name, tags), description, usage, and
    the training arguments. `hub_base` says whether `base_model` is a hub id (else it is only named in the text)."""
    base_text = f"`{base_model}`" if base_model else "an unrecorded base model"
    parts = [
        _front_matter(base_model if hub_base else None, kind),
        f"# {repo_id.rsplit('/', 1)[-1]}",
        f"This is {_DESCRIPTION[kind].format(base=base_text)}, trained and exported with vlft {vlft_version}.",
        f"- Base model: {base_text}\n- Weights: {_WEIGHTS[kind]}",
        "## Use",
        _USAGE[kind],
    ]
    if args:
        text = json.dumps(public_training_args(args), indent=2, ensure_ascii=False, default=str)
        parts += ["## Training arguments", f"From the run's `args.json` (`vlft sft`):\n\n```json\n{text}\n```"]
    else:
        parts += ["## Training arguments", "Not recorded (the pushed dir has no args.json)."]
    return "\n\n".join(parts) + "\n"
