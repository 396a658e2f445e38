"""ms-swift's `--new_special_tokens`: tokens added to the tokenizer as special tokens (one id each, never split by
BPE, kept in answers), given one by one or as .txt files of whitespace-separated tokens. They take the free rows of
the model's embedding (Qwen's vocab_size leaves a few hundred beyond its tokenizer), so the model keeps its shape:
its checkpoints, merges and Megatron conversions are unchanged. Every command that builds an encoder adds the same
tokens in the same order (infer and export read them from the run's args.json), so their ids agree."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from vlft.errors import VlftError


def read_new_special_tokens(values: list[str] | None) -> tuple[str, ...]:
    """The tokens of `--new_special_tokens`: each value a token, or a .txt file of whitespace-separated ones."""
    tokens: list[str] = []
    for value in values or []:
        if value.endswith(".txt"):
            path = Path(value).expanduser()
            if not path.is_file():
                raise VlftError(f"--new_special_tokens {value}: no such file (a value ending in .txt is read as a "
                                "file of tokens)")
            tokens += path.read_text(encoding="utf-8").split()
        else:
            if not value or value != value.strip() or any(c.isspace() for c in value):
                raise VlftError(f"--new_special_tokens {value!r}: a token is one piece of text without spaces")
            tokens.append(value)
    return tuple(dict.fromkeys(tokens))


def embedding_rows(model_dir: Path) -> int | None:
    """The language model's vocab_size in `model_dir`'s config.json (None when it names none)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    return config.get("text_config", {}).get("vocab_size") or config.get("vocab_size")


def with_new_special_tokens(processor, tokens: tuple[str, ...], model_dir: Path, family_tokens: frozenset[str]):
    """A copy of `processor` whose tokenizer has `tokens` (those it lacks: a checkpoint trained with them has them)
    as special tokens (the processor loaded is left as it was). VlftError for one of the family's own added tokens
    (`<|im_end|>`, `<think>`, ...: they keep their role) or when they need more ids than the embedding has rows."""
    if not tokens:
        return processor
    own = [t for t in tokens if t in family_tokens]
    if own:
        raise VlftError(f"--new_special_tokens {' '.join(own)}: already the model's own token(s), with their role in "
                        "the chat template")
    processor = copy.deepcopy(processor)
    tokenizer = processor.tokenizer
    tokenizer.add_tokens(list(tokens), special_tokens=True)
    rows = embedding_rows(model_dir)
    highest = max(tokenizer.convert_tokens_to_ids(list(tokens)))
    if rows is not None and highest >= rows:
        raise VlftError(f"--new_special_tokens: {len(tokens)} tokens take the tokenizer's ids up to {highest}, "
                        f"beyond the {rows} rows of {model_dir}'s embedding (vocab_size); vlft adds tokens only "
                        "into free rows")
    return processor
