"""Merging a LoRA checkpoint into its base model: a model dir that loads with plain transformers."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from vlft.errors import VlftError
from vlft.export.checkpoint import apply_umask, args_json_path, check_output_dir, require_lora_checkpoint
from vlft.export.unloaded import copy_unloaded_tensors
from vlft.model.loading import fit_embeddings, load_pretrained, load_processor, merge_adapter
from vlft.families import detect_family

PEFT_PREFIX = "base_model.model."
MAX_LISTED = 5


def adapted_modules(checkpoint: Path) -> dict[str, tuple[int, int]]:
    """Module name -> (in_features, out_features) of each LoRA A/B pair in the adapter's weights."""
    from safetensors import safe_open

    path = checkpoint / "adapter_model.safetensors"
    if not path.is_file():
        raise VlftError(f"{checkpoint}: no adapter_model.safetensors")
    shapes: dict[str, dict[str, list[int]]] = {}
    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            for half in ("lora_A", "lora_B"):
                if f".{half}." in key:
                    # A parameter-targeted module nests one PEFT wrapper per parameter (`experts.base_layer`).
                    name = key.split(f".{half}.")[0].removeprefix(PEFT_PREFIX).replace(".base_layer", "")
                    shapes.setdefault(name, {})[half] = f.get_slice(key).get_shape()
    # lora_A is (r, in_features), lora_B is (out_features, r)
    return {name: (s["lora_A"][1], s["lora_B"][0]) for name, s in shapes.items() if len(s) == 2}


def saved_module_shapes(checkpoint: Path) -> dict[str, tuple[int, ...]]:
    """The base parameter name -> shape of each tensor the adapter saves besides LoRA's (--modules_to_save's whole
    copies, saved under the base's names)."""
    from safetensors import safe_open

    with safe_open(str(checkpoint / "adapter_model.safetensors"), "pt") as f:
        return {key.removeprefix(PEFT_PREFIX): tuple(f.get_slice(key).get_shape()) for key in f.keys()
                if ".lora_" not in key}


def check_adapter_fits(checkpoint: Path, base, base_model_dir: Path) -> None:
    """Raise VlftError naming the adapter and the base when the adapter was trained on another model."""
    config = json.loads((checkpoint / "adapter_config.json").read_text(encoding="utf-8"))
    trained_on = (config.get("auto_mapping") or {}).get("base_model_class")
    adapter = (f"the adapter {checkpoint} (trained on {trained_on or 'a model'} at "
               f"{config.get('base_model_name_or_path') or 'an unrecorded path'})")
    base_name = f"the base model {base_model_dir} ({type(base).__name__})"
    if trained_on and trained_on != type(base).__name__:
        raise VlftError(f"{adapter} does not fit {base_name}: another model family; pass the --model it was "
                        "trained on")
    # PEFT loads an adapter whose modules are missing with only a warning, and the merge is then a no-op:
    # check the modules the adapter's weights name (target_modules may be a regex) against the base's.
    modules = dict(base.named_modules())
    misfits = []
    for name, (n_in, n_out) in adapted_modules(checkpoint).items():
        module = modules.get(name)
        if module is None:
            misfits.append(f"{name}: not in the base")
        elif isinstance(module, torch.nn.Linear) and (module.in_features, module.out_features) != (n_in, n_out):
            misfits.append(f"{name}: {n_in}->{n_out} in the adapter, {module.in_features}->"
                           f"{module.out_features} in the base")
    parameters = dict(base.named_parameters())
    for name in config.get("target_parameters") or []:  # MoE experts' fused weights, by exact name
        if name not in parameters and not any(n.endswith("." + name) for n in parameters):
            misfits.append(f"{name}: no such parameter in the base")
    for name, shape in saved_module_shapes(checkpoint).items():  # --modules_to_save's whole copies
        param = parameters.get(name)
        if param is not None and tuple(param.shape) != shape:
            misfits.append(f"{name}: {list(shape)} in the adapter, {list(param.shape)} in the base (the run's "
                           "--new_special_tokens grow the embedding: give them, or the run's args.json, here too)")
    if misfits:
        more = f"\n  ... and {len(misfits) - MAX_LISTED} more" if len(misfits) > MAX_LISTED else ""
        raise VlftError(f"{adapter} does not fit {base_name}: {len(misfits)} target module(s) differ:\n  "
                        + "\n  ".join(misfits[:MAX_LISTED]) + more)


def merge_lora(checkpoint: Path, output_dir: Path, base_model_dir: Path, dtype: torch.dtype | None = None,
               max_shard_size: str = "5GB") -> Path:
    """Write the base with the LoRA merged in, its processor, generation config and args.json to output_dir."""
    require_lora_checkpoint(checkpoint)
    check_output_dir(output_dir)
    base = load_pretrained(base_model_dir, dtype or "auto")
    processor = load_processor(checkpoint, fallback=base_model_dir)  # the tokenizer it trained with
    fit_embeddings(base, len(processor.tokenizer))  # --new_special_tokens beyond the free rows, as in training
    check_adapter_fits(checkpoint, base, base_model_dir)
    merged = merge_adapter(base, checkpoint)
    if merged.get_output_embeddings() is not None and \
            merged.get_output_embeddings().weight is not merged.get_input_embeddings().weight:
        for config in {id(c): c for c in (merged.config, merged.config.get_text_config())}.values():
            config.tie_word_embeddings = False  # --modules_to_save trained them apart: one flag for both configs
    # Written beside output_dir (same filesystem) and renamed at the end: an interrupted export leaves no
    # half-written model dir where a later command would take it for a model.
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))
    try:
        merged.save_pretrained(staging, max_shard_size=max_shard_size)
        copy_unloaded_tensors(base_model_dir, staging, detect_family(base_model_dir).unloaded_prefixes)
        # the processor saved with the checkpoint (the chat template it trained with), else the base model's
        processor.save_pretrained(staging)
        for source in (base_model_dir / "generation_config.json", args_json_path(checkpoint)):
            if source is not None and source.is_file():
                shutil.copyfile(source, staging / source.name)
        apply_umask(staging)  # mkdtemp made it 0700, safetensors its weights 0600
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir
