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
    assert FixedRowShape.for_rows(rows, max_length=64, rows_per_batch=1) == FixedRowShape(64, 7)
    assert FixedRowShape.for_rows(rows, max_length=64, rows_per_batch=2) == FixedRowShape(128, 12)


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
