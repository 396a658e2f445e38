"""Helpers shared by the `vlft deploy` tests: request bodies, hand-made images, raw HTTP, random LoRA adapters."""

from __future__ import annotations

import base64
import json
import struct
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from tests.conftest import REPO

RED = REPO / "examples" / "data" / "images" / "red.png"
BLUE = REPO / "examples" / "data" / "images" / "blue.png"
KEY = "test-key-7f3a"
QUESTION = "What colour is this image?"


def data_uri(path: Path, kind: str = "image/png") -> str:
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode()


def bytes_uri(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64," + base64.b64encode(data).decode()


def image_message(url: str, text: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def video_message(url: str, text: str = "What moves?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A ~70-byte PNG whose header declares width x height (its pixel data is a few bytes): the shape of
    a decompression bomb, written by hand from the PNG spec rather than by PIL."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + _png_chunk(b"IEND", b""))


def png_of(width: int, height: int, colour=(0, 0, 0)) -> bytes:
    """A real PNG of one colour, small on disk and width x height once decoded, written row by row from the PNG
    spec (no width x height buffer is ever made here)."""
    row = b"\0" + bytes(colour) * width  # filter type 0, then the row's RGB pixels
    packer = zlib.compressobj(9)
    data = b"".join([packer.compress(row) for _ in range(height)] + [packer.flush()])
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data)
            + _png_chunk(b"IEND", b""))


def post(url: str, body: bytes, key: str | None = KEY, path: str = "/chat/completions") -> tuple[int, dict]:
    """(status, JSON body) of a raw POST."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(f"{url}{path}", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def random_loras(base_dir: Path, out: Path, seeds: dict[str, int]) -> dict[str, Path]:
    """LoRA checkpoints (name -> dir) of the model in `base_dir`, each with random A and B (so it changes the
    answers), saved by PEFT."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    from vlft.model.loading import load_pretrained

    base = load_pretrained(base_dir, torch.float32)
    saved = {}
    for name, seed in seeds.items():
        torch.manual_seed(seed)
        model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                               target_modules=["q_proj", "v_proj", "down_proj"]))
        model.save_pretrained(out / name)
        saved[name] = out / name
    return saved
