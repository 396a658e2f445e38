"""The ground truth of an answer's text from generated ids, as ms-swift decodes them (its Template
.decode_generate_ids): the stop tokens left out, the tokenizer's decode with every other special token kept."""

from __future__ import annotations


def reference_answer(tokenizer, ids, stop_ids: list[int]) -> str:
    ids = [int(t) for t in ids]
    while ids and ids[-1] in stop_ids:  # ms-swift's skip_stop_tokens: the trailing stop token(s)
        ids.pop()
    return tokenizer.decode(ids, skip_special_tokens=False, spaces_between_special_tokens=False)
