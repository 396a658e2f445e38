"""Self-cognition data (`--dataset swift/self-cognition --model_name NAME --model_author AUTHOR`): the hub rows
hold `{{NAME}}` and `{{AUTHOR}}`, filled with the row's language (`tag` zh or en) from ms-swift's two arguments,
each given as `ZH [EN]` (one value serves both). Subsets add a fixed query suffix or response prefix (`qwen3`:
` /no_think` and an empty think block) to the same hub rows."""

from __future__ import annotations

from dataclasses import dataclass

from vlft.errors import VlftError

PLACEHOLDERS = {"name": "{{NAME}}", "author": "{{AUTHOR}}"}


@dataclass(frozen=True)
class ModelIdentity:
    """The model's name and author as (Chinese, English) pairs; None where not given."""

    name: tuple[str, str] | None = None
    author: tuple[str, str] | None = None

    @classmethod
    def from_args(cls, model_name: list[str] | None, model_author: list[str] | None) -> ModelIdentity:
        return cls(_pair(model_name), _pair(model_author))

    def value(self, key: str, tag: str) -> str | None:
        pair = getattr(self, key)
        if pair is None:
            return None
        return pair[0] if tag == "zh" else pair[1]


def _pair(values: list[str] | None) -> tuple[str, str] | None:
    """(zh, en) from one or two values (identity_problems refuses more)."""
    return (values[0], values[-1]) if values else None


def identity_problems(model_name: list[str] | None, model_author: list[str] | None) -> list[str]:
    """Argument problems of the two flags (more than two values)."""
    problems = []
    for flag, values in (("--model_name", model_name), ("--model_author", model_author)):
        if values and len(values) > 2:
            problems.append(f"{flag} takes a Chinese and an English value (or one for both), got {len(values)}")
    return problems


def fill_identity(row: dict, identity: ModelIdentity, affixes: dict, *, label: str, line: int) -> dict:
    """One hub row with its placeholders filled and the subset's affixes added (query and response)."""
    tag = row.get("tag")
    out = {k: v for k, v in row.items() if k != "tag"}
    for column in ("query", "response"):
        text = out.get(column)
        if not isinstance(text, str):
            continue
        for key, placeholder in PLACEHOLDERS.items():
            if placeholder not in text:
                continue
            value = identity.value(key, tag)
            if value is None:
                raise VlftError(f"--dataset {label}: row {line}, field {column!r} holds {placeholder}: give "
                                f"--model_{key} (ms-swift's form: --model_{key} ZH EN)")
            text = text.replace(placeholder, value)
        out[column] = text
    if isinstance(out.get("query"), str):
        out["query"] += affixes.get("query_suffix", "")
    if isinstance(out.get("response"), str):
        out["response"] = affixes.get("response_prefix", "") + out["response"]
    return out
