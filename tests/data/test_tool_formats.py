"""Tools, tool calls (OpenAI `tool_calls`, ms-swift's `tool_call` / `tool_response` roles) and reasoning in dataset
rows, normalised into `Sample.tools` / `Message.tool_calls` / `Message.reasoning_content`, and every malformed
value rejected with a DataError that names the field."""

from __future__ import annotations

import json

import pytest

from vlft.data.formats import to_sample
from vlft.data.sample import Message
from vlft.errors import DataError

WEATHER = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
WRAPPED = {"type": "function", "function": WEATHER}


def row(*messages, **columns):
    return {"messages": [{"role": "user", "content": "Weather in Paris?"}, *messages], **columns}


def calls_of(sample):
    return [m.tool_calls for m in sample.messages if m.role == "assistant"]


# ---------------------------------------------------------------------------------------------------
# tools


@pytest.mark.parametrize("tools", [[WRAPPED], [WEATHER], json.dumps([WEATHER]), json.dumps(WEATHER),
                                   [json.dumps(WEATHER)]])
def test_tools_in_every_accepted_shape_become_openai_schemas(tools):
    sample = to_sample(row({"role": "assistant", "content": "ok"}, tools=tools))
    assert sample.tools == [WRAPPED]


def test_no_or_empty_tools_is_none():
    assert to_sample(row({"role": "assistant", "content": "ok"})).tools is None
    assert to_sample(row({"role": "assistant", "content": "ok"}, tools=[])).tools is None


@pytest.mark.parametrize("tools, error", [
    ("[{", r"^tools: invalid JSON"),
    ('"weather"', r"^tools: expected a list of tools, got str"),
    (5, r"^tools: expected a list of tools, got int"),
    ([WEATHER, 3], r"^tools\[1\]: expected a tool object, got int"),
    ([WEATHER, "{bad"], r"^tools\[1\]: invalid JSON"),
])
def test_bad_tools(tools, error):
    with pytest.raises(DataError, match=error):
        to_sample(row({"role": "assistant", "content": "ok"}, tools=tools))


# ---------------------------------------------------------------------------------------------------
# OpenAI tool_calls


def test_openai_tool_calls_with_json_string_and_object_arguments():
    sample = to_sample(row({"role": "assistant", "content": None, "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"name": "search", "arguments": {"q": "Lyon", "n": 2}},
        {"type": "function", "function": {"name": "now"}}]}))
    assert sample.messages[1] == Message("assistant", "", tool_calls=[
        {"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "search", "arguments": {"q": "Lyon", "n": 2}},
        {"name": "now", "arguments": {}}])


@pytest.mark.parametrize("tool_calls, error", [
    ({"name": "f"}, r"^messages\[1\].tool_calls: expected a list of tool calls, got dict"),
    (["f"], r"^messages\[1\].tool_calls\[0\]: expected a tool call object, got str"),
    ([{"function": "f"}], r"^messages\[1\].tool_calls\[0\].function: expected an object"),
    ([{"function": {"arguments": {}}}], r"^messages\[1\].tool_calls\[0\].function.name: expected the function's name"),
    ([{"function": {"name": "f", "arguments": "{nope"}}],
     r"^messages\[1\].tool_calls\[0\].function.arguments: invalid JSON"),
    ([{"name": "f", "arguments": "[1, 2]"}], r"^messages\[1\].tool_calls\[0\].arguments: expected an object"),
    ([{"name": "f", "arguments": None}], r"^messages\[1\].tool_calls\[0\].arguments: expected an object"),
])
def test_bad_tool_calls(tool_calls, error):
    with pytest.raises(DataError, match=error):
        to_sample(row({"role": "assistant", "content": "", "tool_calls": tool_calls}))


def test_tool_calls_on_a_user_message_are_refused():
    with pytest.raises(DataError, match=r"^messages\[0\].tool_calls: only assistant messages"):
        to_sample({"messages": [{"role": "user", "content": "x", "tool_calls": [{"name": "f"}]},
                                {"role": "assistant", "content": "y"}]})


# ---------------------------------------------------------------------------------------------------
# ms-swift's tool_call / tool_response roles


def test_tool_call_role_joins_the_assistant_turn_before_it():
    sample = to_sample(row({"role": "assistant", "content": "Let me check."},
                           {"role": "tool_call", "content": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
                           {"role": "tool_call", "content": {"name": "search", "arguments": '{"q": "x"}'}},
                           {"role": "tool_response", "content": "21C"},
                           {"role": "tool_response", "content": {"q": "x", "hits": ["é"]}},
                           {"role": "assistant", "content": "Warm."}))
    assert sample.messages == [
        Message("user", "Weather in Paris?"),
        Message("assistant", "Let me check.", tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}},
                                                          {"name": "search", "arguments": {"q": "x"}}]),
        Message("tool", "21C"), Message("tool", '{"q": "x", "hits": ["é"]}'), Message("assistant", "Warm.")]


def test_tool_call_role_without_an_assistant_before_it_is_its_own_turn():
    sample = to_sample(row({"role": "tool_call", "content": '{"name": "f", "parameters": {"a": 1}}', "loss": False},
                           {"role": "tool", "content": "r"},
                           {"role": "tool_call", "content": '{"name": "g", "arguments": "{}"}'},
                           {"role": "tool", "content": "s"},
                           {"role": "assistant", "content": "done"}))
    assert sample.messages[1:] == [
        Message("assistant", "", False, tool_calls=[{"name": "f", "arguments": {"a": 1}}]), Message("tool", "r"),
        Message("assistant", "", tool_calls=[{"name": "g", "arguments": {}}]), Message("tool", "s"),
        Message("assistant", "done")]


@pytest.mark.parametrize("message, error", [
    ({"role": "tool_call", "content": "{nope"}, r"^messages\[1\].content: invalid JSON"),
    ({"role": "tool_call", "content": '{"arguments": {}}'}, r"^messages\[1\].content.name: expected the function's"),
    ({"role": "tool_call", "content": '{"name": "f", "arguments": "{x"}'},
     r"^messages\[1\].content.arguments: invalid JSON"),
    ({"role": "tool_call", "content": 3}, r"^messages\[1\].content: expected a tool call object, got int"),
])
def test_bad_tool_call_messages(message, error):
    with pytest.raises(DataError, match=error):
        to_sample(row(message, {"role": "tool", "content": "r"}, {"role": "assistant", "content": "ok"}))


def test_a_tool_call_with_another_loss_than_its_turn_is_refused():
    with pytest.raises(DataError, match=r"^messages\[2\].loss: a tool call joins the assistant turn before it"):
        to_sample(row({"role": "assistant", "content": "checking", "loss": True},
                      {"role": "tool_call", "content": '{"name": "f", "arguments": {}}', "loss": False}))


def test_sharegpt_function_call_and_observation():
    sample = to_sample({"conversations": [{"from": "human", "value": "q"},
                                          {"from": "function_call", "value": '{"name": "f", "arguments": {"a": 1}}'},
                                          {"from": "observation", "value": "r"}, {"from": "gpt", "value": "a"}]})
    assert sample.messages == [Message("user", "q"), Message("assistant", "", tool_calls=[
        {"name": "f", "arguments": {"a": 1}}]), Message("tool", "r"), Message("assistant", "a")]


# ---------------------------------------------------------------------------------------------------
# reasoning_content


def test_reasoning_content():
    sample = to_sample(row({"role": "assistant", "content": "Sunny.", "reasoning_content": "Check the sky."}))
    assert sample.messages[1] == Message("assistant", "Sunny.", reasoning_content="Check the sky.")


@pytest.mark.parametrize("messages, error", [
    ([{"role": "user", "content": "q", "reasoning_content": "r"}, {"role": "assistant", "content": "a"}],
     r"^messages\[0\].reasoning_content: only assistant messages"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning_content": ["r"]}],
     r"^messages\[1\].reasoning_content: expected a string, got list"),
])
def test_bad_reasoning_content(messages, error):
    with pytest.raises(DataError, match=error):
        to_sample({"messages": messages})
