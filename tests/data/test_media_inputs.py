"""Media that ms-swift accepts and vlft once refused (issue 20): bare base64 images (a JPEG's base64 starts
with "/", like an absolute path) and tiny frames (an 8x8 mp4, which decord 0.6 mis-decodes). Expected values
come from PIL, the HF image processor and qwen-vl-utils' fetch_video, never from vlft itself."""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from qwen_vl_utils import fetch_video

from tests.conftest import write_video
from tests.data.fuzz_corpus import png_header
from vlft.arguments import DataCheckArguments
from vlft.cli.main import main
from vlft.cli.parsing import parse_args
from vlft.data.media import image_size, load_image, local_video_path, with_absolute_media
from vlft.data.pipeline import build_encoder
from vlft.data.sample import Message, Sample
from vlft.data.video import VideoSampling, read_video
from vlft.errors import DataError

# (family, tiny model); 28 px tokens (14 px patches) and 32 px tokens (16 px patches).
FAMILIES = [("qwen2_5_vl", "vlft/tiny-qwen2.5-vl"), ("qwen3_vl", "vlft/tiny-qwen3-vl")]


def image_file_bytes(size: tuple[int, int], fmt: str, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pil_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return image_file_bytes((64, 48), "JPEG")


# ---------------------------------------------------------------------------------------------------
# bare base64 images, as ms-swift's load_file reads a string that names no file


def test_bare_base64_jpeg_starting_with_a_slash(jpeg, tmp_path):
    text = b64(jpeg)
    assert text.startswith("/9j/")  # every JPEG's base64 does: it once read as an absolute path
    assert np.array_equal(np.asarray(load_image(text, tmp_path)), pil_rgb(jpeg))
    assert image_size(text, tmp_path) == (64, 48)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF", "BMP"])
def test_bare_base64_other_formats(fmt):
    data = image_file_bytes((30, 20), fmt)
    assert np.array_equal(np.asarray(load_image(b64(data))), pil_rgb(data))
    assert image_size(b64(data)) == (30, 20)


def test_short_and_line_wrapped_base64():
    tiny = image_file_bytes((1, 1), "PNG")
    assert len(b64(tiny)) < 200  # shorter than ms-swift's length test, still an image
    assert np.array_equal(np.asarray(load_image(b64(tiny))), pil_rgb(tiny))
    data = image_file_bytes((40, 30), "PNG")
    wrapped = base64.encodebytes(data).decode()  # newlines every 76 characters
    assert "\n" in wrapped and image_size(wrapped) == (40, 30)
    assert np.array_equal(np.asarray(load_image(wrapped)), pil_rgb(data))


def test_an_existing_file_stays_a_path(tmp_path):
    # A file whose (relative) name is itself the base64 of another image: the file wins, as in ms-swift.
    name = b64(image_file_bytes((1, 1), "PNG", seed=1))
    inside = image_file_bytes((5, 7), "PNG", seed=2)
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)  # base64 may hold "/"
    (tmp_path / name).write_bytes(inside)
    assert image_size(name, tmp_path) == (5, 7)
    assert np.array_equal(np.asarray(load_image(name, tmp_path)), pil_rgb(inside))


CUT_JPEG = b64(image_file_bytes((64, 48), "JPEG"))[:-9]  # cut short: no longer base64


@pytest.mark.parametrize("ref, path_problem", [
    ("nope/missing.png", "file not found: {base}/nope/missing.png"),
    (b64(b"hello, not an image at all"), "file not found: {base}/aGVsbG8"),  # valid base64, not an image
    ("not base64 and not a file", "file not found: {base}/not base64"),
    (CUT_JPEG, "file not found: /9j/4AAQ"),  # an absolute path, for all it says
    ("A" * 300 + "!", "cannot read {base}/AAAA"),  # a name too long for the file system
])
def test_neither_a_file_nor_base64_image_says_both(tmp_path, ref, path_problem):
    with pytest.raises(DataError) as info:
        load_image(ref, tmp_path)
    message = str(info.value)
    assert path_problem.format(base=tmp_path) in message
    assert "not base64 image data" in message
    with pytest.raises(DataError, match="not base64 image data"):
        image_size(ref, tmp_path)


def test_base64_corrupt_image_and_bomb(jpeg):
    with pytest.raises(DataError, match=r"corrupt or unsupported base64 image \("):
        load_image(b64(jpeg[: len(jpeg) // 2]))
    with pytest.raises(DataError, match="too large to open"):  # refused from its header, not "not base64"
        image_size(b64(png_header(30_000, 30_000)))


def test_with_absolute_media_keeps_base64(jpeg, tmp_path):
    (tmp_path / "a.png").write_bytes(image_file_bytes((4, 4), "PNG"))
    png = b64(image_file_bytes((4, 4), "PNG"))  # relative-looking: no leading "/"
    row = with_absolute_media({"images": ["a.png", png, b64(jpeg)]}, tmp_path)
    assert row["images"] == [str(tmp_path / "a.png"), png, b64(jpeg)]


def test_base64_video_is_refused_with_the_reason(tmp_path):
    # ms-swift hands video strings to qwen-vl-utils' fetch_video, whose readers open paths and URLs only.
    data = write_video(tmp_path / "v.mp4").read_bytes()
    with pytest.raises(DataError, match=r"bare base64 string is not read as a video.*data:video/mp4;base64"):
        local_video_path(b64(data), tmp_path)
    path = local_video_path("data:video/mp4;base64," + b64(data), tmp_path, cache_dir=tmp_path / "cache")
    assert path.read_bytes() == data


# ---------------------------------------------------------------------------------------------------
# tiny frames


def torchvision_read_video(filename, start_pts=0, end_pts=None, pts_unit="pts", output_format="THWC"):
    """torchvision.io.read_video as torchvision had it until it was removed (its PyAV backend, whole video):
    qwen-vl-utils falls back to it when decord fails, and this torchvision has none."""
    import av

    with av.open(str(filename)) as container:
        stream = container.streams.video[0]
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
        fps = float(stream.average_rate)
    video = torch.from_numpy(frames)
    return (video.permute(0, 3, 1, 2) if output_format == "TCHW" else video), torch.empty(1, 0), {"video_fps": fps}


@pytest.fixture
def qwen_vl_utils_fallback(monkeypatch):
    import torchvision.io

    monkeypatch.setattr(torchvision.io, "read_video", torchvision_read_video, raising=False)


def reference_video(path: Path, image_factor: int):
    """qwen-vl-utils' frames and metadata for a video (decord first, then the torchvision fallback)."""
    return fetch_video({"video": str(path)}, image_patch_size=image_factor // 2, return_video_metadata=True)


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
@pytest.mark.parametrize("size", [(8, 8), (16, 16), (48, 48), (8, 64)])
def test_tiny_video_frames_match_qwen_vl_utils(tmp_path, monkeypatch, qwen_vl_utils_fallback, size, decoder):
    path = write_video(tmp_path / "tiny.mp4", frames=8, fps=8, size=size)
    expected, meta = reference_video(path, 32)
    if decoder == "pyav":
        monkeypatch.setitem(sys.modules, "decord", None)
    got = read_video(path, VideoSampling(), image_factor=32)
    assert tuple(expected.shape[-2:]) != (size[1], size[0])  # resized up, to at least 128 tokens a frame
    assert torch.equal(got.frames, expected)
    assert got.frame_indices == [int(i) for i in meta["frames_indices"]]
    assert got.video_fps == pytest.approx(meta["fps"])


def test_video_too_thin_says_why(tmp_path):
    path = write_video(tmp_path / "thin.mp4", frames=4, size=(2, 402))
    with pytest.raises(DataError, match=r"2x402 frames\): absolute aspect ratio must be smaller than 200"):
        read_video(path, VideoSampling(), image_factor=32)


@pytest.fixture(scope="module")
def tiny_media(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny-media")
    write_video(d / "tiny.mp4", frames=8, fps=8, size=(8, 8))
    (d / "tiny.png").write_bytes(image_file_bytes((8, 8), "PNG"))
    return d


def encoder_for(model: str, tmp_path: Path):
    args = parse_args(DataCheckArguments, ["--model", model, "--dataset", str(tmp_path / "unused.jsonl")], "t")
    return build_encoder(args)[0]


def sample(content: str, base_dir: Path, images=(), videos=()) -> Sample:
    return Sample(messages=[Message("user", content), Message("assistant", "ok")], images=list(images),
                  videos=list(videos), base_dir=base_dir)


def expected_image(processor, data: bytes) -> dict:
    return processor.image_processor(images=[Image.open(io.BytesIO(data)).convert("RGB")], return_tensors="pt")


def expected_video_grid(processor, path: Path, image_factor: int) -> list[int]:
    frames, _ = reference_video(path, image_factor)
    patch = processor.video_processor.patch_size
    temporal = processor.video_processor.temporal_patch_size
    return [frames.shape[0] // temporal, frames.shape[2] // patch, frames.shape[3] // patch]


@pytest.mark.parametrize("family, model", FAMILIES)
def test_encoder_takes_tiny_media_and_base64(family, model, tiny_media, jpeg, tmp_path, processor_of,
                                             qwen_vl_utils_fallback, vlft_cache):
    encoder = encoder_for(model, tmp_path)
    processor = processor_of(family)
    factor = encoder.family.image_factor
    for data, ref in [((tiny_media / "tiny.png").read_bytes(), "tiny.png"), (jpeg, b64(jpeg))]:
        want = expected_image(processor, data)
        got = encoder.encode(sample("<image>Hi", tiny_media, images=[ref]))
        assert torch.equal(got.image_grid_thw, want["image_grid_thw"])
        assert torch.equal(got.pixel_values, want["pixel_values"])
        lean = encoder.encode(sample("<image>Hi", tiny_media, images=[ref]), pixels=False)  # size from the header
        assert torch.equal(lean.image_grid_thw, want["image_grid_thw"]) and lean.input_ids == got.input_ids
    got = encoder.encode(sample("<video>Hi", tiny_media, videos=["tiny.mp4"]))
    assert got.video_grid_thw.tolist() == [expected_video_grid(processor, tiny_media / "tiny.mp4", factor)]


def test_data_check_and_encode_cli(tiny_media, jpeg, tmp_path, capsys, processor_of, qwen_vl_utils_fallback,
                                   vlft_cache):
    png = image_file_bytes((40, 30), "PNG")
    rows = [
        {"messages": [{"role": "user", "content": "<video>What?"}, {"role": "assistant", "content": "a bar"}],
         "videos": [str(tiny_media / "tiny.mp4")]},
        {"messages": [{"role": "user", "content": "<image>What?"}, {"role": "assistant", "content": "noise"}],
         "images": [str(tiny_media / "tiny.png")]},
        {"messages": [{"role": "user", "content": "<image><image>What?"}, {"role": "assistant", "content": "two"}],
         "images": [b64(jpeg), b64(png)]},
    ]
    dataset = tmp_path / "train.jsonl"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = ["--model", "vlft/tiny-qwen3-vl", "--dataset", str(dataset), "--load_from_cache_file", "false"]
    assert main(["data", "check", *common]) == 0
    assert "lines: 3 (3 ok, 0 bad" in capsys.readouterr().out
    out = tmp_path / "encoded.jsonl"
    assert main(["data", "encode", *common, "--output", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    processor = processor_of("qwen3_vl")
    assert lines[0]["video_grid_thw"] == [expected_video_grid(processor, tiny_media / "tiny.mp4", 32)]
    assert lines[1]["image_grid_thw"] == expected_image(processor, (tiny_media / "tiny.png").read_bytes())[
        "image_grid_thw"].tolist()
    assert lines[2]["image_grid_thw"] == [expected_image(processor, data)["image_grid_thw"][0].tolist()
                                          for data in (jpeg, png)]
