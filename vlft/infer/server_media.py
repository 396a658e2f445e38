"""The media a chat request names, fetched and checked by the server before the engine sees it: local
files only inside one folder, downloads and files no bigger than a byte limit, images only in common
formats and with their size read from the header, so a decompression bomb is refused undecoded."""

from __future__ import annotations

import base64
import binascii
import http.client
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from vlft.data.media import check_pixels, open_image_header
from vlft.errors import DataError, VlftError

# The formats a client may send (MPO: phone photos). Others that PIL opens are refused: EPS, for one,
# runs Ghostscript when decoded.
IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF")


@dataclass(frozen=True)
class MediaLimits:
    """What a request's media may be; `root` is the only folder local paths may point into (None: none)."""

    root: Path | None = None
    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 50_000_000
    download_timeout_s: float = 60.0


def check_media_root(root: Path | None) -> None:
    """Refuse an --allow_local_media that is not an existing folder (before the model loads)."""
    if root is not None and not root.is_dir():
        raise VlftError(f"--allow_local_media {root}: not a folder")


def confined_path(ref: str, root: Path | None, field: str) -> Path:
    """The file a local path or file:// URL names, which must lie inside `root` once symlinks and `..`
    are resolved; relative paths are taken from `root`."""
    if root is None:
        raise DataError(f"local media paths are refused ({ref[:200]}); start vlft deploy with "
                        "--allow_local_media FOLDER, or send a data: or http(s) URL", field=field)
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
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise DataError(f"{ref[:200]} is {size} bytes, above the limit of {limits.max_bytes}", field=field)
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {ref[:200]}: {e.strerror}", field=field) from None


def _decode_data_uri(ref: str, limits: MediaLimits, field: str) -> bytes:
    header, _, payload = ref.partition(",")
    if ";base64" not in header:
        raise DataError("data URI is not base64-encoded", field=field)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise DataError(f"bad base64 in data URI: {e}", field=field) from None


def _download(url: str, limits: MediaLimits, field: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=limits.download_timeout_s) as response:
            data = response.read(limits.max_bytes + 1)  # never more than the limit (plus one to notice it)
    except (OSError, http.client.HTTPException, ValueError) as e:  # network, protocol, malformed URL
        raise DataError(f"cannot download {url[:200]}: {type(e).__name__}: {e}", field=field) from None
    if len(data) > limits.max_bytes:
        raise DataError(f"{url[:200]} is larger than the limit of {limits.max_bytes} bytes", field=field)
    return data


def media_bytes(ref: str, limits: MediaLimits, field: str) -> bytes:
    """The bytes behind a data: URI, an http(s) URL, or a local path inside the media folder."""
    if ref.startswith("data:"):
        return _decode_data_uri(ref, limits, field)
    if ref.startswith(("http://", "https://")):
        return _download(ref, limits, field)
    return _read_file(confined_path(ref, limits.root, field), ref, limits, field)


def check_image(data: bytes, max_pixels: int, field: str) -> None:
    """Refuses, from the header alone (no pixel is decoded), formats clients may not send and images
    over `max_pixels`."""
    try:
        image = open_image_header(data, "image")
        if image.format not in IMAGE_FORMATS:
            raise DataError(f"{image.format} is not an accepted image format ({', '.join(IMAGE_FORMATS)})")
        check_pixels(image.width, image.height, max_pixels, "image")
    except DataError as e:
        raise e.within(field) from None


def checked_image(ref: str, limits: MediaLimits, field: str) -> dict:
    """An image content-part value the engine reads without touching the disk or network again."""
    data = media_bytes(ref, limits, field)
    check_image(data, limits.max_pixels, field)
    return {"bytes": data}


def checked_video(ref: str, limits: MediaLimits, field: str) -> str:
    """A video reference the engine can read without the network: the resolved local path, the data: URI,
    or a data: URI of the downloaded bytes. The engine checks the frame size from the header (read_video)."""
    if ref.startswith("data:"):
        return ref
    if ref.startswith(("http://", "https://")):
        return "data:video/mp4;base64," + base64.b64encode(media_bytes(ref, limits, field)).decode()
    path = confined_path(ref, limits.root, field)
    if path.stat().st_size > limits.max_bytes:
        raise DataError(f"{ref[:200]} is above the limit of {limits.max_bytes} bytes", field=field)
    return str(path)
