"""Loading the images and videos a dataset line points at: paths, file:// URLs, http(s), data URIs, bare base64
images, PIL objects."""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.client
import io
import os
import tempfile
import urllib.request
import warnings
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from vlft.errors import DataError

URL_TIMEOUT_S = 30
# Images (and video frames) over this many pixels are refused from their header, before decoding.
# PIL's own hard limit (2 x Image.MAX_IMAGE_PIXELS): every image PIL (and so ms-swift or the HF
# processor) opens is accepted; a decompression bomb (a few KB declaring 30000x30000) is not.
MAX_IMAGE_PIXELS = 178_956_970


def resolve_media_path(ref: str, base_dir: Path | None) -> Path:
    """A local path for a media reference: relative paths are taken from the dataset file's folder."""
    if ref.startswith("file://"):
        ref = ref[len("file://"):]
    path = Path(ref)
    try:
        path = path.expanduser()
    except RuntimeError:  # `~user/...` for a user that does not exist: left as written (and not found)
        pass
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def local_file(ref: str, base_dir: Path | None) -> Path:
    """The existing local file a path or file:// URL names; DataError if there is none."""
    path = resolve_media_path(ref, base_dir)
    try:
        is_file = path.is_file()
    except OSError as e:  # a name too long, a permission denied on a folder on the way
        raise DataError(f"cannot read {_shorten(str(path))}: {e.strerror}") from None
    if not is_file:
        what = "not a file" if path.is_dir() else "file not found"
        raise DataError(f"{what}: {_shorten(str(path))}")
    return path


def _is_url(ref: str) -> bool:
    return ref.startswith(("http://", "https://"))


def _decode_data_uri(ref: str) -> bytes:
    header, _, payload = ref.partition(",")
    if ";base64" not in header:
        raise DataError("data URI is not base64-encoded")
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as e:
        raise DataError(f"bad base64 in data URI: {e}") from None


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as response:
            return response.read()
    except (OSError, http.client.HTTPException, ValueError) as e:  # network, protocol, malformed URL
        raise DataError(f"cannot download {url}: {type(e).__name__}: {e}") from None


def read_media_bytes(ref: str, base_dir: Path | None) -> bytes:
    """The raw bytes behind a media reference (file, URL or data URI)."""
    if ref.startswith("data:"):
        return _decode_data_uri(ref)
    if _is_url(ref):
        return _download(ref)
    path = local_file(ref, base_dir)
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None


def load_image(ref: Any, base_dir: Path | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """An RGB PIL image from a path, URL, data URI, raw base64 string, `{"path"|"bytes"}` dict or PIL object;
    one over `max_pixels` is refused from its header, before any pixel is decoded."""
    if isinstance(ref, Image.Image):
        image, what = ref, "image"
    else:
        data, what = _image_bytes(ref, base_dir)
        image = open_image_header(data, what)
    check_pixels(image.width, image.height, max_pixels, what)
    try:
        image.load()
        return to_rgb(image)
    except Exception as e:  # PIL's decoders raise assorted types on corrupt data (OSError, SyntaxError,
        # ValueError, struct.error, zlib.error, EOFError, ...): all of them mean the same to the user
        raise DataError(f"corrupt or unsupported {what}: {type(e).__name__}: {e}") from None


def image_size(ref: Any, base_dir: Path | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) of the image `ref` names, checked as load_image checks it (header, pixel limit, the
    whole file decoded) but without keeping pixels: a JPEG decodes at 1/8 scale (PIL's draft mode), which
    still reads every byte of it."""
    if isinstance(ref, Image.Image):
        check_pixels(ref.width, ref.height, max_pixels, "image")
        return ref.width, ref.height
    data, what = _image_bytes(ref, base_dir)
    image = open_image_header(data, what)
    width, height = image.size
    check_pixels(width, height, max_pixels, what)
    try:
        image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
        image.load()
        to_rgb(image)
    except Exception as e:  # as in load_image
        raise DataError(f"corrupt or unsupported {what}: {type(e).__name__}: {e}") from None
    return width, height


def open_image_header(data: bytes, what: str) -> Image.Image:
    """The image behind `data`, opened lazily: PIL reads the header (format and size), no pixels.
    `what` names the image in errors."""
    try:
        with warnings.catch_warnings():
            # PIL warns from half its hard limit; vlft's own limit (check_pixels) decides instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # only above PIL's hard limit, which --max_image_pixels cannot lift
        raise DataError(f"{what} is too large to open: {e}") from None
    except UnidentifiedImageError:
        raise DataError(f"corrupt or unsupported {what}: not a known image format") from None
    except Exception as e:  # assorted types from PIL's header parsers, as in load_image
        raise DataError(f"corrupt or unsupported {what}: {type(e).__name__}: {e}") from None


def check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    """DataError if a `width` x `height` image (or video frame) is over `max_pixels`."""
    if width * height > max_pixels:
        raise DataError(f"{what} is {width}x{height} = {width * height:,} pixels, over the limit of "
                        f"{max_pixels:,} (--max_image_pixels)")


def to_rgb(image: Image.Image) -> Image.Image:
    """The image in mode RGB; transparent pixels become white."""
    if image.mode != "RGB":
        # Transparent pixels become white rather than the black a bare convert() gives.
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, rgba)
        image = image.convert("RGB")
    return image


def _image_bytes(ref: Any, base_dir: Path | None) -> tuple[bytes, str]:
    """The bytes of an image reference, and the words naming it in errors."""
    if isinstance(ref, dict):  # the HF datasets Image feature: {"bytes": ..., "path": ...}
        if ref.get("bytes"):
            if not isinstance(ref["bytes"], (bytes, bytearray)):
                raise DataError(f"expected bytes under 'bytes', got {type(ref['bytes']).__name__}")
            return bytes(ref["bytes"]), "image bytes"
        ref = ref.get("path")
    if isinstance(ref, (bytes, bytearray)):
        return bytes(ref), "image bytes"
    if not isinstance(ref, str):
        raise DataError(f"expected an image path, URL or data URI, got {type(ref).__name__}")
    if not ref:
        raise DataError("expected an image path, URL or data URI, got an empty string")
    if ref.startswith(("data:", "file://")) or _is_url(ref) or _names_existing_path(ref, base_dir):
        return read_media_bytes(ref, base_dir), f"image {_describe(ref, base_dir)}"
    # As ms-swift's load_file: a string that names no file is read as base64 (ms-swift decides by length,
    # over 200 characters; vlft by whether the decoded bytes are an image, so a short one works too).
    data = _base64_image(ref)
    if data is not None:
        return data, f"base64 image ({len(ref):,} characters)"
    try:
        return read_media_bytes(ref, base_dir), f"image {_describe(ref, base_dir)}"
    except DataError as e:  # the path's own problem (not found, name too long, ...) and the base64 one
        raise DataError(f"{e.problem}, and not base64 image data either") from None


def _names_existing_path(ref: str, base_dir: Path | None) -> bool:
    try:
        return resolve_media_path(ref, base_dir).exists()
    except (OSError, ValueError):  # a name too long for a path (a base64 string often is), a NUL byte
        return False


def _base64_image(ref: str) -> bytes | None:
    """The bytes a bare base64 string holds if PIL knows them as an image (from the header); None otherwise."""
    data = _base64_bytes(ref)
    if data is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        return data  # an image: refused with its size by the caller's own header check
    except Exception:  # PIL's assorted header errors: not an image
        return None
    return data


def _base64_bytes(text: str) -> bytes | None:
    """The bytes `text` holds as strict base64; None if it is not base64."""
    try:  # whitespace is allowed: base64.encodebytes and many tools wrap lines at 76 characters
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def _describe(ref: str, base_dir: Path | None) -> str:
    if ref.startswith("data:") or _is_url(ref):
        return ref if len(ref) < 120 else ref[:60] + "..."
    return _shorten(str(resolve_media_path(ref, base_dir)))


def _shorten(text: str) -> str:
    return text if len(text) <= 300 else text[:150] + "..." + text[-100:]


def local_video_path(ref: str, base_dir: Path | None, cache_dir: Path | None = None) -> Path:
    """A local file for a video reference; URLs and data URIs are written to a content-addressed cache."""
    if not isinstance(ref, str):
        raise DataError(f"expected a video path, URL or data URI, got {type(ref).__name__}")
    if not ref:
        raise DataError("expected a video path, URL or data URI, got an empty string")
    if not (ref.startswith("data:") or _is_url(ref)):
        try:
            return local_file(ref, base_dir)
        except DataError as e:
            if len(ref) > 200 and _base64_bytes(ref) is not None:  # ms-swift's length test for base64
                # ms-swift hands a video string to qwen-vl-utils' fetch_video, whose readers take paths and
                # URLs only; vlft takes base64 in a data URI, where the type is said.
                raise DataError(f"{e.problem} (a bare base64 string is not read as a video, as in ms-swift; "
                                "write it as a data:video/mp4;base64,... URI)") from None
            raise
    data = read_media_bytes(ref, base_dir)
    cache_dir = cache_dir or Path(tempfile.gettempdir()) / "vlft-media"
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / (hashlib.sha256(data).hexdigest()[:32] + ".mp4")
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.part")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path


def with_absolute_media(row: dict, base_dir: Path | None) -> dict:
    """A row whose relative image/video paths are made absolute (so it can be written elsewhere); strings that
    name no file (base64 images) are kept as written."""
    out = dict(row)
    for key in ("images", "image", "videos", "video"):
        value = out.get(key)
        refs = [value] if isinstance(value, str) else value
        if not isinstance(refs, list):
            continue
        fixed = [str(resolve_media_path(r, base_dir)) if isinstance(r, str) and not (
            r.startswith("data:") or _is_url(r)) and _names_existing_path(r, base_dir) else r for r in refs]
        out[key] = fixed[0] if isinstance(value, str) else fixed
    return out
