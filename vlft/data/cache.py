"""Cached encodings, keyed by a hash of the rows, the model's processor files, the template and the
encode settings, so a second run with nothing changed skips encoding (`--load_from_cache_file`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import vlft

if TYPE_CHECKING:
    from vlft.data.encode import Encoder
    from vlft.data.loader import RawRow
    from vlft.data.pipeline import EncodeResult

CACHE_FORMAT = 1
PROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json",
                   "tokenizer_config.json", "tokenizer.json", "chat_template.jinja", "chat_template.json")


def _json_default(value: Any) -> Any:
    """Rows from hub datasets may hold bytes or PIL images: hash their content, not their identity."""
    if isinstance(value, (bytes, bytearray)):
        return hashlib.sha256(value).hexdigest()
    if hasattr(value, "tobytes") and hasattr(value, "size"):  # a PIL image
        return hashlib.sha256(value.tobytes()).hexdigest() + str(value.size)
    return repr(value)


def processor_digest(model_dir: Path) -> bytes:
    """sha256 over the model dir's processor files (tokenizer, image and video processors, chat template)."""
    h = hashlib.sha256()
    for name in PROCESSOR_FILES:
        path = Path(model_dir) / name
        if path.is_file():
            h.update(name.encode() + hashlib.sha256(path.read_bytes()).digest())
    return h.digest()


def cache_key(rows: list["RawRow"], encoder: "Encoder", model_dir: Path, columns: dict | None,
              keep_pixels: bool = True) -> str:
    """sha256 over everything that decides the encodings (and whether they hold pixel values)."""
    h = hashlib.sha256()
    h.update(f"vlft {vlft.__version__} cache {CACHE_FORMAT}\n".encode())
    h.update(json.dumps({"family": encoder.family.name, "template": dataclasses.asdict(encoder.template),
                         "settings": dataclasses.asdict(encoder.settings), "columns": columns,
                         "keep_pixels": keep_pixels},
                        sort_keys=True, default=repr).encode())
    h.update(processor_digest(model_dir))
    for raw in rows:
        h.update(f"{raw.source}:{raw.line}:{raw.base_dir}".encode())
        h.update(json.dumps(raw.row, sort_keys=True, default=_json_default).encode())
        if raw.error is not None:
            h.update(str(raw.error).encode())
    return h.hexdigest()


class EncodingCache:
    """One file per key under the cache dir, written atomically."""

    def __init__(self, directory: Path, key: str):
        self.path = Path(directory) / f"{key}.pt"

    def load(self) -> list["EncodeResult"] | None:
        """The cached results, or None when there are none (or the file is unreadable)."""
        if not self.path.is_file():
            return None
        try:
            return torch.load(self.path, weights_only=False)
        except Exception:  # a truncated or stale file: encode again
            return None

    def save(self, results: list["EncodeResult"]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(results, tmp)
        os.replace(tmp, self.path)
