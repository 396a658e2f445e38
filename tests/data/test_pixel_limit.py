"""--max_image_pixels: images and video frames over the limit are refused from their header, before any pixel
is decoded (a decompression bomb is a few bytes that declare a huge image); at the limit they load."""

from __future__ import annotations

import warnings

import pytest
from PIL import Image

from tests.data.fuzz_corpus import png_header
from vlft.arguments import DataCheckArguments, TemplateArguments
from vlft.cli.parsing import parse_args
from vlft.data.media import MAX_IMAGE_PIXELS, load_image
from vlft.data.video import VideoSampling, read_video
from vlft.errors import DataError, VlftError


def test_default_is_pils_own_hard_limit_and_the_arguments_agree():
    assert MAX_IMAGE_PIXELS == 2 * Image.MAX_IMAGE_PIXELS  # PIL raises DecompressionBombError above it
    assert TemplateArguments().max_image_pixels == MAX_IMAGE_PIXELS
    args = parse_args(DataCheckArguments, ["--model", "m", "--dataset", "d", "--max_image_pixels", "1000"], "t", {})
    assert args.max_image_pixels == 1000
    with pytest.raises(VlftError, match="--max_image_pixels must be positive"):
        parse_args(DataCheckArguments, ["--model", "m", "--dataset", "d", "--max_image_pixels", "0"], "t", {})


def test_over_the_limit_is_refused_from_the_header(tmp_path):
    # 100 megapixels declared, 64 bytes of pixels: decoding it would fail as corrupt, so the message below
    # shows the size was judged from the header alone. PIL's own warning (from 89 MP) is not raised either.
    (tmp_path / "big.png").write_bytes(png_header(10_000, 10_000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError) as info:
            load_image("big.png", tmp_path, max_pixels=50_000_000)
    assert str(info.value) == (f"image {tmp_path / 'big.png'} is 10000x10000 = 100,000,000 pixels, over the limit "
                               "of 50,000,000 (--max_image_pixels)")


def test_the_limit_is_inclusive(media_dir):
    assert load_image("a.png", media_dir, max_pixels=96 * 64).size == (96, 64)
    with pytest.raises(DataError, match="is 96x64 = 6,144 pixels, over the limit of 6,143"):
        load_image("a.png", media_dir, max_pixels=96 * 64 - 1)


def test_above_pils_own_limit_is_refused_too(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_header(30_000, 30_000))
    with pytest.raises(DataError, match="too large to open: .*900000000 pixels"):
        load_image(str(tmp_path / "bomb.png"), max_pixels=10**12)


def test_pil_images_and_bytes_are_held_to_it(media_dir):
    with pytest.raises(DataError, match=r"image is 40x30 = 1,200 pixels"):
        load_image(Image.new("RGB", (40, 30)), max_pixels=1000)
    with pytest.raises(DataError, match="is 96x64"):
        load_image({"bytes": (media_dir / "a.png").read_bytes(), "path": None}, max_pixels=1000)


def test_video_frames_over_the_limit_are_refused_before_decoding(media_dir):
    path = media_dir / "v.mp4"  # 64x48 frames
    assert read_video(path, VideoSampling(), image_factor=32, max_pixels=64 * 48).frames.shape[0] == 4
    with pytest.raises(DataError) as info:
        read_video(path, VideoSampling(), image_factor=32, max_pixels=64 * 48 - 1)
    assert str(info.value) == (f"video {path}: a frame is 64x48 = 3,072 pixels, over the limit of 3,071 "
                               "(--max_image_pixels)")
