"""PaddingFreeCollator's fixed-shape rows (for CUDA graphs): the padding segment, the boundaries handed to
attention, and the errors when a row does not fit. Expected values are worked out by hand."""

from __future__ import annotations

import pytest
import torch

from vlft.data.collator import FixedRowShape, PaddingFreeCollator, VisionTokens, fixed_row_boundaries
from vlft.data.encode import IGNORE_INDEX, EncodedSample
from vlft.errors import VlftError
from vlft.families import get_family

TOKENS = VisionTokens(image_pad_id=151655, video_pad_id=151656, pad_id=151643)


def text_sample(length: int, first_id: int = 100) -> EncodedSample:
    ids = list(range(first_id, first_id + length))
    return EncodedSample(input_ids=ids, labels=[IGNORE_INDEX] + ids[1:], source="t.jsonl", line=1)


def test_boundaries_end_with_the_padding_then_empty_segments():
    shape = FixedRowShape(length=16, boundaries=7)
    assert fixed_row_boundaries([3, 5], shape).tolist() == [0, 3, 8, 16, 16, 16, 16]
    assert fixed_row_boundaries([10, 6], shape).tolist() == [0, 10, 16, 16, 16, 16, 16]  # full row: no padding
    assert fixed_row_boundaries([3, 5], shape).dtype == torch.int32


def test_too_many_samples_for_the_boundary_slots_is_an_error():
    with pytest.raises(VlftError, match="more boundaries than the fixed 3"):
        fixed_row_boundaries([1, 1, 1], FixedRowShape(length=16, boundaries=3))


def test_shape_for_rows_holds_the_fullest_row_and_its_padding():
    rows = [[text_sample(2)] * 3, [text_sample(2)] * 5, [text_sample(9)]]
    # samples of at most 9 tokens: segments of at most 256 (the rounding), the whole row here
    assert FixedRowShape.for_rows(rows, max_length=64, rows_per_batch=1) == FixedRowShape(64, 7, 64)
    assert FixedRowShape.for_rows(rows, max_length=64, rows_per_batch=2) == FixedRowShape(128, 12, 128)
    # rows of 2048 whose longest sample is 300 tokens: segments of at most 512, the padding in up to 4 of them
    long_rows = [[text_sample(300)] + [text_sample(100)] * 5]
    assert FixedRowShape.for_rows(long_rows, max_length=2048, rows_per_batch=1) == FixedRowShape(2048, 6 + 1 + 4, 512)


def test_padding_is_cut_into_segments_no_longer_than_the_longest():
    shape = FixedRowShape(length=20, boundaries=8, longest=6)
    assert fixed_row_boundaries([5, 3], shape).tolist() == [0, 5, 8, 14, 20, 20, 20, 20]
    assert fixed_row_boundaries([6, 6, 6], shape).tolist() == [0, 6, 12, 18, 20, 20, 20, 20]
    with pytest.raises(VlftError, match="a sample of 7 tokens is longer than the fixed rows' longest segment 6"):
        fixed_row_boundaries([7], shape)
    collator = PaddingFreeCollator(get_family("qwen3_vl"), TOKENS, None, FixedRowShape(length=12, boundaries=6,
                                                                                       longest=4))
    batch = collator([text_sample(3)])
    assert batch["row_cu_seqlens"].tolist() == [0, 3, 7, 11, 12, 12]
    assert batch["position_ids"][0, 0].tolist() == [0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 0]  # each segment from 0
    assert batch["row_longest_segment"] == 4 and batch["row_padding"] == 9


def test_fixed_row_is_padded_with_a_segment_of_its_own():
    collator = PaddingFreeCollator(get_family("qwen3_vl"), TOKENS, None, FixedRowShape(length=12, boundaries=5))
    batch = collator([text_sample(3), text_sample(4, first_id=200)])
    assert batch["input_ids"].tolist() == [[100, 101, 102, 200, 201, 202, 203] + [151643] * 5]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 101, 102, IGNORE_INDEX, 201, 202, 203] + [IGNORE_INDEX] * 5]
    text_positions = batch["position_ids"][0, 0].tolist()
    assert text_positions == [0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4]  # the padding restarts at 0: its own segment
    assert batch["position_ids"].shape == (4, 1, 12)
    assert batch["mm_token_type_ids"].tolist() == [[0] * 12]
    assert batch["row_cu_seqlens"].tolist() == [0, 3, 7, 12, 12]
    assert batch["row_padding"] == 5


def test_unfixed_rows_carry_no_boundaries():
    batch = PaddingFreeCollator(get_family("qwen3_vl"), TOKENS)([text_sample(3)])
    assert "row_cu_seqlens" not in batch and "row_padding" not in batch
    assert batch["input_ids"].shape == (1, 3)


def test_row_longer_than_the_fixed_length_is_an_error():
    collator = PaddingFreeCollator(get_family("qwen3_vl"), TOKENS, None, FixedRowShape(length=6, boundaries=4))
    with pytest.raises(VlftError, match="row of 7 tokens is longer than the fixed row length 6"):
        collator([text_sample(3), text_sample(4)])
