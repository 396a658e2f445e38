"""The media a chat request names, fetched and checked by the server before the engine sees it: local files only
inside one folder, downloads only when allowed and only from public addresses, files and downloads no bigger
than a byte limit, images only in common formats. An image's size is read from its header (PIL opens lazily)
and checked per image and per request before any pixel is decoded; images are then decoded one at a time and
shrunk to the size the model's processor would give them, so a request holds small images only."""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image

from vlft.data.media import check_pixels, load_image, open_image_header
from vlft.errors import DataError, VlftError
from vlft.infer.remote_media import RemoteFetch, download

# The formats a client may send (MPO: phone photos). Others that PIL opens are refused: EPS, for one,
# runs Ghostscript when decoded.
IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF")
TargetSize = Callable[[int, int], "tuple[int, int] | None"]  # (width, height) -> the processor's resized size


@dataclass(frozen=True)
class MediaLimits:
    """What a request's media may be. `root`: the one folder local paths may point into (None: none); `remote`:
    how URLs are fetched (None: refused); `temp_dir`: where a request's videos are written while it runs."""

    root: Path | None = None
    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_request_pixels: int = 100_000_000
    remote: RemoteFetch | None = None
    temp_dir: Path | None = None


def check_media_root(root: Path | None) -> None:
    """Refuse an --allow_local_media that is not an existing folder (before the model loads)."""
    if root is not None and not root.is_dir():
        raise VlftError(f"--allow_local_media {root}: not a folder")


def confined_path(ref: str, root: Path | None, field: str) -> Path:
    """The file a local path or file:// URL names, which must lie inside `root` once symlinks and `..`
    are resolved; relative paths are taken from `root`."""
    if root is None:
        raise DataError(f"local media paths are refused ({ref[:200]}); start vlft deploy with "
                        "--allow_local_media FOLDER, or send a data: URL", field=field)
    text = ref.removeprefix("file://")
    if not text or "\x00" in text:
        raise DataError(f"not a file path: {ref[:200]!r}", field=field)
    root = root.resolve()
    path = Path(text) if Path(text).is_absolute() else root / text
    try:
        resolved = path.resolve()  # follows every symlink and `..`
    except (OSError, RuntimeError) as e:  # a symlink loop, a name too long
        raise DataError(f"cannot resolve {ref[:200]}: {e}", field=field) from None
    if not resolved.is_relative_to(root):
        raise DataError(f"{ref[:200]} is outside the media folder", field=field)
    if not resolved.is_file():
        raise DataError(f"file not found in the media folder: {ref[:200]}", field=field)
    return resolved


def _read_file(path: Path, ref: str, limits: MediaLimits, field: str) -> bytes:
    try:  # O_NOFOLLOW: a link put in place of the checked file after the check is not followed
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(descriptor, "rb") as f:
            data = f.read(limits.max_bytes + 1)
    except OSError as e:
        raise DataError(f"cannot read {ref[:200]}: {e.strerror}", field=field) from None
    if len(data) > limits.max_bytes:
        raise DataError(f"{ref[:200]} is above the limit of {limits.max_bytes} bytes", field=field)
    return data


def _decode_data_uri(ref: str, field: str) -> bytes:
    header, _, payload = ref.partition(",")
    if ";base64" not in header:
        raise DataError("data URI is not base64-encoded", field=field)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise DataError(f"bad base64 in data URI: {e}", field=field) from None


def media_bytes(ref: str, limits: MediaLimits, field: str) -> bytes:
    """The bytes behind a data: URI, an http(s) URL (with --allow_remote_media), or a local path inside the
    media folder."""
    if ref.startswith("data:"):
        return _decode_data_uri(ref, field)
    if ref.startswith(("http://", "https://")):
        if limits.remote is None:
            raise DataError(f"remote media are refused ({ref[:200]}); send a data: URL, or start vlft deploy "
                            "with --allow_remote_media true", field=field)
        return download(ref, limits.remote, field)
    return _read_file(confined_path(ref, limits.root, field), ref, limits, field)


def image_header(data: bytes, max_pixels: int, field: str) -> Image.Image:
    """The image opened lazily (no pixel decoded), refused if its format is not one clients may send or it is
    over `max_pixels`."""
    try:
        image = open_image_header(data, "image")
        if image.format not in IMAGE_FORMATS:
            raise DataError(f"{image.format} is not an accepted image format ({', '.join(IMAGE_FORMATS)})")
        check_pixels(image.width, image.height, max_pixels, "image")
    except DataError as e:
        raise e.within(field) from None
    return image


class ImageDecoder:
    """Decodes checked images one at a time (the peak memory is one image at the per-image limit), each shrunk at
    once to the size the model's processor would resize it to (`target_size`); smaller ones are left as they are,
    for the processor."""

    def __init__(self, target_size: TargetSize | None = None):
        self.target_size = target_size
        self._one_at_a_time = threading.Lock()

    def decode(self, header: Image.Image, field: str) -> Image.Image:
        """The RGB image, at most the processor's size."""
        width, height = header.size
        target = self.target_size(width, height) if self.target_size else None
        shrink = target is not None and target[0] * target[1] < width * height
        with self._one_at_a_time:
            if shrink:
                header.draft("RGB", target)  # JPEG: decoded at a reduced scale no smaller than the target
            try:
                image = load_image(header, None, width * height)
            except DataError as e:
                raise e.within(field) from None
            return image.resize(target, Image.Resampling.BICUBIC) if shrink else image


def write_video(ref: str, limits: MediaLimits, folder: Path, index: int, field: str) -> str:
    """The video's bytes copied into the request's own folder (deleted when the request ends): the engine reads
    a file nobody else can swap, and nothing is left behind."""
    data = media_bytes(ref, limits, field)
    if len(data) > limits.max_bytes:
        raise DataError(f"the video is {len(data)} bytes, above the limit of {limits.max_bytes}", field=field)
    path = folder / f"video{index}.mp4"
    path.write_bytes(data)
    return str(path)


class RequestFiles:
    """A request's own temporary folder: made when its first video is written, removed with everything in it when
    the request ends (answered, refused or abandoned)."""

    def __init__(self, parent: Path | None = None):
        self.parent = parent
        self.path: Path | None = None

    def folder(self) -> Path:
        if self.path is None:
            self.path = Path(tempfile.mkdtemp(prefix="vlft-request-", dir=self.parent))
        return self.path

    def cleanup(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None
