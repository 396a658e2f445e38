"""ms-swift's `--new_special_tokens`: tokens added to the tokenizer as special tokens (one id each, never split by
BPE, kept in answers), given one by one or as .txt files of whitespace-separated tokens. They take the free rows of
the model's embedding first (Qwen's vocab_size leaves a few hundred beyond its tokenizer); more grow the embedding
to the next multiple of 128 rows, the new rows the mean of the others on every load (model/loading.fit_embeddings:
training, inference and export grow it alike), as ms-swift grows it. Every command that builds an encoder adds the
same tokens in the same order (infer and export read them from the run's args.json), so their ids agree."""

from __future__ import annotations

import copy
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


def with_new_special_tokens(processor, tokens: tuple[str, ...], family_tokens: frozenset[str]):
    """A copy of `processor` whose tokenizer has `tokens` (those it lacks: a checkpoint trained with them has them)
    as special tokens (the processor loaded is left as it was). VlftError for one of the family's own added tokens
    (`<|im_end|>`, `<think>`, ...: they keep their role). Beyond the embedding's free rows the model grows
    (model/loading.fit_embeddings)."""
    if not tokens:
        return processor
    own = [t for t in tokens if t in family_tokens]
    if own:
        raise VlftError(f"--new_special_tokens {' '.join(own)}: already the model's own token(s), with their role in "
                        "the chat template")
    processor = copy.deepcopy(processor)
    processor.tokenizer.add_tokens(list(tokens), special_tokens=True)
    return processor
