"""Qwen3.5 token ids through vlft's Encoder against the HF tokenizer's `apply_chat_template` with each chat
template (0.8B's official one, the thinking-default one, a Qwen3.6-style one), thinking on, off and the
template's default, tools included: the prompt before each last answer is the HF prompt token for token, and
the whole conversation is the template's text tokenized whole (labels: test_qwen3_5_render.py)."""

from __future__ import annotations

import pytest

from tests.data.test_qwen3_5_render import CASES, JINJA, hf_messages
from vlft.data.encode import Encoder, EncodeSettings
from vlft.data.sample import Sample
from vlft.data.template import load_template
from vlft.families import get_family

TEXT_CASES = [name for name, (messages, _) in CASES.items()
              if messages[-1].role == "assistant" and not any("<image>" in m.content or "<video>" in m.content
                                                              for m in messages)
              and name not in ("tool first", "tool after system", "consecutive assistants")]


@pytest.fixture(scope="module")
def tokenizer(processor_of):
    return processor_of("qwen3_5").tokenizer


@pytest.mark.parametrize("template", list(JINJA))
@pytest.mark.parametrize("enable_thinking", [None, True, False])
@pytest.mark.parametrize("case", TEXT_CASES)
def test_prompt_and_answer_ids_match_hf(template, enable_thinking, case, tokenizer, processor_of):
    messages, tools = CASES[case]
    processor = processor_of("qwen3_5")
    encoder = Encoder(get_family("qwen3_5"), load_template("qwen3_5"), tokenizer, processor.image_processor,
                      processor.video_processor, EncodeSettings(enable_thinking=enable_thinking),
                      chat_template=JINJA[template])
    kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    full = encoder.encode(Sample(messages=list(messages), tools=tools))
    prompt = encoder.encode(Sample(messages=list(messages[:-1]), tools=tools), add_generation_prompt=True)
    expected_prompt = tokenizer.apply_chat_template(hf_messages(messages[:-1]), tools=tools, tokenize=True,
                                                    add_generation_prompt=True, chat_template=JINJA[template],
                                                    return_dict=False, **kwargs)
    assert prompt.input_ids == list(expected_prompt)
    full_text = tokenizer.apply_chat_template(hf_messages(messages), tools=tools, tokenize=False,
                                              chat_template=JINJA[template], **kwargs)
    assert tokenizer.decode(full.input_ids) == full_text
    expected_full = tokenizer.apply_chat_template(hf_messages(messages), tools=tools, tokenize=True,
                                                  chat_template=JINJA[template], return_dict=False, **kwargs)
    assert full.input_ids == list(expected_full)


@pytest.mark.parametrize("template", list(JINJA))
def test_preserve_thinking_keeps_earlier_thinking_as_qwen3_6_writes_it(template, tokenizer, processor_of):
    """--preserve_thinking true (ms-swift's training default unless last_round): every assistant turn keeps its
    thinking, written as Qwen3.6's template writes preserve_thinking=true, and trained; by default (or false) the
    checkpoint's template drops it from earlier turns (the HF processor's text); a request's own switch wins."""
    messages, _ = CASES["thinking history"]
    processor = processor_of("qwen3_5")

    def encoder(**settings):
        return Encoder(get_family("qwen3_5"), load_template("qwen3_5"), tokenizer, processor.image_processor,
                       processor.video_processor, EncodeSettings(**settings), chat_template=JINJA[template])

    kept = encoder(preserve_thinking=True).encode(Sample(messages=list(messages)))
    assert tokenizer.decode(kept.input_ids) == tokenizer.apply_chat_template(
        hf_messages(messages), tokenize=False, chat_template=JINJA["3.6"], preserve_thinking=True)
    trained = tokenizer.decode([t for t, label in zip(kept.input_ids, kept.labels) if label != -100])
    assert "add them\n</think>\n\n2<|im_end|>" in trained  # "<think>\n" may open the turn's prompt
    for dropped in (encoder().encode(Sample(messages=list(messages))),
                    encoder(preserve_thinking=True).encode(Sample(messages=list(messages)), preserve_thinking=False)):
        assert tokenizer.decode(dropped.input_ids) == tokenizer.apply_chat_template(
            hf_messages(messages), tokenize=False, chat_template=JINJA[template])
    prompt = messages[:3]
    asked = encoder().encode(Sample(messages=list(prompt)), add_generation_prompt=True, preserve_thinking=True)
    assert "add them" in tokenizer.decode(asked.input_ids)
