"""Resolving `--model`: a local dir, a built-in tiny model, or a hub id (ModelScope, or the HF Hub with USE_HF)."""

from __future__ import annotations

from pathlib import Path

from vlft.errors import VlftError
from vlft.model.tiny import ensure_tiny_model, tiny_family


def resolve_model_dir(model: str, *, use_hf: bool, cache_root: Path, hub_token: str | None = None,
                      revision: str | None = None) -> Path:
    """A local model dir for `model`; downloads a hub id, never a local path."""
    family = tiny_family(model)
    if family is not None:
        return ensure_tiny_model(family, cache_root)
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise VlftError(f"--model {model}: not a directory")
        if not (path / "config.json").is_file():
            raise VlftError(f"--model {model}: not a model dir (no config.json)")
        return path
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise VlftError(f"--model {model}: no such directory, and not a hub id of the form org/name")
    return download_model(model, use_hf=use_hf, token=hub_token, revision=revision)


def download_model(model_id: str, *, use_hf: bool, token: str | None, revision: str | None) -> Path:
    """Download a model snapshot from the HF Hub (use_hf) or ModelScope; a VlftError if it can't be had."""
    hub = "the HF Hub" if use_hf else "ModelScope"
    try:
        if use_hf:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(model_id, token=token, revision=revision))
        from modelscope import snapshot_download as ms_snapshot_download

        return Path(ms_snapshot_download(model_id, revision=revision or "master"))
    except Exception as e:  # hub clients raise many types: offline, 404, auth
        other = "ModelScope (unset USE_HF)" if use_hf else "the HF Hub (USE_HF=1)"
        raise VlftError(f"--model {model_id}: not a local dir, and downloading it from {hub} failed: "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (try {other}, or a local path)"
                        ) from None
