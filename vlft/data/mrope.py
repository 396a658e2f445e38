"""Qwen-VL multimodal rotary position ids (mRoPE), as a pure function of one sample's tokens and grids.

Mirrors `get_rope_index` of transformers 5.23's Qwen2-VL / Qwen2.5-VL / Qwen3-VL models (tested
against them): text runs count up on all three axes; a vision run gets (t, h, w) grid positions offset
by the current position, after which the position advances by max(h, w) merged patches.
"""

from __future__ import annotations

import itertools

import torch

TEXT, IMAGE, VIDEO = 0, 1, 2


def token_types(input_ids: list[int], image_pad_id: int, video_pad_id: int) -> list[int]:
    """0 for text, 1 for image tokens, 2 for video tokens (the models' `mm_token_type_ids`)."""
    return [IMAGE if t == image_pad_id else VIDEO if t == video_pad_id else TEXT for t in input_ids]


def mm_token_types(input_ids: torch.Tensor, image_pad_id: int, video_pad_id: int) -> torch.Tensor:
    """`token_types` for a tensor of ids (any shape)."""
    return (input_ids == image_pad_id).long() + VIDEO * (input_ids == video_pad_id).long()


def vision_positions(start: int, grid_thw: tuple[int, int, int], merge: int, time_interval: float) -> torch.Tensor:
    """(3, t*h*w/merge^2) positions of one image or video block starting at `start`."""
    t, h, w = grid_thw[0], grid_thw[1] // merge, grid_thw[2] // merge
    temporal = (torch.arange(t) * time_interval).long() + start
    height = torch.arange(h) + start
    width = torch.arange(w) + start
    grid = torch.meshgrid(temporal, height, width, indexing="ij")
    return torch.stack(grid).reshape(3, -1)


def mrope_position_ids(types: list[int], image_grid_thw: list[list[int]], video_grid_thw: list[list[int]],
                       merge_size: int, video_time_intervals: list[float] | None = None,
                       split_video_frames: bool = False) -> torch.Tensor:
    """(3, L) mRoPE ids of one sample.

    `video_time_intervals`: temporal step per video (Qwen2.5-VL: tokens_per_second * second_per_grid_ts);
    `split_video_frames`: Qwen3-VL places each frame pair as its own t=1 block (timestamps sit between).
    """
    grids = {IMAGE: iter([tuple(g) for g in image_grid_thw]), VIDEO: iter(_video_blocks(video_grid_thw,
                                                                                         split_video_frames))}
    intervals = iter(video_time_intervals or [])
    pieces, position = [], 0
    for kind, run in itertools.groupby(types):
        length = len(list(run))
        if kind == TEXT:
            pieces.append(torch.arange(position, position + length).expand(3, -1))
            position += length
            continue
        grid = next(grids[kind])
        interval = next(intervals, 1.0) if kind == VIDEO and video_time_intervals is not None else 1.0
        block = vision_positions(position, grid, merge_size, interval)
        if block.shape[1] != length:
            raise ValueError(f"{length} vision tokens but grid {grid} gives {block.shape[1]}")
        pieces.append(block)
        position += max(grid[1], grid[2]) // merge_size
    if not pieces:
        return torch.zeros(3, 0, dtype=torch.long)
    return torch.cat(pieces, dim=1)


def _video_blocks(video_grid_thw: list[list[int]], split_frames: bool) -> list[tuple[int, int, int]]:
    if not split_frames:
        return [tuple(g) for g in video_grid_thw]
    return [(1, g[1], g[2]) for g in video_grid_thw for _ in range(g[0])]
