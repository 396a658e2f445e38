"""Cutting an encoded sample to max_length without ever splitting an image's or a video's tokens."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Literal

import torch

from vlft.errors import DataError

if TYPE_CHECKING:
    from vlft.data.encode import EncodedSample, MediaSpan


def truncation_window(length: int, spans: list["MediaSpan"], prompt_turns: list[tuple[int, int]], max_length: int,
                      side: Literal["left", "right"]) -> tuple[int, int]:
    """Token range [start, end) to keep: at most max_length tokens, moved so that no media span and no user or
    tool turn (`prompt_turns`, token ranges) is cut. Left: the cut moves forward to the next turn's start, and
    the last prompt turn is always kept (DataError when it and its answer alone are over max_length). Right:
    the cut moves back to the start of the prompt turn it falls in or ends."""
    if side == "right":
        end = max_length
        for span in spans:
            if span.start < end < span.end:
                end = span.start
        for turn_start, turn_end in prompt_turns:
            if turn_start < end <= turn_end:  # a question cut, or left without its answer
                end = turn_start
        return 0, end
    start = length - max_length
    for span in spans:
        if span.start < start < span.end:
            start = span.end
    if prompt_turns and start > prompt_turns[-1][0]:
        raise DataError(f"sample is {length} tokens; its last user turn and its answer alone are "
                        f"{length - prompt_turns[-1][0]}, over --max_length {max_length}: --truncation_strategy left "
                        "would cut into the question (raise --max_length or shorten the line)")
    for turn_start, turn_end in prompt_turns:
        if turn_start < start < turn_end:  # a partial question: drop the rest of its round
            start = next(s for s, _ in prompt_turns if s >= turn_end)
    return start, length


def truncate(encoded: "EncodedSample", spans: list["MediaSpan"], prompt_turns: list[tuple[int, int]],
             max_length: int, side: Literal["left", "right"]) -> "EncodedSample":
    """The sample cut to at most max_length tokens on one side (truncation_window); media whose tokens fall out
    are dropped, and `dropped` says what went."""
    start, end = truncation_window(encoded.length, spans, prompt_turns, max_length, side)
    last_question = max((a for a, _ in prompt_turns if a < end), default=None)
    if side == "right" and last_question is not None and all(t == -100 for t in encoded.labels[last_question:end]):
        end = last_question  # a question kept without any of its answer: dropped with it
    labels = encoded.labels[start:end]
    if all(label == -100 for label in labels):
        raise DataError(f"sample is {encoded.length} tokens; cut to --max_length {max_length} "
                        f"({side}) it has no trained tokens left")
    kept = {kind: [s.index for s in spans if s.kind == kind and start <= s.start and s.end <= end]
            for kind in ("image", "video")}
    weights = None if encoded.loss_scale is None else encoded.loss_scale[start:end]
    out = replace(encoded, input_ids=encoded.input_ids[start:end], labels=labels, loss_scale=weights, truncated=True,
                  dropped=_dropped(encoded.length, start, end, spans, kept, prompt_turns))
    if encoded.image_grid_thw is not None:
        out.pixel_values, out.image_grid_thw = _select(encoded.pixel_values, encoded.image_grid_thw, kept["image"])
    if encoded.video_grid_thw is not None:
        out.pixel_values_videos, out.video_grid_thw = _select(encoded.pixel_values_videos, encoded.video_grid_thw,
                                                              kept["video"])
        if encoded.second_per_grid_ts is not None:
            out.second_per_grid_ts = [encoded.second_per_grid_ts[i] for i in kept["video"]] or None
    return out


def _dropped(length: int, start: int, end: int, spans: list["MediaSpan"], kept: dict[str, list[int]],
             prompt_turns: list[tuple[int, int]]) -> str:
    """`tokens 0-811 of 2100: 1 image, 2 user turns` for what a cut removed."""
    ranges = [f"{a}-{b - 1}" for a, b in ((0, start), (end, length)) if b > a]
    what = []
    for kind in ("image", "video"):
        gone = sum(1 for s in spans if s.kind == kind) - len(kept[kind])
        if gone:
            what.append(f"{gone} {kind}{'s' if gone > 1 else ''}")
    turns = sum(1 for a, b in prompt_turns if b <= start or a >= end)
    if turns:
        what.append(f"{turns} user turn{'s' if turns > 1 else ''}")
    return f"tokens {', '.join(ranges)} of {length}" + (f": {', '.join(what)}" if what else "")


def _select(pixels: torch.Tensor, grid: torch.Tensor, keep: list[int]):
    """Rows of the concatenated patches and grid entries belonging to the kept media."""
    if not keep:
        return None, None
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), grid.prod(-1).cumsum(0)])
    rows = torch.cat([torch.arange(int(offsets[i]), int(offsets[i + 1])) for i in keep])
    return pixels[rows], grid[keep]
