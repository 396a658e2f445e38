"""What a training checkpoint is and which base model it was trained on (from the run's args.json)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vlft.errors import VlftError
from vlft.paths import cache_root
from vlft.train.run_dir import check_writable

# A full-training checkpoint is a complete model dir: a config and its weights (one file or shards).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_output_dir(output_dir: Path) -> None:
    """Raise VlftError if `output_dir` exists (a model dir is never overwritten) or cannot be created."""
    if output_dir.exists():
        raise VlftError(f"--output_dir {output_dir} exists; remove it or pass another --output_dir")
    check_writable(output_dir)


def args_json_path(checkpoint: Path) -> Path | None:
    """The checkpoint's args.json, else its run dir's (`output/v{N}-.../args.json`), else None."""
    for path in (checkpoint / "args.json", checkpoint.parent / "args.json"):
        if path.is_file():
            return path
    return None


def read_checkpoint_args(checkpoint: Path) -> dict:
    """The arguments of the run that wrote `checkpoint` (its args.json, else the run dir's)."""
    path = args_json_path(checkpoint)
    if path is None:
        raise VlftError(f"{checkpoint} has no args.json (nor has its run dir {checkpoint.parent}); pass --model")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise VlftError(f"{path}: not valid JSON ({e}); pass --model") from None


def is_full_model_dir(path: Path) -> bool:
    """True for a complete HF model dir (config.json and weights), such as a `--train_type full` checkpoint."""
    return (path / "config.json").is_file() and any((path / name).is_file() for name in WEIGHT_FILES)


def require_lora_checkpoint(checkpoint: Path) -> None:
    """Raise VlftError unless `checkpoint` is a dir holding a LoRA adapter (adapter_config.json)."""
    if not checkpoint.is_dir():
        raise VlftError(f"--adapters {checkpoint}: no such directory")
    if (checkpoint / "adapter_config.json").is_file():
        return
    if is_full_model_dir(checkpoint):
        raise VlftError(f"{checkpoint}: not a LoRA checkpoint: nothing to merge (it is a full model dir, from "
                        f"--train_type full; load it directly, e.g. --model {checkpoint})")
    raise VlftError(f"{checkpoint}: not a LoRA checkpoint: nothing to merge (no adapter_config.json)")


def base_model_of(checkpoint: Path, model_override: str | None, cache_dir: str | None, *, use_hf: bool = False,
                  hub_token: str | None = None, revision: str | None = None) -> Path:
    """The base model dir: `--model` (at `revision`) when given, else the `model` of the run's args.json (at the
    run's own revision unless `revision` is given)."""
    from vlft.model.hub import resolve_model_dir  # imports torch (tiny models): only when a base is needed

    if model_override:
        return resolve_model_dir(model_override, use_hf=use_hf, cache_root=cache_root(cache_dir),
                                 hub_token=hub_token, revision=revision)
    args = read_checkpoint_args(checkpoint)
    model = args.get("model")
    if not model:
        raise VlftError(f"{args_json_path(checkpoint)} names no model; pass --model")
    try:
        # The run's own hub and cache settings, unless this command sets them.
        return resolve_model_dir(model, use_hf=use_hf or bool(args.get("use_hf")),
                                 cache_root=cache_root(cache_dir or args.get("cache_dir")),
                                 hub_token=hub_token, revision=revision or args.get("model_revision"))
    except VlftError as e:
        raise VlftError(f"the base model {model!r} of {args_json_path(checkpoint)}: {e}; pass --model") from None


def current_umask() -> int:
    """The process's umask: from /proc on Linux (no window with another umask set), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(root: Path) -> None:
    """Give `root` and everything under it the modes the user's umask gives new dirs and files. safetensors
    (0.8) writes each file through a 0600 temporary file, and tempfile.mkdtemp makes 0700 dirs: without this,
    checkpoints and merged models are private to their writer whatever the umask."""
    mask = current_umask()
    for path in [Path(root), *Path(root).rglob("*")]:
        if path.is_symlink():
            continue
        executable = path.is_dir() or path.stat().st_mode & 0o111
        os.chmod(path, (0o777 if executable else 0o666) & ~mask)
