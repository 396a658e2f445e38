"""The tool calls in an answer, as ms-swift's inference returns them (its agent templates' get_toolcall): each
`<tool_call>...</tool_call>` block read in the template's tool format, the answer's text left whole.

hermes (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): a JSON object with "name" and "arguments".
qwen3_5 (Qwen3.5 / Qwen3.6): `<function=NAME>` with `<parameter=KEY>value</parameter>` items, each value a string.
A block that does not parse is left out (ms-swift's too): the text still holds it. ms-swift's readers also try
Python literals and ReAct's `Action:` lines; these do not."""

from __future__ import annotations

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


def _hermes(block: str) -> FunctionCall | None:
    try:
        call = json.loads(block)
    except ValueError:
        return None
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


def tool_calls(text: str, agent_template: str | None) -> list[ToolCall] | None:
    """The calls in `text` written in `agent_template`'s format (a template's `agent_template`); None when there
    are none or the template writes no tools."""
    read = READERS.get(agent_template or "")
    if read is None:
        return None
    calls = [call for block in BLOCK.findall(text) if (call := read(block)) is not None]
    return [ToolCall(call) for call in calls] or None
