"""Cached encodings, keyed by a hash of the rows, the local media files they name, the model's processor
files, the template and the encode settings, so a second run with nothing changed skips encoding
(`--load_from_cache_file`)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import vlft
from vlft.data.formats import rename_columns
from vlft.data.loss_scale import table
from vlft.data.media import resolve_media_path

if TYPE_CHECKING:
    from vlft.data.encode import Encoder
    from vlft.data.loader import RawRow
    from vlft.data.pipeline import EncodeResult

CACHE_FORMAT = 1
# Keys under which a row (any format: `images`, `{"path": ...}` items, OpenAI content parts) holds media; every
# string below one of them is taken as a media reference.
MEDIA_KEYS = frozenset({"images", "image", "videos", "video", "image_url", "video_url"})
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


def media_refs(row: Any) -> list[str]:
    """Every string under a media key of a row, in row order (walked without recursion)."""
    refs, stack = [], [(row, False)]
    while stack:
        item, under_media = stack.pop()
        if isinstance(item, str):
            if under_media:
                refs.append(item)
        elif isinstance(item, dict):
            stack.extend((v, under_media or k in MEDIA_KEYS) for k, v in reversed(list(item.items())))
        elif isinstance(item, list):
            stack.extend((v, under_media) for v in reversed(item))
    return refs


@functools.lru_cache(maxsize=65536)
def _file_sha256(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    """The content hash of a file, memoized by its stat: a file referenced by many rows is read once. The
    ctime and inode are in the memo's key because a rewrite can keep the size and put the mtime back."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def media_file_state(ref: str, base_dir: Path | None) -> str:
    """What a cached encoding of a row depends on in the local file `ref` names: its size, mtime and content
    (as a build cache checks its inputs), or that it is missing; "" for URLs and data URIs (in the row itself)."""
    if ref.startswith(("data:", "http://", "https://")):
        return ""
    path = resolve_media_path(ref, base_dir)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            return f"{path}: not a file"
        digest = _file_sha256(str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        return f"{path}: {st.st_size} {st.st_mtime_ns} {digest}"
    except (OSError, ValueError) as e:  # missing, unreadable, a name too long or with a NUL byte
        return f"{path}: missing ({type(e).__name__})"


def cache_key(rows: list["RawRow"], encoder: "Encoder", model_dir: Path, columns: dict | None,
              keep_pixels: bool = True) -> str:
    """sha256 over everything that decides the encodings (and whether they hold pixel values)."""
    h = hashlib.sha256()
    h.update(f"vlft {vlft.__version__} cache {CACHE_FORMAT}\n".encode())
    h.update(json.dumps({"family": encoder.family.name, "template": dataclasses.asdict(encoder.template),
                         "settings": dataclasses.asdict(encoder.settings), "columns": columns,
                         "keep_pixels": keep_pixels,  # the weightings' tables, not only their names
                         "loss_scale": {name: table(name) for name in encoder.loss_scale.weightings}},
                        sort_keys=True, default=repr).encode())
    h.update(processor_digest(model_dir))
    for raw in rows:
        h.update(f"{raw.source}:{raw.line}:{raw.base_dir}".encode())
        h.update(json.dumps(raw.row, sort_keys=True, default=_json_default).encode())
        if isinstance(raw.row, dict):  # a changed or deleted image must not read as its old encoding
            for ref in media_refs(rename_columns(raw.row, columns)):
                h.update(media_file_state(ref, raw.base_dir).encode("utf-8", "surrogatepass") + b"\0")
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
