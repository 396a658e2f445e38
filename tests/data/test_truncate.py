"""Cutting encoded samples to --max_length: the window arithmetic on hand-made spans, and cuts through the
Encoder with a real tiny model, checked against encoding the kept part on its own."""

from __future__ import annotations

import pytest
import torch

from tests.data.test_encode_parity import make_encoder
from vlft.data.encode import IGNORE_INDEX, MediaSpan, TooLongError
from vlft.data.formats import to_sample
from vlft.data.truncate import truncation_window
from vlft.errors import DataError

# ---------------------------------------------------------------------------------------------------
# truncation_window


def span(start, end, kind="image", index=0):
    return MediaSpan(kind, index, start, end)


@pytest.mark.parametrize("length, spans, max_length, side, expected", [
    # right: keep [0, max_length), moved back to a span's start when the cut falls inside it
    (30, [], 10, "right", (0, 10)),
    (30, [span(5, 15)], 10, "right", (0, 5)),
    (30, [span(5, 15)], 6, "right", (0, 5)),
    (30, [span(5, 15)], 15, "right", (0, 15)),  # cut right after the span: kept whole
    (30, [span(5, 15)], 5, "right", (0, 5)),  # cut right at its start: dropped whole
    (30, [span(2, 8), span(10, 20, index=1)], 12, "right", (0, 10)),
    (30, [span(2, 8), span(10, 20, index=1)], 5, "right", (0, 2)),
    (30, [span(0, 12)], 10, "right", (0, 0)),
    # left: keep [length - max_length, length), moved forward to a span's end when the cut falls inside it
    (30, [], 10, "left", (20, 30)),
    (30, [span(15, 25)], 10, "left", (25, 30)),
    (30, [span(15, 25)], 14, "left", (25, 30)),
    (30, [span(20, 25)], 10, "left", (20, 30)),  # cut right at its start: kept whole
    (30, [span(15, 20)], 10, "left", (20, 30)),  # cut right after its end: dropped whole
    (30, [span(2, 8), span(12, 22, index=1)], 14, "left", (22, 30)),
    (30, [span(2, 8), span(12, 22, index=1)], 25, "left", (8, 30)),
    (30, [span(10, 18), span(18, 26, index=1)], 16, "left", (18, 30)),  # adjacent spans
])
def test_truncation_window(length, spans, max_length, side, expected):
    start, end = truncation_window(length, spans, [], max_length, side)
    assert (start, end) == expected
    assert end - start <= max_length
    for s in spans:  # no span is cut
        assert s.end <= start or s.start >= end or (start <= s.start and s.end <= end)


# Prompt (user / tool) turns at [0, 10), [14, 22), [26, 30); assistant answers in between.
TURNS = [(0, 10), (14, 22), (26, 30)]


@pytest.mark.parametrize("length, spans, max_length, side, expected", [
    (34, [], 30, "right", (0, 26)),  # inside the last question: back to its start
    (34, [], 20, "right", (0, 14)),  # inside the second question
    (34, [], 26, "right", (0, 26)),  # right at a turn's start: kept as is
    (34, [], 18, "right", (0, 14)),
    (34, [span(16, 20)], 19, "right", (0, 14)),  # inside a span inside a question
    (34, [], 30, "left", (14, 34)),  # inside the first question: on to the next question's start
    (34, [], 20, "left", (14, 34)),  # at a turn's start
    (34, [], 18, "left", (26, 34)),  # inside the second question: on to the last
    (34, [], 8, "left", (26, 34)),  # the last question and its answer exactly
])
def test_truncation_window_never_cuts_a_question(length, spans, max_length, side, expected):
    start, end = truncation_window(length, spans, TURNS, max_length, side)
    assert (start, end) == expected
    for a, b in TURNS:
        assert b <= start or a >= end or (start <= a and b <= end)


def test_left_cut_into_the_last_question_is_an_error():
    with pytest.raises(DataError, match="last user turn and its answer alone are 8, over --max_length 7"):
        truncation_window(34, [], TURNS, 7, "left")


# ---------------------------------------------------------------------------------------------------
# through the encoder

FAMILY = "qwen3_vl"
IM_START = 151644  # <|im_start|> in the Qwen2/2.5/3-VL vocabulary


def two_image_row(media_dir, first="a.png", second="c.jpg"):
    """Two rounds, one image each: the first answer is trained and comes before the second image."""
    return {"messages": [{"role": "user", "content": "<image>What is this?"},
                         {"role": "assistant", "content": "Noise."},
                         {"role": "user", "content": "<image>And this one?"},
                         {"role": "assistant", "content": "Also noise."}],
            "images": [str(media_dir / first), str(media_dir / second)]}


def one_image_row(media_dir, name, question, answer):
    return {"messages": [{"role": "user", "content": f"<image>{question}"},
                         {"role": "assistant", "content": answer}],
            "images": [str(media_dir / name)]}


def positions(ids, token_id):
    return [i for i, t in enumerate(ids) if t == token_id]


def assert_whole_images(encoded, encoder, merge=4):
    """Every kept image has exactly grid.prod()/merge pad tokens, inside one vision_start/vision_end pair."""
    pads = positions(encoded.input_ids, encoder.image_pad_id)
    starts = positions(encoded.input_ids, encoder.vision_start_id)
    ends = positions(encoded.input_ids, encoder.vision_end_id)
    grid = encoded.image_grid_thw
    n = 0 if grid is None else len(grid)
    assert len(starts) == len(ends) == n
    for k in range(n):
        run = [p for p in pads if starts[k] < p < ends[k]]
        assert len(run) == ends[k] - starts[k] - 1 == int(grid[k].prod()) // merge
    assert len(pads) == (0 if grid is None else int(grid.prod(-1).sum()) // merge)
    if grid is not None:
        assert encoded.pixel_values.shape[0] == int(grid.prod(-1).sum())
    else:
        assert encoded.pixel_values is None


@pytest.fixture(scope="module")
def full_encoder(tiny_model_dir, processor_of):
    return make_encoder(FAMILY, tiny_model_dir, processor_of)[0]


def encoder_with(tiny_model_dir, processor_of, **settings):
    return make_encoder(FAMILY, tiny_model_dir, processor_of, **settings)[0]


def test_fits_is_not_truncated(tiny_model_dir, processor_of, full_encoder, media_dir):
    sample = to_sample(two_image_row(media_dir))
    full = full_encoder.encode(sample)
    same = encoder_with(tiny_model_dir, processor_of, max_length=full.length,
                        truncation_strategy="right").encode(sample)
    assert same.input_ids == full.input_ids and same.labels == full.labels and not same.truncated
    assert torch.equal(same.pixel_values, full.pixel_values)


def test_right_cut_inside_second_image_keeps_only_the_first(tiny_model_dir, processor_of, full_encoder, media_dir):
    sample = to_sample(two_image_row(media_dir))
    full = full_encoder.encode(sample)
    second_start = positions(full.input_ids, full_encoder.vision_start_id)[1]
    assert full.image_grid_thw.shape[0] == 2

    encoder = encoder_with(tiny_model_dir, processor_of, max_length=second_start + 5, truncation_strategy="right")
    cut = encoder.encode(sample)
    assert cut.truncated
    # The cut moved back past the second image to its question's start: the first round is left, whole.
    second_question = positions(full.input_ids, IM_START)[2]
    assert cut.input_ids == full.input_ids[:second_question]
    assert cut.labels == full.labels[:second_question]
    assert_whole_images(cut, encoder)
    assert cut.dropped == f"tokens {second_question}-{full.length - 1} of {full.length}: 1 image, 1 user turn"

    # Ground truth: the first round with the first image, encoded on its own.
    alone = full_encoder.encode(to_sample(one_image_row(media_dir, "a.png", "What is this?", "Noise.")))
    assert torch.equal(cut.image_grid_thw, alone.image_grid_thw)
    assert cut.pixel_values.shape == alone.pixel_values.shape
    assert torch.equal(cut.pixel_values, alone.pixel_values)
    assert cut.input_ids == alone.input_ids
    assert cut.labels == alone.labels


def test_right_cut_never_leaves_a_partial_image(tiny_model_dir, processor_of, full_encoder, media_dir):
    sample = to_sample(two_image_row(media_dir))
    full = full_encoder.encode(sample)
    first_answer_end = max(i for i, label in enumerate(full.labels[:positions(full.input_ids,
                                                                                full_encoder.vision_start_id)[1]])
                           if label != IGNORE_INDEX) + 1
    for max_length in range(first_answer_end, full.length, 7):
        cut = encoder_with(tiny_model_dir, processor_of, max_length=max_length,
                           truncation_strategy="right").encode(sample)
        assert cut.length <= max_length
        assert cut.input_ids == full.input_ids[:cut.length]
        assert_whole_images(cut, full_encoder)
        # It ends after an answer's tokens, never inside a question.
        assert cut.input_ids[-1] != IM_START and full.labels[cut.length - 1] != IGNORE_INDEX


def test_left_cut_inside_first_image_keeps_only_the_second(tiny_model_dir, processor_of, full_encoder, media_dir):
    sample = to_sample(two_image_row(media_dir))
    full = full_encoder.encode(sample)
    first_start = positions(full.input_ids, full_encoder.vision_start_id)[0]
    first_end = positions(full.input_ids, full_encoder.vision_end_id)[0] + 1
    encoder = encoder_with(tiny_model_dir, processor_of, max_length=full.length - (first_start + 3),
                           truncation_strategy="left")
    cut = encoder.encode(sample)
    # Moved forward past the first image and the rest of its round, to the second question's start.
    second_question = positions(full.input_ids, IM_START)[2]
    assert second_question > first_end
    assert cut.input_ids == full.input_ids[second_question:]
    assert cut.labels == full.labels[second_question:]
    assert_whole_images(cut, encoder)
    assert cut.dropped == f"tokens 0-{second_question - 1} of {full.length}: 1 image, 1 user turn"
    alone = full_encoder.encode(to_sample(one_image_row(media_dir, "c.jpg", "And this one?", "Also noise.")))
    assert cut.input_ids == alone.input_ids and cut.labels == alone.labels
    assert torch.equal(cut.image_grid_thw, alone.image_grid_thw)
    assert torch.equal(cut.pixel_values, alone.pixel_values)


def test_right_cut_inside_video_drops_it(tiny_model_dir, processor_of, media_dir):
    # Qwen2.5-VL: the video's second_per_grid_ts must go with it.
    row = {"messages": [{"role": "user", "content": "<image>What is this?"},
                        {"role": "assistant", "content": "Noise."},
                        {"role": "user", "content": "<video>And this?"},
                        {"role": "assistant", "content": "A bar."}],
           "images": [str(media_dir / "b.png")], "videos": [str(media_dir / "v.mp4")]}
    sample = to_sample(row)
    full_encoder, _, _ = make_encoder("qwen2_5_vl", tiny_model_dir, processor_of)
    full = full_encoder.encode(sample)
    assert full.second_per_grid_ts is not None
    video_start = positions(full.input_ids, full_encoder.vision_start_id)[1]
    encoder, _, _ = make_encoder("qwen2_5_vl", tiny_model_dir, processor_of, max_length=video_start + 10,
                                 truncation_strategy="right")
    cut = encoder.encode(sample)
    second_question = positions(full.input_ids, IM_START)[3]  # after the default system turn and round one
    assert second_question < video_start
    assert cut.input_ids == full.input_ids[:second_question]
    assert cut.pixel_values_videos is None and cut.video_grid_thw is None and cut.second_per_grid_ts is None
    assert video_start + 10 < full.length
    assert torch.equal(cut.pixel_values, full.pixel_values)
    assert encoder.video_pad_id not in cut.input_ids


def test_delete_raises_too_long(tiny_model_dir, processor_of, full_encoder, media_dir):
    sample = to_sample(two_image_row(media_dir))
    length = full_encoder.encode(sample).length
    with pytest.raises(TooLongError, match=f"sample is {length} tokens"):
        encoder_with(tiny_model_dir, processor_of, max_length=length - 1).encode(sample)  # delete is the default


def test_error_strategy_raises_data_error(tiny_model_dir, processor_of, full_encoder, media_dir):
    sample = to_sample(two_image_row(media_dir))
    sample.source, sample.line = "d.jsonl", 3
    length = full_encoder.encode(sample).length
    with pytest.raises(DataError) as info:
        encoder_with(tiny_model_dir, processor_of, max_length=length - 1, truncation_strategy="error").encode(sample)
    assert not isinstance(info.value, TooLongError)  # a failure, not a row quietly dropped
    assert str(info.value).startswith("d.jsonl:3: ")
    assert f"over --max_length {length - 1}" in str(info.value)


@pytest.mark.parametrize("side", ["right", "left"])
def test_cut_without_trained_tokens_raises(tiny_model_dir, processor_of, full_encoder, media_dir, side):
    row = one_image_row(media_dir, "a.png", "What is this?", "Noise.")
    sample = to_sample(row)
    full = full_encoder.encode(sample)
    first_trained = next(i for i, label in enumerate(full.labels) if label != IGNORE_INDEX)
    if side == "right":
        # Cut before the first trained token: only the prompt remains.
        max_length, problem = first_trained, "no trained tokens left"
    else:
        # Keep the answer only: the cut would fall inside the (last) question.
        max_length, problem = full.length - first_trained, "would cut into the question"
    with pytest.raises(DataError, match=problem):
        encoder_with(tiny_model_dir, processor_of, max_length=max_length, truncation_strategy=side).encode(sample)
