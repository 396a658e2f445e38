"""ms-swift's `--loss_scale`: which tokens train, and with what weight.

The value is a base strategy (`default`: every assistant turn, `last_round`: the last, `all`: every token),
optionally followed by `+`-joined names: `ignore_empty_think` (an empty `<think>` block is not trained; the
renderers apply it) and the weightings of ms-swift's agent training (`hermes`, `react`, `qwen`, `alpha_umi`,
`ignore_think_prefix`), whose tables are data under templates/loss_scale/ (SOURCES.md says where from and how to
read them). A weighting alone means `default+` it, as in ms-swift; several multiply.

A weighting splits each trained run of text (an assistant's answer with its turn end, or under `all` any text)
into pieces with weights: a piece of weight 0 is not trained, and the loss of a token of weight w counts w times
(ms-swift's `loss_scale`; the loss is still divided by the number of trained tokens). `hermes` weighs every
`<tool_call>...</tool_call>` block 2: the model learns the calls harder than the prose around them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal, get_args

from vlft.errors import VlftError

BaseStrategy = Literal["default", "last_round", "all"]
BASE_STRATEGIES = get_args(BaseStrategy)
WEIGHTINGS = ("hermes", "react", "qwen", "alpha_umi", "ignore_think_prefix")
# ms-swift's that vlft does not weigh: agentflan's weights depend on the user's question too.
NOT_SUPPORTED = {"agentflan": "its weights also depend on the user's question, which vlft does not read"}


@dataclass(frozen=True)
class LossScale:
    """A parsed --loss_scale."""

    base: BaseStrategy = "default"
    ignore_empty_think: bool = False
    weightings: tuple[str, ...] = ()

    def weigh(self, text: str) -> list[tuple[str, float]]:
        """`text` (a trained run) as pieces with their weights, in order; one piece of weight 1 without
        weightings. The pieces join to `text`."""
        pieces = [(text, 1.0)]
        for name in self.weightings:
            pieces = [(part, weight * scale) for piece, weight in pieces for part, scale in _split(piece, name)]
        return [(piece, weight) for piece, weight in pieces if piece]


def parse_loss_scale(value: str) -> LossScale:
    """ms-swift's forms: `default`, `last_round+ignore_empty_think`, `hermes`, `last_round+hermes`,
    `hermes+ignore_empty_think`, ...; VlftError naming the known ones for anything else."""
    names = value.split("+")
    base = names.pop(0) if names[0] in BASE_STRATEGIES else "default"
    for name in names:
        if name in NOT_SUPPORTED:
            raise VlftError(f"--loss_scale {value}: {name} is not supported ({NOT_SUPPORTED[name]})")
        if name not in ("ignore_empty_think", *WEIGHTINGS):
            raise VlftError(f"unknown --loss_scale {value!r}: expected {', '.join(BASE_STRATEGIES)}, optionally "
                            f"followed by +-joined names of {', '.join(('ignore_empty_think', *WEIGHTINGS))}")
    return LossScale(base, "ignore_empty_think" in names, tuple(n for n in names if n != "ignore_empty_think"))


def weighted_loss_scale(value: str) -> bool:
    """Whether --loss_scale `value` weighs tokens other than 0 or 1 (False for values parse_loss_scale refuses:
    the arguments' check reports those)."""
    try:
        names = parse_loss_scale(value).weightings
    except VlftError:
        return False
    return any(w not in (0.0, 1.0) for name in names for weights in table(name).values() for w in weights)


@cache
def table(name: str) -> dict[str, list[float]]:
    """The weighting's table (templates/loss_scale/<name>.json)."""
    return json.loads((resources.files("vlft.templates") / "loss_scale" / f"{name}.json").read_text())


def _split(text: str, name: str) -> list[tuple[str, float]]:
    """One weighting over `text`: a table of delimiters (two weights each: the delimiter's, and the text's after it
    up to the next delimiter) or of regular expressions (one weight: the text each matches)."""
    weights = table(name)
    delimiters = [key for key, value in weights.items() if len(value) == 2]
    patterns = [re.escape(key) for key in delimiters] if delimiters else list(weights)
    parts = [p for p in re.split("|".join(f"({p})" for p in patterns), text, flags=re.DOTALL) if p is not None]
    if delimiters:  # leading text, then (delimiter, text after it) pairs
        pieces = [(parts[0], 1.0)] if parts[0] else []
        for key, after in zip(parts[1::2], parts[2::2]):
            pieces += [(key, weights[key][0]), (after, weights[key][1])]
        return pieces
    pieces = []
    for part in filter(None, parts):
        matched = next((key for key in weights if re.match(key, part, flags=re.DOTALL)), None)
        pieces.append((part, 1.0 if matched is None else weights[matched][0]))
    return pieces
