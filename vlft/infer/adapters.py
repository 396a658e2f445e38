"""LoRA adapters of an engine: `--adapters PATH` (merged into the base, as before) and `--adapters NAME=PATH` (kept
apart on one PeftModel and chosen per request by name, as vLLM's and ms-swift's multi-LoRA serving do)."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

from vlft.errors import VlftError

ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")


@dataclass(frozen=True)
class AdapterSpecs:
    """The --adapters entries: bare paths (merged, in order) and named ones (served apart)."""

    merged: list[Path]
    named: dict[str, Path]

    @property
    def first_path(self) -> Path | None:
        """The first entry's checkpoint, whose args.json names the base model."""
        return (self.merged + list(self.named.values()) + [None])[0]


def adapter_specs(entries: list[str]) -> AdapterSpecs:
    """Split --adapters into bare paths and NAME=PATH pairs; a bare path that exists is never split at its `=`."""
    merged, named = [], {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not sep or Path(entry).exists():
            merged.append(Path(entry))
            continue
        if not ADAPTER_NAME.fullmatch(name):
            raise VlftError(f"--adapters {entry}: a name is letters, digits and . _ : - (NAME=PATH)")
        if name in named:
            raise VlftError(f"--adapters: the name {name!r} is given twice")
        named[name] = Path(path)
    return AdapterSpecs(merged, named)


def served_name(model: str | None, specs: AdapterSpecs) -> str:
    """The id the base model is served under by default: the last merged checkpoint's folder name, else the model
    folder's name, else the hub id as typed (ms-swift: the model dir's last name)."""
    if specs.merged:
        return specs.merged[-1].resolve().name
    path = Path(str(model))
    return path.resolve().name if path.is_dir() else str(model)


def with_named_adapters(model, named: dict[str, Path], base_model_dir: Path):
    """A PeftModel holding every named adapter (none active yet); `model` itself when there are none."""
    from peft import PeftModel

    from vlft.export.merge import check_adapter_fits
    from vlft.model.loading import attach_adapter

    for name, path in named.items():
        if not (path / "adapter_config.json").is_file():
            raise VlftError(f"--adapters {name}={path}: no adapter_config.json (not a LoRA checkpoint)")
        check_adapter_fits(path, model.get_base_model() if isinstance(model, PeftModel) else model, base_model_dir)
        model = attach_adapter(model, path, name)
    return model


def active_adapter(model, name: str | None):
    """A context in which `model` generates with the adapter `name` (None: the base alone). Each generate call
    runs under one adapter: PEFT's set_adapter switches every LoRA layer at once, so a batch never mixes them."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        if name is not None:
            raise VlftError(f"no adapter named {name!r} is loaded")
        return contextlib.nullcontext()
    if name is None:
        return model.disable_adapter()
    if name not in model.peft_config:
        raise VlftError(f"no adapter named {name!r} is loaded")
    model.set_adapter(name, inference_mode=True)
    return contextlib.nullcontext()
