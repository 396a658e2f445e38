"""Video sampling and decoding against qwen-vl-utils, the reference implementation of Qwen's video rules."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from qwen_vl_utils import fetch_video
from qwen_vl_utils.vision_process import smart_nframes

from tests.conftest import write_video
from vlft.data.video import VideoSampling, frame_pixel_bounds, read_video, sample_indices
from vlft.errors import DataError

TOTALS = [2, 3, 5, 7, 16, 30, 101, 1800]
VIDEO_FPS = [8, 24, 29.97, 30]
SAMPLING = [(0.5, 4, 768), (1.0, 1, 768), (2.0, 4, 768), (2.0, 4, 16), (4.0, 2, 6), (8.0, 3, 9), (30.0, 4, 768)]


def reference_indices(total, video_fps, ele):
    n = smart_nframes(dict(ele), total_frames=total, video_fps=video_fps)
    return torch.linspace(0, total - 1, n).round().long().tolist()


@pytest.mark.parametrize("fps, min_frames, max_frames", SAMPLING)
def test_sample_indices_match_qwen_vl_utils(fps, min_frames, max_frames):
    for total, video_fps in itertools.product(TOTALS, VIDEO_FPS):
        expected = reference_indices(total, video_fps, {"fps": fps, "min_frames": min_frames,
                                                         "max_frames": max_frames})
        got = sample_indices(total, video_fps, VideoSampling(fps=fps, min_frames=min_frames, max_frames=max_frames))
        assert got == expected, (total, video_fps)
        assert len(got) % 2 == 0 and len(set(got)) == len(got)


@pytest.mark.parametrize("total, video_fps", list(itertools.product(TOTALS, VIDEO_FPS)))
def test_default_sampling_matches_qwen_vl_utils_defaults(total, video_fps):
    # qwen-vl-utils' own defaults (no fps/min_frames/max_frames given) are vlft's defaults.
    assert sample_indices(total, video_fps, VideoSampling()) == reference_indices(total, video_fps, {})


def test_sample_indices_by_hand():
    # 16 frames at 8 fps is 2 s; 2 fps -> 4 frames, spread over 0..15: 0, 5, 10, 15.
    assert sample_indices(16, 8, VideoSampling()) == [0, 5, 10, 15]
    # 3 frames: at most 2 (an even count), the first and the last.
    assert sample_indices(3, 30, VideoSampling()) == [0, 2]


@pytest.mark.parametrize("total", [0, 1])
def test_sample_indices_too_few_frames(total):
    with pytest.raises(DataError, match=f"video has {total} frame"):
        sample_indices(total, 24, VideoSampling())


def test_frame_pixel_bounds_by_hand():
    # Defaults with 32 px tokens: min 128*32*32 = 131072, max 768*32*32 = 786432; the total budget
    # 128000*32*32*0.9 / 4 frames * 2 = 58982400 does not bind.
    assert frame_pixel_bounds(VideoSampling(), 4, 32) == (131072, 786432)
    # A total budget that binds: 1_000_000 / 8 frames * 2 = 250000.
    assert frame_pixel_bounds(VideoSampling(total_pixels=1_000_000), 8, 32) == (131072, 250000)
    # A budget below the minimum: the max becomes int(min * 1.05) = int(137625.6) = 137625.
    assert frame_pixel_bounds(VideoSampling(total_pixels=100_000), 8, 32) == (131072, 137625)
    # Explicit per-frame bounds in 28 px units: min 4*784 = 3136, max 10*784 = 7840.
    assert frame_pixel_bounds(VideoSampling(min_pixels=3136, max_pixels=7840), 6, 28) == (3136, 7840)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    return {"small": write_video(d / "small.mp4"),  # 16 frames, 8 fps, 64x48
            "long": write_video(d / "long.mp4", frames=45, fps=24, size=(200, 120)),
            "odd": write_video(d / "odd.mp4", frames=31, fps=10, size=(90, 66))}


CASES = [
    ("small", 16, {}, VideoSampling()),
    ("long", 16, {}, VideoSampling()),
    ("odd", 16, {}, VideoSampling()),
    ("odd", 14, {}, VideoSampling()),
    ("long", 16, {"fps": 8.0, "min_frames": 2, "max_frames": 6}, VideoSampling(fps=8.0, min_frames=2, max_frames=6)),
    ("odd", 14, {"fps": 4.0, "min_pixels": 4 * 784, "max_pixels": 8 * 784},
     VideoSampling(fps=4.0, min_pixels=4 * 784, max_pixels=8 * 784)),
    ("long", 16, {"total_pixels": 200_000}, VideoSampling(total_pixels=200_000)),
]


@pytest.mark.parametrize("name, patch, ele, sampling", CASES)
def test_read_video_matches_fetch_video(videos, name, patch, ele, sampling):
    path = videos[name]
    expected, meta = fetch_video({"video": str(path), **ele}, image_patch_size=patch, return_video_metadata=True)
    got = read_video(path, sampling, image_factor=patch * 2)
    assert got.frames.dtype == expected.dtype
    assert got.frames.shape == expected.shape
    assert torch.equal(got.frames, expected)
    assert got.frame_indices == list(meta["frames_indices"])
    assert got.total_frames == meta["total_num_frames"]
    assert got.video_fps == pytest.approx(meta["fps"])


@pytest.mark.parametrize("name", ["long", "odd"])
def test_pyav_fallback_matches_fetch_video(videos, monkeypatch, name):
    """Without decord, vlft decodes with PyAV; the frames are still qwen-vl-utils' (decord) frames."""
    import sys

    path = videos[name]
    expected, meta = fetch_video({"video": str(path)}, image_patch_size=16, return_video_metadata=True)
    monkeypatch.setitem(sys.modules, "decord", None)  # `import decord` now raises ImportError
    got = read_video(path, VideoSampling(), image_factor=32)
    assert got.frame_indices == list(meta["frames_indices"])
    assert got.total_frames == meta["total_num_frames"]
    assert got.video_fps == pytest.approx(meta["fps"])
    assert torch.equal(got.frames, expected)


def test_read_video_decodes_the_right_frames(videos):
    # The bar in write_video's frame i starts at x = 3*i: check it in the decoded, unresized frames.
    got = read_video(videos["small"], VideoSampling(min_pixels=64 * 48, max_pixels=64 * 64), image_factor=16)
    assert got.frame_indices == [0, 5, 10, 15]
    assert tuple(got.frames.shape[-2:]) == (48, 64)  # 64x48 already fits the 16 px grid and bounds
    for frame, i in zip(got.frames, got.frame_indices):
        blue = frame[2] - frame[0]  # the bar is (30, 30, 200) on a (240, 240, 240) background
        columns = np.nonzero(blue.mean(0).numpy() > 80)[0]
        assert columns.min() == pytest.approx(3 * i, abs=1)
        assert columns.max() == pytest.approx(3 * i + 7, abs=1)


def test_corrupt_video(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(DataError) as info:
        read_video(path, VideoSampling(), image_factor=32)
    assert str(path) in str(info.value)
    assert "corrupt" in str(info.value)


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_one_frame_video(tmp_path, monkeypatch, decoder):
    import sys

    path = write_video(tmp_path / "one.mp4", frames=1)
    if decoder == "pyav":
        monkeypatch.setitem(sys.modules, "decord", None)
    with pytest.raises(DataError, match="video has 1 frame"):
        read_video(path, VideoSampling(), image_factor=32)


def test_corrupt_video_with_pyav(tmp_path, monkeypatch):
    import sys

    path = tmp_path / "broken.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    monkeypatch.setitem(sys.modules, "decord", None)
    with pytest.raises(DataError) as info:
        read_video(path, VideoSampling(), image_factor=32)
    assert str(path) in str(info.value)
