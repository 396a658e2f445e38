"""Batches for the model: padding-free rows of concatenated samples, or padded batches.

A padding-free row carries position ids of shape (4, 1, L): row 0 the text positions restarting at 0
for every sample (transformers finds the sample boundaries from them and builds a block-diagonal
mask, or varlen attention uses them), rows 1-3 each sample's own mRoPE ids. No attention mask.

Rows of one fixed shape (FixedRowShape, for CUDA graphs: `--torch_compile_mode reduce-overhead`) end in
padding, in segments of their own no longer than the run's longest sample (positions restarting at 0, no
targets), and carry their boundaries as `row_cu_seqlens`, padded with empty segments to one length for the
whole run, the padding's length as `row_padding` and the longest segment as `row_longest_segment`;
attention.py takes them out of the model's inputs before the model sees them. One shape: a new row length or
boundary count would compile the layers again and record new graphs mid-run.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

import torch

from vlft.data.encode import IGNORE_INDEX, EncodedSample
from vlft.data.mrope import mm_token_types, mrope_position_ids, token_types
from vlft.errors import VlftError
from vlft.families.base import Family


@dataclass(frozen=True)
class VisionTokens:
    """Token ids the collator needs to know."""

    image_pad_id: int
    video_pad_id: int
    pad_id: int


def media_inputs(samples: list[EncodedSample]) -> dict:
    """Pixel values, grids (and Qwen2.5-VL's seconds per grid) of the samples, concatenated in order."""
    batch: dict = {}
    images = [s for s in samples if s.image_grid_thw is not None]
    if images:
        batch["pixel_values"] = torch.cat([s.pixel_values for s in images])
        batch["image_grid_thw"] = torch.cat([s.image_grid_thw for s in images])
    videos = [s for s in samples if s.video_grid_thw is not None]
    if videos:
        batch["pixel_values_videos"] = torch.cat([s.pixel_values_videos for s in videos])
        batch["video_grid_thw"] = torch.cat([s.video_grid_thw for s in videos])
        seconds = [t for s in videos for t in (s.second_per_grid_ts or [])]
        if seconds:
            batch["second_per_grid_ts"] = torch.tensor(seconds, dtype=torch.float32)
    return batch


def token_weights(sample: EncodedSample) -> list[float]:
    """--loss_scale's weight of each of the sample's tokens (encode.EncodedSample.loss_scale): 1 where trained
    when it has none."""
    if sample.loss_scale is not None:
        return sample.loss_scale
    return [0.0 if label == IGNORE_INDEX else 1.0 for label in sample.labels]


def sample_position_ids(sample: EncodedSample, family: Family, tokens: VisionTokens,
                        tokens_per_second: float | None) -> torch.Tensor:
    """(3, L) mRoPE ids of one sample."""
    types = token_types(sample.input_ids, tokens.image_pad_id, tokens.video_pad_id)
    intervals = None
    if sample.second_per_grid_ts is not None and tokens_per_second is not None:
        intervals = [tokens_per_second * s for s in sample.second_per_grid_ts]
    return mrope_position_ids(
        types,
        sample.image_grid_thw.tolist() if sample.image_grid_thw is not None else [],
        sample.video_grid_thw.tolist() if sample.video_grid_thw is not None else [],
        family.merge_size, intervals, split_video_frames=family.video_timestamps)


# The longest segment of a fixed row is rounded up to this many tokens (FlashAttention's tile sizes divide it).
SEGMENT_ROUNDING = 256


@dataclass(frozen=True)
class FixedRowShape:
    """Every row `length` tokens long, with `boundaries` cu_seqlens entries, no segment longer than `longest`
    (default: `length`), which is the longest sequence the varlen attention kernel is launched for: its grid is
    segments x longest / tile x heads, so a whole row's length there launches mostly empty tiles."""

    length: int
    boundaries: int
    longest: int | None = None

    @property
    def segment_limit(self) -> int:
        return self.longest or self.length

    @classmethod
    def for_rows(cls, rows: list[list[EncodedSample]], max_length: int, rows_per_batch: int) -> FixedRowShape:
        """The shape that holds `rows_per_batch` of these packed rows, each of at most `max_length` tokens:
        room for the most samples any row has, per row, plus the padding in segments no longer than the longest
        sample (rounded up to SEGMENT_ROUNDING)."""
        most = max(len(row) for row in rows)
        length = max_length * rows_per_batch
        longest_sample = max(sample.length for row in rows for sample in row)
        longest = min(length, -(-longest_sample // SEGMENT_ROUNDING) * SEGMENT_ROUNDING)
        return cls(length=length, boundaries=most * rows_per_batch + 1 + -(-length // longest), longest=longest)


def fixed_row_boundaries(lengths: list[int], shape: FixedRowShape) -> torch.Tensor:
    """cu_seqlens (int32) of samples of `lengths` in a row of shape.length tokens: the samples, then the
    padding as segments of at most shape.segment_limit tokens, then empty segments up to shape.boundaries
    entries."""
    limit = shape.segment_limit
    if any(length > limit for length in lengths):
        raise VlftError(f"a sample of {max(lengths)} tokens is longer than the fixed rows' longest segment {limit}")
    bounds = [0, *accumulate(lengths)]
    while bounds[-1] < shape.length:
        bounds.append(min(bounds[-1] + limit, shape.length))
    if len(bounds) > shape.boundaries:
        raise VlftError(f"a row of {len(lengths)} samples has more boundaries than the fixed {shape.boundaries}")
    return torch.tensor(bounds + [shape.length] * (shape.boundaries - len(bounds)), dtype=torch.int32)


class PaddingFreeCollator:
    """All samples of a batch concatenated into one row, each keeping its own positions; with `fixed_shape`,
    padded to it (see the module docstring)."""

    def __init__(self, family: Family, tokens: VisionTokens, tokens_per_second: float | None = None,
                 fixed_shape: FixedRowShape | None = None):
        self.family = family
        self.tokens = tokens
        self.tokens_per_second = tokens_per_second
        self.fixed_shape = fixed_shape

    def __call__(self, batch: list[EncodedSample | list[EncodedSample]]) -> dict:
        samples = [s for item in batch for s in (item if isinstance(item, list) else [item])]
        input_ids, labels, text_positions, rope = [], [], [], []
        for sample in samples:
            input_ids += sample.input_ids
            # The first token of a sample is never a target: the previous sample's last logit predicts it.
            labels += [IGNORE_INDEX] + sample.labels[1:]
            text_positions.append(torch.arange(sample.length))
            rope.append(sample_position_ids(sample, self.family, self.tokens, self.tokens_per_second))
        weighted = any(s.loss_scale is not None for s in samples)
        weights = [w for s in samples for w in [0.0, *token_weights(s)[1:]]] if weighted else []
        fixed = {}
        if self.fixed_shape is not None:
            padding = self.fixed_shape.length - len(input_ids)
            if padding < 0:
                raise VlftError(f"a padding-free row of {len(input_ids)} tokens is longer than the fixed row length "
                                f"{self.fixed_shape.length}; pack rows with --packing true and --max_length")
            limit = self.fixed_shape.segment_limit
            fixed = {"row_cu_seqlens": fixed_row_boundaries([s.length for s in samples], self.fixed_shape),
                     "row_padding": padding, "row_longest_segment": limit}
            input_ids += [self.tokens.pad_id] * padding
            labels += [IGNORE_INDEX] * padding
            weights += [0.0] * padding if weighted else []
            text_positions.append(torch.arange(padding) % limit)  # each padding segment (limit long) from 0
            rope.append(torch.arange(padding).expand(3, -1))
        ids = torch.tensor([input_ids])
        position_ids = torch.cat([torch.cat(text_positions)[None], torch.cat(rope, dim=1)])[:, None, :]
        types = torch.tensor([token_types(input_ids, self.tokens.image_pad_id, self.tokens.video_pad_id)])
        # No attention mask and no cu_seqlens kwargs (they would reach the vision tower too): attention
        # finds the sample boundaries from the text positions (row 0), which restart at 0 per sample; a
        # fixed-shape row's `row_cu_seqlens` is taken out of the inputs first (attention.RowBoundaries).
        # --loss_scale's token weights, aligned with the labels, only where a sample has weights (the loss: trainer.py)
        scale = {"loss_scale": torch.tensor([weights], dtype=torch.float32)} if weighted else {}
        return {"input_ids": ids, "labels": torch.tensor([labels]), "position_ids": position_ids,
                "mm_token_type_ids": types, "use_cache": False, **fixed, **scale, **media_inputs(samples)}


class PaddedCollator:
    """A classic right-padded batch with an attention mask; the model computes mRoPE itself."""

    def __init__(self, tokens: VisionTokens):
        self.tokens = tokens

    def __call__(self, batch: list[EncodedSample]) -> dict:
        longest = max(s.length for s in batch)
        ids = torch.full((len(batch), longest), self.tokens.pad_id)
        labels = torch.full((len(batch), longest), IGNORE_INDEX)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for i, s in enumerate(batch):
            ids[i, :s.length] = torch.tensor(s.input_ids)
            labels[i, :s.length] = torch.tensor(s.labels)
            mask[i, :s.length] = 1
        types = mm_token_types(ids, self.tokens.image_pad_id, self.tokens.video_pad_id)
        scale = {}
        if any(s.loss_scale is not None for s in batch):
            scale["loss_scale"] = torch.zeros((len(batch), longest))
            for i, s in enumerate(batch):
                scale["loss_scale"][i, :s.length] = torch.tensor(token_weights(s))
        return {"input_ids": ids, "labels": labels, "attention_mask": mask, "mm_token_type_ids": types, **scale,
                **media_inputs(batch)}
