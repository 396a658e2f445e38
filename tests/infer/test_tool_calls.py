"""Tool calls read from an answer (vlft/infer/tool_calls.py), as ms-swift's agent templates read them: the answer
text is what the official chat template writes for an assistant turn with those calls (Qwen3-VL's: hermes JSON;
Qwen3.5's: XML functions and parameters), so reading it must give the calls back."""

from __future__ import annotations

import json

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from tests.conftest import REPO
from vlft.infer.tool_calls import tool_calls

OFFICIAL = {name: (REPO / "templates" / "official" / name / "chat_template.jinja").read_text()
            for name in ("qwen3_vl", "qwen3_5")}
FORMAT = {"qwen3_vl": "hermes", "qwen3_5": "qwen3_5"}
CALLS = [{"name": "get_weather", "arguments": {"city": "杭州", "unit": "celsius"}},
         {"name": "get_time", "arguments": {"zone": "Asia/Shanghai"}}]


def written_answer(family: str, content: str, calls: list[dict]) -> str:
    """The assistant turn's text as the family's official template writes it (between its header and <|im_end|>),
    rendered by transformers as apply_chat_template does."""
    messages = [{"role": "user", "content": "Weather and time?"},
                {"role": "assistant", "content": content,
                 "tool_calls": [{"type": "function", "function": call} for call in calls]}]
    (text,), _ = render_jinja_template(conversations=[messages], chat_template=OFFICIAL[family])
    answer = text.split("<|im_start|>assistant\n", 1)[1].split("<|im_end|>", 1)[0]
    assert answer.count("<tool_call>") == len(calls)
    return answer


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_5"])
@pytest.mark.parametrize("content", ["", "Let me check."])
def test_the_calls_an_official_template_writes_are_read_back(family, content):
    read = tool_calls(written_answer(family, content, CALLS), FORMAT[family])
    assert [(c.function.name, json.loads(c.function.arguments)) for c in read] == [
        (call["name"], call["arguments"]) for call in CALLS]
    assert all(c.type == "function" for c in read) and len({c.id for c in read}) == len(CALLS)


def test_answers_without_a_readable_call_have_none():
    assert tool_calls("It is sunny.", "hermes") is None
    assert tool_calls("<tool_call>\n{not json}\n</tool_call>", "hermes") is None  # the text keeps it
    assert tool_calls('<tool_call>\n{"name": "f"}\n</tool_call>', "hermes") is None  # no arguments
    assert tool_calls("<tool_call>\n<function=f>\n</tool_call>", "qwen3_5") is None  # no </function>
    assert tool_calls('<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>', None) is None  # no tool format


def test_hermes_arguments_given_as_a_json_string_stay_that_string():
    read = tool_calls('<tool_call>\n{"name": "f", "arguments": "{\\"a\\": 1}"}\n</tool_call>', "hermes")
    assert read[0].function.arguments == '{"a": 1}'


def test_hermes_takes_a_python_literal_as_ms_swifts_reader_does():
    read = tool_calls("<tool_call>\n{'name': 'f', 'arguments': {'ok': True, 'n': None}}\n</tool_call>", "hermes")
    assert [(c.function.name, json.loads(c.function.arguments)) for c in read] == [("f", {"ok": True, "n": None})]


@pytest.mark.parametrize("agent_template", ["hermes", "qwen3_5"])
def test_an_answer_without_a_readable_block_is_read_as_react(agent_template):
    answer = ("Thought: two lookups.\nAction: get_weather\nAction Input: {\"city\": \"Paris\"}\nObservation: rain\n"
              "Action: get_time\nAction Input: {}\n")
    read = tool_calls(answer, agent_template)
    assert [(c.function.name, c.function.arguments) for c in read] == [("get_weather", '{"city": "Paris"}'),
                                                                        ("get_time", "{}")]
    # a readable block wins: ReAct lines beside it are not read
    block = '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    assert [c.function.name for c in tool_calls(block + "\n" + answer, "hermes")] == ["f"]
    assert tool_calls("Action: lonely\n", agent_template) is None  # an action without its input
