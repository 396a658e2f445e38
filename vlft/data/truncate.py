"""Cutting an encoded sample to max_length without ever splitting an image's or a video's tokens."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Literal

import torch

from vlft.errors import DataError

if TYPE_CHECKING:
    from vlft.data.encode import EncodedSample, MediaSpan


def truncation_window(length: int, spans: list["MediaSpan"], max_length: int,
                      side: Literal["left", "right"]) -> tuple[int, int]:
    """Token range [start, end) to keep: at most max_length tokens, moved so no media span is cut."""
    if side == "right":
        end = max_length
        for span in spans:
            if span.start < end < span.end:
                end = span.start
        return 0, end
    start = length - max_length
    for span in spans:
        if span.start < start < span.end:
            start = span.end
    return start, length


def truncate(encoded: "EncodedSample", spans: list["MediaSpan"], max_length: int, side: Literal["left", "right"],
             merge_size: int) -> "EncodedSample":
    """The sample cut to at most max_length tokens on one side; media whose tokens fall out are dropped."""
    start, end = truncation_window(encoded.length, spans, max_length, side)
    labels = encoded.labels[start:end]
    if all(label == -100 for label in labels):
        raise DataError(f"sample is {encoded.length} tokens; cut to --max_length {max_length} "
                        f"({side}) it has no trained tokens left")
    kept = {kind: [s.index for s in spans if s.kind == kind and start <= s.start and s.end <= end]
            for kind in ("image", "video")}
    out = replace(encoded, input_ids=encoded.input_ids[start:end], labels=labels, truncated=True)
    if encoded.image_grid_thw is not None:
        out.pixel_values, out.image_grid_thw = _select(encoded.pixel_values, encoded.image_grid_thw, kept["image"])
    if encoded.video_grid_thw is not None:
        out.pixel_values_videos, out.video_grid_thw = _select(encoded.pixel_values_videos, encoded.video_grid_thw,
                                                              kept["video"])
        if encoded.second_per_grid_ts is not None:
            out.second_per_grid_ts = [encoded.second_per_grid_ts[i] for i in kept["video"]] or None
    return out


def _select(pixels: torch.Tensor, grid: torch.Tensor, keep: list[int]):
    """Rows of the concatenated patches and grid entries belonging to the kept media."""
    if not keep:
        return None, None
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), grid.prod(-1).cumsum(0)])
    rows = torch.cat([torch.arange(int(offsets[i]), int(offsets[i + 1])) for i in keep])
    return pixels[rows], grid[keep]
