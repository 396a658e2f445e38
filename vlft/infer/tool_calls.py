"""The tool calls in an answer, as ms-swift's inference returns them (its agent templates' get_toolcall): each
`<tool_call>...</tool_call>` block read in the template's tool format, the answer's text left whole.

hermes (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): a JSON object with "name" and "arguments" (or a Python literal of one:
single quotes, True / None, as ms-swift's reader takes them).
qwen3_5 (Qwen3.5 / Qwen3.6): `<function=NAME>` with `<parameter=KEY>value</parameter>` items, each value a string.
A block that does not parse is left out (ms-swift's too): the text still holds it. An answer with no readable block
is read as ReAct, as ms-swift's readers fall back to it: each `Action: NAME` followed by `Action Input: ARGUMENTS`
(up to the next `Action:`, `Action Input:` or `Observation:`) is a call, its arguments the text as written."""

from __future__ import annotations

import ast
import json
import re
import uuid
from dataclasses import dataclass, field

BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
FUNCTION = re.compile(r"<function=([^>]+)>(.*)</function>", re.DOTALL)
PARAMETER = re.compile(r"<parameter=([^>]+)>\s*(.*?)\s*</parameter>", re.DOTALL)


@dataclass
class FunctionCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends a call's arguments


@dataclass
class ToolCall:
    function: FunctionCall
    type: str = "function"
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


def _object(text: str):
    """JSON, else a Python literal; None when neither parses."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _hermes(block: str) -> FunctionCall | None:
    call = _object(block)
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or "arguments" not in call:
        return None
    arguments = call["arguments"]
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return FunctionCall(call["name"].strip(), text.strip())


def _qwen3_5(block: str) -> FunctionCall | None:
    match = FUNCTION.fullmatch(block.strip())
    if match is None:
        return None
    parameters = {key.strip(): value.strip() for key, value in PARAMETER.findall(match.group(2))}
    return FunctionCall(match.group(1).strip(), json.dumps(parameters, ensure_ascii=False))


READERS = {"hermes": _hermes, "qwen3_5": _qwen3_5}
REACT = re.compile(r"(Action:|Action Input:|Observation:)")


def _react(text: str) -> list[FunctionCall]:
    """ReAct's calls: an `Action:` part then an `Action Input:` part, in order; other parts are skipped."""
    parts = REACT.split(text)
    calls, action = [], None
    for key, content in zip(parts[1::2], parts[2::2]):
        if key == "Action:" and action is None:
            action = content
        elif key == "Action Input:" and action is not None:
            calls.append(FunctionCall(action.strip(), content.strip()))
            action = None
    return calls


def tool_calls(text: str, agent_template: str | None) -> list[ToolCall] | None:
    """The calls in `text` written in `agent_template`'s format (a template's `agent_template`); None when there
    are none or the template writes no tools."""
    read = READERS.get(agent_template or "")
    if read is None:
        return None
    calls = [call for block in BLOCK.findall(text) if (call := read(block)) is not None] or _react(text)
    return [ToolCall(call) for call in calls] or None
