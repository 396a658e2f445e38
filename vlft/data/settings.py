"""From typed template arguments to the encoder's settings, in the family's pixel units."""

from __future__ import annotations

from vlft.arguments import TemplateArguments
from vlft.data.encode import EncodeSettings
from vlft.data.video import VideoSampling
from vlft.errors import VlftError
from vlft.families.base import Family


def _pixels(pixels: int | None, tokens: int | None, factor: int) -> int | None:
    """Explicit pixels win; else tokens * factor^2 (one vision token covers factor x factor pixels)."""
    if pixels is not None:
        return pixels
    return tokens * factor * factor if tokens is not None else None


def encode_settings(args: TemplateArguments, family: Family) -> EncodeSettings:
    """EncodeSettings for one family; None pixel bounds leave the processor's own defaults."""
    factor = family.image_factor
    image_min = _pixels(args.min_pixels, args.image_min_token_num, factor)
    image_max = _pixels(args.max_pixels, args.image_max_token_num, factor)
    if image_min is not None and image_max is not None and image_min > image_max:
        raise VlftError(f"image min pixels {image_min} exceed max pixels {image_max}")
    video = VideoSampling(
        fps=args.fps, min_frames=args.fps_min_frames, max_frames=args.fps_max_frames,
        min_pixels=_pixels(args.video_min_pixels, args.video_min_token_num, factor),
        max_pixels=_pixels(args.video_max_pixels, args.video_max_token_num, factor),
        total_pixels=args.video_total_pixels,
    )
    return EncodeSettings(max_length=args.max_length, truncation_strategy=args.truncation_strategy,
                          loss_scale=args.loss_scale, enable_thinking=args.enable_thinking,
                          preserve_thinking=args.preserve_thinking,
                          disable_ignore_empty_think=args.disable_ignore_empty_think, system=args.system,
                          train_turn_separator=args.train_turn_separator,
                          split_special_tokens=args.split_special_tokens,
                          new_special_tokens=tuple(args.new_special_tokens),  # resolved by the arguments
                          image_min_pixels=image_min,
                          image_max_pixels=image_max, video=video, max_image_pixels=args.max_image_pixels)
