"""Log probabilities of the generated tokens (`vlft infer --logprobs true`, the chat-completions `logprobs` and
`top_logprobs` fields): each step's next-token distribution recorded while generate runs, reduced to the chosen
token's log probability and the likeliest tokens, and written in OpenAI's shape (ms-swift's `_get_logprobs`)."""

from __future__ import annotations

import functools
import math
from collections import deque
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.generation.streamers import BaseStreamer


@dataclass(frozen=True)
class StepLogprob:
    """One generated token: its id, its log probability, and the likeliest tokens as (id, log probability), most
    likely first (empty unless top_logprobs was asked for)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


class LogprobRecorder(LogitsProcessor, BaseStreamer):
    """Given to generate as a logits processor and as its streamer (or to the text streamer that passes tokens on):
    each step's log-softmax is kept until that step's chosen tokens come, then only the chosen tokens' log
    probabilities and the `top` likeliest are kept, per row (memory stays small on long answers). The scores are
    the model's logits after --repetition_penalty and before temperature / top_p / top_k: transformers runs a
    caller's processor between the two, so greedy answers get the model's own distribution."""

    def __init__(self, rows: int, top: int | None):
        self.top = top or 0
        self.rows: list[list[StepLogprob]] = [[] for _ in range(rows)]
        # steps whose tokens are not chosen yet: one, or two where transformers streams a step late (mps)
        self._pending: deque[torch.Tensor] = deque()
        self._prompt_seen = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._pending.append(torch.log_softmax(scores.float(), dim=-1))
        return scores

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate hands its streamer the prompt first
            self._prompt_seen = True
            return
        logprobs = self._pending.popleft()
        tokens = value.reshape(-1).to(logprobs.device)
        chosen = logprobs.gather(1, tokens[:, None])[:, 0].tolist()
        values, ids = logprobs.topk(self.top, dim=-1)
        for row, token, logprob, top_ids, top_values in zip(self.rows, tokens.tolist(), chosen, ids.tolist(),
                                                            values.tolist()):
            row.append(StepLogprob(token, logprob, list(zip(top_ids, top_values))))

    def end(self) -> None:
        pass


@functools.lru_cache(maxsize=1)
def _byte_of_char() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2's table, Qwen's too), inverted."""
    return {char: byte for byte, char in bytes_to_unicode().items()}


def token_bytes(tokenizer, ids: list[int]) -> dict[int, bytes]:
    """Each token's own bytes: a byte-level piece may hold part of a UTF-8 character (its decoded text shows
    U+FFFD, its bytes do not); an added token such as <|im_end|> is its text."""
    added = {token_id: token.content for token_id, token in tokenizer.added_tokens_decoder.items()}
    table = _byte_of_char()
    spelled = {}
    for token_id, piece in zip(ids, tokenizer.convert_ids_to_tokens(ids)):
        if token_id in added:
            spelled[token_id] = added[token_id].encode()
        elif all(char in table for char in piece):
            spelled[token_id] = bytes(table[char] for char in piece)
        else:  # not a byte-level piece: its decoded text
            spelled[token_id] = tokenizer.decode([token_id]).encode()
    return spelled


def openai_logprobs(tokenizer, steps: list[StepLogprob]) -> dict:
    """A choice's `logprobs` as OpenAI gives it: {"content": [{"token", "logprob", "bytes", "top_logprobs":
    [{"token", "logprob", "bytes"}, ...]}, ...]}, one entry per generated token, the stop token included (as
    ms-swift's); `token` is the token decoded alone (as tokenizer.decode([id]) gives it)."""
    ids = list(dict.fromkeys([s.token_id for s in steps] + [i for s in steps for i, _ in s.top]))
    spelled = token_bytes(tokenizer, ids)

    def entry(token_id: int, logprob: float) -> dict:
        raw = spelled[token_id]
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    return {"content": [{**entry(s.token_id, s.logprob),
                         "top_logprobs": [entry(i, logprob) for i, logprob in s.top if logprob != -math.inf]}
                        for s in steps]}
