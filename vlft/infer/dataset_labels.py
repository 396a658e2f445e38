"""The [LABELS] of a dataset line in `vlft infer`: its last answer as `vlft sft` trains the model to write it, so
grounding placeholders show the refs and the boxes in the family's convention (the text the answer is compared
with), not `<ref-object>` / `<bbox>`."""

from __future__ import annotations

from vlft.data.encode import IGNORE_INDEX
from vlft.data.sample import Sample


def last_trained_span(labels: list[int]) -> list[int]:
    """The last run of trained tokens (the last answer, its end-of-turn token included)."""
    end = len(labels)
    while end > 0 and labels[end - 1] == IGNORE_INDEX:
        end -= 1
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return labels[start:end]


def trained_answer(encoder, sample: Sample) -> str:
    """The sample's last assistant turn as the encoder writes it for training (its placeholders filled). Special
    tokens a family writes boxes with (Qwen2-VL's <|box_start|>) are kept; the end of the turn is not."""
    tokens = last_trained_span(encoder.encode(sample, pixels=False).labels)
    text = encoder.tokenizer.decode(tokens, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    text = text.removesuffix(encoder.template.turn_separator)
    for word in (encoder.template.turn_end, *encoder.template.stop_words):
        text = text.removesuffix(word)
    return text
