"""Reading a video file into sampled, resized frames, with qwen-vl-utils' sampling and sizing rules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from qwen_vl_utils.vision_process import smart_nframes, smart_resize
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as tvF

from vlft.data.media import MAX_IMAGE_PIXELS, check_pixels
from vlft.errors import DataError

FRAME_FACTOR = 2  # frames come in pairs: the temporal patch of every Qwen-VL ViT


@dataclass(frozen=True)
class VideoSampling:
    """How frames are sampled and sized (swift's FPS, FPS_MIN_FRAMES, FPS_MAX_FRAMES, VIDEO_*_PIXELS)."""

    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768
    min_pixels: int | None = None  # per frame; None: 128 tokens
    max_pixels: int | None = None  # per frame; None: 768 tokens
    total_pixels: int | None = None  # all frames together; None: 128000 tokens * 0.9


@dataclass(frozen=True)
class VideoFrames:
    """The sampled frames of one video as a (T, C, H, W) float tensor, and where they came from."""

    frames: torch.Tensor
    video_fps: float
    frame_indices: list[int]
    total_frames: int

    @property
    def sample_fps(self) -> float:
        """Sampled frames per second of video."""
        return len(self.frame_indices) / max(self.total_frames, 1e-6) * self.video_fps


def frame_pixel_bounds(sampling: VideoSampling, nframes: int, image_factor: int) -> tuple[int, int]:
    """Per-frame (min_pixels, max_pixels) as qwen-vl-utils' fetch_video computes them."""
    min_pixels = sampling.min_pixels if sampling.min_pixels is not None else 128 * image_factor**2
    max_frame = sampling.max_pixels if sampling.max_pixels is not None else 768 * image_factor**2
    total = sampling.total_pixels if sampling.total_pixels is not None else 128000 * image_factor**2 * 0.9
    max_pixels = max(min(max_frame, total / nframes * FRAME_FACTOR), int(min_pixels * 1.05))
    return min_pixels, int(max_pixels)


def read_video(path: Path, sampling: VideoSampling, image_factor: int,
               max_pixels: int = MAX_IMAGE_PIXELS) -> VideoFrames:
    """Decode the sampled frames of a video file and resize them for a ViT whose token covers `image_factor` px;
    frames over `max_pixels` are refused from the container header, before decoding."""
    try:
        width, height = frame_size(path)
    except Exception as e:  # PyAV's assorted error types on files that are not videos
        raise DataError(f"corrupt or unsupported video {path}: {type(e).__name__}: {e}") from None
    check_pixels(width, height, max_pixels, f"video {path}: a frame")
    try:
        raw, video_fps, indices, total = _decode(path, sampling)
    except DataError:
        raise
    except Exception as e:  # decoders raise their own assorted types on corrupt files
        raise DataError(f"corrupt or unsupported video {path}: {type(e).__name__}: {e}") from None
    nframes, _, height, width = raw.shape
    min_pixels, max_pixels = frame_pixel_bounds(sampling, nframes, image_factor)
    try:  # frames smaller than a patch are resized up to min_pixels, as qwen-vl-utils does
        resized_h, resized_w = smart_resize(height, width, factor=image_factor, min_pixels=min_pixels,
                                            max_pixels=max_pixels)
    except ValueError as e:  # as qwen-vl-utils raises it: an aspect ratio over 200
        raise DataError(f"cannot process video {path} ({width}x{height} frames): {e}") from None
    frames = tvF.resize(raw, [resized_h, resized_w], interpolation=InterpolationMode.BICUBIC, antialias=True).float()
    return VideoFrames(frames=frames, video_fps=float(video_fps), frame_indices=indices, total_frames=total)


def frame_size(path: Path) -> tuple[int, int]:
    """(width, height) of the first video stream, from the container header (nothing decoded)."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        context = container.streams.video[0].codec_context
        return context.width, context.height


def sample_indices(total_frames: int, video_fps: float, sampling: VideoSampling) -> list[int]:
    """Indices of the frames to keep: `fps` per second, clamped to [min_frames, max_frames], an even count."""
    if total_frames < FRAME_FACTOR:
        raise DataError(f"video has {total_frames} frame(s); at least {FRAME_FACTOR} are needed")
    ele = {"fps": sampling.fps, "min_frames": sampling.min_frames, "max_frames": min(sampling.max_frames, total_frames)}
    nframes = smart_nframes(ele, total_frames=total_frames, video_fps=video_fps)
    return torch.linspace(0, total_frames - 1, nframes).round().long().tolist()


def _decode(path: Path, sampling: VideoSampling) -> tuple[torch.Tensor, float, list[int], int]:
    try:
        import decord
    except ImportError:
        return _decode_pyav(path, sampling)
    try:
        return _decode_decord(decord, path, sampling)
    except DataError:
        raise
    except Exception:  # qwen-vl-utils, too, reads with another backend (torchvision's, i.e. PyAV) when decord fails
        return _decode_pyav(path, sampling)


def _decode_decord(decord, path: Path, sampling: VideoSampling) -> tuple[torch.Tensor, float, list[int], int]:
    reader = decord.VideoReader(str(path))
    total, video_fps = len(reader), reader.get_avg_fps()
    indices = sample_indices(total, video_fps, sampling)
    batch = reader.get_batch(indices).asnumpy()
    # decord 0.6 mis-sizes frames whose rows ffmpeg pads (8x8, 16x16, 48x48 px, ...): get_batch raises, and a
    # single frame comes back (h, w, 12) rather than (h, w, 3); anything but RGB frames is not trusted.
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"decord gave frames of shape {batch.shape}")
    frames = torch.from_numpy(batch).permute(0, 3, 1, 2)
    return frames, video_fps, indices, total


def _decode_pyav(path: Path, sampling: VideoSampling) -> tuple[torch.Tensor, float, list[int], int]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        video_fps = float(stream.average_rate or 24)
    indices = sample_indices(len(decoded), video_fps, sampling)
    frames = torch.from_numpy(np.stack([decoded[i] for i in indices])).permute(0, 3, 1, 2)
    return frames, video_fps, indices, len(decoded)
