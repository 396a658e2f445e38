"""Tool use with Qwen3-VL (ms-swift's `hermes` agent format, as the official chat template writes it): tools listed
in the system turn, assistant tool calls as <tool_call> JSON, runs of tool results as one user turn. vlft's
encoding of dataset rows (OpenAI form and ms-swift's tool_call / tool_response roles) against the HF tokenizer's
apply_chat_template with the official template, token for token; the calls are trained, the results are not.

Qwen2-VL's and Qwen2.5-VL's official templates write no tools; ms-swift writes its hermes format for them, which is
that text with the template's default system ("You are a helpful assistant.") before the tools when the row has no
system message, and an assistant's content joined to its first call with nothing (ms-swift splits the content and
the calls into messages, formats the calls, then concatenates the assistant messages: swift/template/base.py): their
ground truth is Qwen3-VL's official template given that system message, with the line break it writes between
content and the first call removed, tokenized by each family's own tokenizer."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from tests.conftest import REPO
from vlft.data.encode import IGNORE_INDEX, Encoder, EncodeSettings
from vlft.data.formats import to_sample
from vlft.data.template import load_template
from vlft.families import get_family

OFFICIAL = (REPO / "templates" / "official" / "qwen3_vl" / "chat_template.jinja").read_text()
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "Local time, 24h",
                                         "parameters": {"type": "object", "properties": {}}}}


def call(name: str, arguments) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


CASES = {
    "system, content and two calls, two results": (
        [{"role": "system", "content": "You are a travel helper."},
         {"role": "user", "content": "Weather and time in Hangzhou?"},
         {"role": "assistant", "content": "Let me check.",
          "tool_calls": [call("get_weather", {"city": "杭州"}), call("get_time", "{}")]},
         {"role": "tool", "content": "{\"temp\": 21}"}, {"role": "tool", "content": "14:05"},
         {"role": "assistant", "content": "21 degrees at 14:05."}],
        [WEATHER, TIME]),
    "no system, a call without content, two rounds": (
        [{"role": "user", "content": "Weather in Paris?"},
         {"role": "assistant", "content": "", "tool_calls": [call("get_weather", {"city": "Paris"})]},
         {"role": "tool", "content": "rain"},
         {"role": "assistant", "content": "Rain."},
         {"role": "user", "content": "And the time?"},
         {"role": "assistant", "content": "", "tool_calls": [call("get_time", {})]}],
        [WEATHER, TIME]),
    "tools, no call": (
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], [TIME]),
}


def make_encoder(family: str, processor_of) -> Encoder:
    processor = processor_of(family)
    official = (REPO / "templates" / "official" / family / "chat_template.jinja").read_text()
    return Encoder(get_family(family), load_template(family), processor.tokenizer, processor.image_processor,
                   processor.video_processor, EncodeSettings(), chat_template=official)


@pytest.fixture(scope="module")
def encoder(processor_of):
    return make_encoder("qwen3_vl", processor_of)


def hermes_messages(family: str, messages: list[dict]) -> list[dict]:
    """The conversation Qwen3-VL's official template renders as ms-swift's hermes text for FAMILY: with the family
    template's default system message when the row gives none."""
    default = load_template(family).default_system
    if default is None or messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": default}, *messages]


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl", "qwen2_vl"])
@pytest.mark.parametrize("case", list(CASES))
def test_rows_with_tools_encode_as_the_official_template(case, family, processor_of):
    messages, tools = CASES[case]
    encoder = make_encoder(family, processor_of)
    tokenizer = encoder.tokenizer
    row = {"messages": messages, "tools": json.dumps(tools)}  # ms-swift's tools column: a JSON string
    sample = to_sample(row)
    full = encoder.encode(sample)
    rendered = hermes_messages(family, messages)

    def expected_ids(conversation: list[dict], add_generation_prompt: bool = False) -> list[int]:
        text = tokenizer.apply_chat_template(conversation, tools=tools, tokenize=False, chat_template=OFFICIAL,
                                             add_generation_prompt=add_generation_prompt)
        if family != "qwen3_vl":  # ms-swift's hermes: content and first call joined with nothing
            for m in conversation:
                if m["role"] == "assistant" and m["content"] and m.get("tool_calls"):
                    assert f"{m['content']}\n<tool_call>" in text
                    text = text.replace(f"{m['content']}\n<tool_call>", f"{m['content']}<tool_call>")
        return tokenizer.encode(text, add_special_tokens=False)

    assert full.input_ids == expected_ids(rendered)
    prompt = encoder.encode(dataclasses.replace(sample, messages=sample.messages[:-1]), add_generation_prompt=True)
    assert prompt.input_ids == expected_ids(rendered[:-1], add_generation_prompt=True)
    # every assistant turn is trained, its tool calls included; the tools and results are not
    trained = tokenizer.decode([t for t in full.labels if t != IGNORE_INDEX])
    assert trained.count("<|im_end|>") == sum(m["role"] == "assistant" for m in messages)
    assert trained.count("<tool_call>") == sum(len(m.get("tool_calls", [])) for m in messages)
    assert "<tools>" not in trained and "<tool_response>" not in trained
    assert full.labels[-len(prompt.input_ids):] != [IGNORE_INDEX] * len(prompt.input_ids)


def test_ms_swift_tool_call_and_tool_response_roles_encode_as_openai_tool_calls(encoder):
    """ms-swift's agent rows: `tool_call` turns (JSON of name and arguments) and `tool_response` turns."""
    messages, tools = CASES["system, content and two calls, two results"]
    swift_row = {"tools": tools, "messages": [
        messages[0], messages[1], {"role": "assistant", "content": "Let me check."},
        {"role": "tool_call", "content": json.dumps({"name": "get_weather", "arguments": {"city": "杭州"}},
                                                    ensure_ascii=False)},
        {"role": "tool_call", "content": json.dumps({"name": "get_time", "arguments": "{}"})},
        {"role": "tool_response", "content": "{\"temp\": 21}"}, {"role": "tool_response", "content": "14:05"},
        messages[-1]]}
    expected = encoder.tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, chat_template=OFFICIAL,
                                                     return_dict=False)
    assert encoder.encode(to_sample(swift_row)).input_ids == list(expected)


@pytest.mark.parametrize("template, requested, error", [
    ("qwen3_vl", "hermes", None),
    ("qwen3_5", "qwen3_5", None),
    ("qwen3_vl", None, None),
    ("qwen2_5_vl", "hermes", None),
    ("qwen3_5", "hermes", "the qwen3_5 template writes tools in one format, qwen3_5"),
    ("qwen2_vl", "react_en", "the qwen2_vl template writes tools in one format, hermes"),
])
def test_agent_template_takes_only_the_format_the_template_writes(template, requested, error):
    from vlft.data.template import check_agent_template
    from vlft.errors import VlftError

    if error is None:
        check_agent_template(load_template(template), requested)
    else:
        with pytest.raises(VlftError, match=re.escape(f"--agent_template {requested}: {error}")):
            check_agent_template(load_template(template), requested)


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl", "qwen2_vl"])
def test_a_tool_name_needing_escapes_is_written_as_each_ground_truth_writes_it(family, processor_of):
    """ms-swift's hermes (Qwen2-VL / Qwen2.5-VL) writes each call as json.dumps({"name", "arguments"}), escaping
    the name; Qwen3-VL's official template writes the name as it is."""
    name = 'say "hi"\\now'
    encoder = make_encoder(family, processor_of)
    row = {"messages": [{"role": "user", "content": "Go."},
                        {"role": "assistant", "content": "", "tool_calls": [call(name, {"a": 1})]}]}
    text = encoder.tokenizer.decode(encoder.encode(to_sample(row)).input_ids)
    if family == "qwen3_vl":
        official = encoder.tokenizer.apply_chat_template(row["messages"], tokenize=False, chat_template=OFFICIAL)
        assert text == official and f'"name": "{name}"' in official
    else:
        written = json.dumps({"name": name, "arguments": {"a": 1}}, ensure_ascii=False)
        assert f"<tool_call>\n{written}\n</tool_call>" in text
