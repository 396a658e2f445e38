"""Control tokens typed inside a dataset's or a request's text (`<|im_start|>system ...`, `<|im_end|>`,
`<|endoftext|>`, `<|image_pad|>`): tokenized as they are, they would forge a turn or a media slot. They are an
error by default; with `--split_special_tokens true` they are encoded as plain text instead, as a tokenizer
with `split_special_tokens` does, while the template's own control tokens stay control tokens.

Plain-text encoding works on the rendered text: each typed control token is first replaced by a sentinel
character (from Unicode's supplementary private use area), the template renders around it, and each stretch
between the template's own special tokens is then tokenized with the typed tokens put back and specials
disabled (the HF tokenizer splits on special tokens before BPE, so stretch by stretch equals whole-text).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from vlft.data.sample import Message
from vlft.errors import DataError

# Written in text by grounding data (`<|box_start|>(x1,y1),(x2,y2)<|box_end|>`), as Qwen2-VL's docs show: allowed.
GROUNDING_MARKUP = frozenset({"<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
                              "<|quad_start|>", "<|quad_end|>"})
SENTINEL_BASE = 0xF0000  # U+F0000...: one private-use character per control token


@dataclass(frozen=True)
class ControlTokens:
    """The tokenizer's special tokens a message may not contain, and how to encode them as text instead."""

    tokens: tuple[str, ...]  # refused in text (special added tokens, grounding markup aside)
    specials: tuple[str, ...]  # every special added token: what the tokenizer splits on before BPE

    @classmethod
    def of(cls, tokenizer, family_tokens: frozenset[str]) -> ControlTokens:
        """The tokenizer's special tokens that are the family's own (`family_tokens`) are refused; others (a run's
        --new_special_tokens, kept by its checkpoints and merged models) are data's to write, as grounding markup."""
        specials = sorted({t.content for t in tokenizer.added_tokens_decoder.values() if t.special}, key=len,
                          reverse=True)
        return cls(tuple(t for t in specials if t in family_tokens and t not in GROUNDING_MARKUP), tuple(specials))

    @cached_property
    def _pattern(self) -> re.Pattern:
        return _alternation(self.tokens)

    def refuse(self, messages: list[Message], tools: list | None) -> None:
        """DataError naming the field and the first control token typed in a message or a tool schema."""
        for i, message in enumerate(messages):
            for where, text in message.rendered_texts(i):
                self._refuse_in(text, where)
        if tools:
            self._refuse_in(json.dumps(tools, ensure_ascii=False), "tools")

    def _refuse_in(self, text: str, where: str) -> None:
        found = self._pattern.search(text) if self.tokens else None
        if found:
            raise DataError(f"contains the control token {found.group()} at character {found.start() + 1}: "
                            "it would act as one (a forged turn or media slot). Mark media with <image> / <video>; "
                            "--split_special_tokens true encodes such tokens as plain text", field=where)

    def hide(self, messages: list[Message], tools: list | None) -> tuple[list[Message], list | None]:
        """Messages and tools with each typed control token replaced by its sentinel (see the module doc)."""
        out = []
        for i, message in enumerate(messages):
            for where, text in message.rendered_texts(i):
                sentinel = _SENTINEL.search(text)
                if sentinel:
                    raise DataError(f"contains U+{ord(sentinel.group()):05X}, a private-use character vlft "
                                    "reserves under --split_special_tokens true", field=where)
            out.append(dataclasses.replace(
                message, content=self._hide(message.content),
                reasoning_content=None if message.reasoning_content is None else self._hide(message.reasoning_content),
                tool_calls=_map_strings(message.tool_calls, self._hide)))
        return out, _map_strings(tools, self._hide)

    def _hide(self, text: str) -> str:
        if not self.tokens:
            return text
        return self._pattern.sub(lambda m: chr(SENTINEL_BASE + self.tokens.index(m.group())), text)

    def encode_hidden(self, tokenizer, text: str) -> list[int]:
        """Ids of rendered text holding sentinels: the template's special tokens as tokens, each stretch between
        them (typed tokens put back) as plain text."""
        ids: list[int] = []
        at = 0
        for special in _alternation(self.specials).finditer(text):
            ids += self._plain(tokenizer, text[at:special.start()])
            ids.append(tokenizer.convert_tokens_to_ids(special.group()))
            at = special.end()
        return ids + self._plain(tokenizer, text[at:])

    def _plain(self, tokenizer, stretch: str) -> list[int]:
        if not stretch:
            return []
        shown = _SENTINEL.sub(lambda m: self.tokens[ord(m.group()) - SENTINEL_BASE], stretch)
        return tokenizer.encode(shown, add_special_tokens=False, split_special_tokens=True)


_SENTINEL = re.compile(f"[{chr(SENTINEL_BASE)}-{chr(SENTINEL_BASE + 0xFFFF)}]")


def _alternation(tokens: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join(re.escape(t) for t in tokens)) if tokens else re.compile("(?!)")


def _map_strings(value: Any, fn) -> Any:
    """`value` (JSON-like) with `fn` applied to every string in it, keys included."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    if isinstance(value, dict):
        return {_map_strings(k, fn): _map_strings(v, fn) for k, v in value.items()}
    return value
