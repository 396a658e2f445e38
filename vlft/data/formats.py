"""Dataset rows in the formats users bring (messages, OpenAI content lists, sharegpt, alpaca,
query/response/history) normalised into `Sample`s."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlft.data.grounding import check_objects
from vlft.data.registry import apply_entry, detected_entry, matching_entries, registry_entry
from vlft.data.sample import ROLES, Message, Sample
from vlft.errors import DataError

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "tool": "tool", "function": "tool", "observation": "tool",
                  "tool_response": "tool", "function_call": "tool_call", "tool_call": "tool_call"}
# ms-swift's extra roles: a `tool_call` message (content {"name": ..., "arguments": ...}, or a JSON string of it)
# is a call of the assistant turn before it, or its own assistant turn; `tool_response` is `tool`.
MESSAGE_ROLES = (*ROLES, "tool_call", "tool_response")


def rename_columns(row: dict, columns: dict[str, str] | str | None) -> dict:
    """Row in vlft's column names by `--columns`: a mapping ({source: target}), or a known dataset id whose
    registry mapping applies (`AI-ModelScope/LaTeX_OCR`: image, text). Without `--columns`, a row in the columns
    of exactly one known dataset whose mapping adds no text (VideoChatGPT's) gets that mapping."""
    if not isinstance(row, dict):  # to_sample says what is wrong with it
        return row
    if isinstance(columns, str):
        return apply_entry(row, registry_entry(columns))
    if columns:
        return {columns.get(k, k): v for k, v in row.items()}
    entry = detected_entry(row)
    return apply_entry(row, entry) if entry else row


def to_sample(row: Any, *, source: str | None = None, line: int | None = None,
              base_dir: Path | None = None, require_answer: bool = True) -> Sample:
    """Normalise one row; raise DataError naming the field at fault (the caller adds file and line).

    `require_answer=False` (inference) accepts conversations that end before the assistant's turn.
    """
    if not isinstance(row, dict):
        raise DataError(f"expected a JSON object, got {type(row).__name__}")
    images = _media_list(row, "images", "image")
    videos = _media_list(row, "videos", "video")
    if "messages" in row:
        messages = _from_messages(row["messages"], images, videos, "messages")
    elif "conversations" in row:
        messages = _from_sharegpt(row["conversations"])
    elif "instruction" in row:
        messages = _from_alpaca(row)
    elif "query" in row or "response" in row:
        messages = _from_query_response(row)
    else:
        raise DataError("no conversation found: expected one of messages, conversations, instruction, "
                        f"query/response (columns: {', '.join(map(str, row))}); map others with --columns"
                        + _registry_hint(row))
    system = row.get("system")
    if system is not None and not isinstance(system, str):
        raise DataError(f"expected a string, got {type(system).__name__}", field="system")
    if system is not None and not (messages and messages[0].role == "system"):
        messages.insert(0, Message("system", system, where="system"))
    if "conversations" in row:
        _check_turns(messages, "conversations", "from", require_answer)
    else:
        _check_turns(messages, "messages", "role", require_answer)
    objects = row.get("objects")
    if objects is not None:
        check_objects(objects)
    return Sample(messages=messages, images=images, videos=videos, objects=objects or None,
                  source=source, line=line, base_dir=base_dir, tools=_tools(row.get("tools")))


def _registry_hint(row: dict) -> str:
    """Known datasets in whose columns the row is (named, never applied, when the mapping adds a question)."""
    names = matching_entries(row)
    return f" (the columns of {' or '.join(names)}: --columns {names[0]} applies its mapping)" if names else ""


def _tools(value: Any) -> list[dict] | None:
    """ms-swift's `tools` column: a list of tool schemas or a JSON string of one (of a single schema: a list of
    it), each a schema or a JSON string of one; bare schemas are wrapped as {"type": "function", "function": ...}."""
    if value is None:
        return None
    if isinstance(value, str):
        value = _json(value, "tools")
        value = [value] if isinstance(value, dict) else value
    if not isinstance(value, list):
        raise DataError(f"expected a list of tools, got {type(value).__name__}", field="tools")
    tools = []
    for i, tool in enumerate(value):
        tool = _json(tool, f"tools[{i}]") if isinstance(tool, str) else tool
        if not isinstance(tool, dict):
            raise DataError(f"expected a tool object, got {type(tool).__name__}", field=f"tools[{i}]")
        tools.append(tool if "type" in tool or "function" in tool else {"type": "function", "function": tool})
    return tools or None


def _json(text: str, field: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON ({e.msg} at line {e.lineno} column {e.colno})", field=field) from None
    except ValueError as e:  # an integer over Python's 4,300-digit limit
        raise DataError(f"invalid JSON: {e}", field=field) from None


def _media_list(row: dict, plural: str, singular: str) -> list:
    value = row.get(plural, row.get(singular))
    if value is None:
        return []
    if isinstance(value, (str, dict)):
        return [value]
    if isinstance(value, list):
        return list(value)
    raise DataError(f"expected a list of paths or URLs, got {type(value).__name__}", field=plural)


def _from_messages(messages: Any, images: list, videos: list, field: str) -> list[Message]:
    if not isinstance(messages, list) or not messages:
        raise DataError("expected a non-empty list of messages", field=field)
    out: list[Message] = []
    for i, message in enumerate(messages):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise DataError(f"expected an object with role and content, got {type(message).__name__}", field=where)
        role = message.get("role")
        if role not in MESSAGE_ROLES:
            raise DataError(f"unknown role {role!r} (expected one of {', '.join(MESSAGE_ROLES)})",
                            field=f"{where}.role")
        loss = message.get("loss")
        if loss is not None and not isinstance(loss, bool):
            raise DataError(f"expected true or false, got {loss!r}", field=f"{where}.loss")
        if message.get("loss_scale") is not None:  # ms-swift's per-message weight: never dropped silently
            raise DataError("a message's own loss_scale (a weight for its tokens) is not supported: use \"loss\": "
                            "true / false, or --loss_scale for weights", field=f"{where}.loss_scale")
        content = message.get("content")
        if role == "tool_call":
            _add_tool_call(out, content, loss, f"{where}.content")
            continue
        role = "tool" if role == "tool_response" else role
        tool_calls = message.get("tool_calls")
        if content is None and role == "assistant" and tool_calls:
            content = ""
        if isinstance(content, dict) and role == "tool":  # ms-swift writes object results as JSON
            content = json.dumps(content, ensure_ascii=False)
        if isinstance(content, list):
            before = "".join(m.content for m in out)
            content = _flatten_content(content, images, videos, f"{where}.content", before)
        elif not isinstance(content, str):
            raise DataError(f"expected a string or a list of content parts, got {type(content).__name__}",
                            field=f"{where}.content")
        out.append(Message(role, content, loss, where=f"{where}.content",
                           tool_calls=_tool_calls(tool_calls, role, f"{where}.tool_calls"),
                           reasoning_content=_reasoning(message.get("reasoning_content"), role, where)))
    return out


def _tool_calls(value: Any, role: str, field: str) -> list[dict] | None:
    """OpenAI `tool_calls` ({"function": {"name", "arguments"}} or flat {"name", "arguments"}) as
    [{"name", "arguments": dict}], JSON-string arguments parsed."""
    if value is None:
        return None
    if role != "assistant":
        raise DataError("only assistant messages have tool_calls", field=field)
    if not isinstance(value, list):
        raise DataError(f"expected a list of tool calls, got {type(value).__name__}", field=field)
    return [_tool_call(call, f"{field}[{j}]") for j, call in enumerate(value)] or None


def _tool_call(call: Any, field: str) -> dict:
    if not isinstance(call, dict):
        raise DataError(f"expected a tool call object, got {type(call).__name__}", field=field)
    if "function" in call:
        call, field = call["function"], f"{field}.function"
        if not isinstance(call, dict):
            raise DataError(f"expected an object with name and arguments, got {type(call).__name__}", field=field)
    name = call.get("name")
    if not isinstance(name, str) or not name:
        raise DataError(f"expected the function's name, got {name!r}", field=f"{field}.name")
    key = "arguments" if "arguments" in call or "parameters" not in call else "parameters"  # ms-swift reads both
    arguments = call.get(key, {})
    arguments = _json(arguments, f"{field}.{key}") if isinstance(arguments, str) else arguments
    if not isinstance(arguments, dict):
        raise DataError(f"expected an object of arguments, got {type(arguments).__name__}", field=f"{field}.{key}")
    return {"name": name, "arguments": arguments}


def _add_tool_call(out: list[Message], content: Any, loss: bool | None, field: str) -> None:
    """An ms-swift `tool_call` message, or LLaMA-Factory's `function_call` turn (whose JSON may list parallel
    calls): the calls of the assistant turn just before it, else a turn of its own."""
    value = _json(content, field) if isinstance(content, str) else content
    if isinstance(value, list):
        if not value:
            raise DataError("expected a tool call, got an empty list", field=field)
        calls = [_tool_call(item, f"{field}[{j}]") for j, item in enumerate(value)]
    else:
        calls = [_tool_call(value, field)]
    previous = out[-1] if out else None
    if previous is None or previous.role != "assistant":
        out.append(Message("assistant", "", loss, where=field, tool_calls=calls))
        return
    if loss is not None and loss != previous.loss:  # one loss per turn; ms-swift would split the turn
        raise DataError(f"a tool call joins the assistant turn before it ({previous.where}), so its loss must be "
                        f"that turn's ({previous.loss})", field=field.rsplit(".", 1)[0] + ".loss")
    previous.tool_calls = [*(previous.tool_calls or []), *calls]


def _reasoning(value: Any, role: str, where: str) -> str | None:
    if value is not None and role != "assistant":
        raise DataError("only assistant messages have reasoning_content", field=f"{where}.reasoning_content")
    if value is not None and not isinstance(value, str):
        raise DataError(f"expected a string, got {type(value).__name__}", field=f"{where}.reasoning_content")
    return value


def _flatten_content(parts: list, images: list, videos: list, field: str, before: str) -> str:
    """OpenAI-style content parts as text with placeholders; each media item is inserted into `images`
    or `videos` at the index of its placeholder among all placeholders so far (`before`: earlier turns)."""
    text = []
    for j, part in enumerate(parts):
        where = f"{field}[{j}]"
        if isinstance(part, str):
            text.append(part)
            continue
        if not isinstance(part, dict):
            raise DataError(f"expected a content part object, got {type(part).__name__}", field=where)
        kind = part.get("type") or next((k for k in ("text", "image", "image_url", "video", "video_url") if k in part),
                                        None)
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise DataError(f"expected a string, got {type(part.get('text')).__name__}", field=f"{where}.text")
            text.append(part["text"])
        elif kind in ("image", "image_url", "video", "video_url"):
            ref = part.get(kind, part.get("image") if kind.startswith("image") else part.get("video"))
            if isinstance(ref, dict) and "url" in ref:
                ref = ref["url"]
            if ref is None:
                raise DataError(f"{kind} part without a {kind}", field=where)
            is_image = kind.startswith("image")
            placeholder = "<image>" if is_image else "<video>"
            target = images if is_image else videos
            seen = before.count(placeholder) + sum(t.count(placeholder) for t in text)
            target.insert(seen, ref)
            text.append(placeholder)
        else:
            raise DataError(f"unknown content part type {kind!r}", field=f"{where}.type")
    return "".join(text)


def _from_sharegpt(conversations: Any) -> list[Message]:
    if not isinstance(conversations, list) or not conversations:
        raise DataError("expected a non-empty list of turns", field="conversations")
    out = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise DataError("expected an object with from and value", field=f"conversations[{i}]")
        speaker = turn.get("from", turn.get("role"))
        role = SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise DataError(f"unknown role {speaker!r}", field=f"conversations[{i}].from")
        value = turn.get("value", turn.get("content"))
        if role == "tool_call":
            _add_tool_call(out, value, None, f"conversations[{i}].value")
            continue
        if not isinstance(value, str):
            raise DataError(f"expected a string, got {type(value).__name__}", field=f"conversations[{i}].value")
        out.append(Message(role, value, where=f"conversations[{i}].value"))
    return out


def _from_alpaca(row: dict) -> list[Message]:
    instruction, extra, output = row.get("instruction"), row.get("input"), row.get("output")
    for name, value in (("instruction", instruction), ("output", output)):
        if not isinstance(value, str):
            raise DataError(f"expected a string, got {type(value).__name__}", field=name)
    if extra is not None and not isinstance(extra, str):
        raise DataError(f"expected a string, got {type(extra).__name__}", field="input")
    query = instruction if not extra else f"{instruction}\n{extra}"
    return [Message("user", query, where="instruction"), Message("assistant", output, where="output")]


def _from_query_response(row: dict) -> list[Message]:
    out = []
    history = row.get("history") or []
    if not isinstance(history, list):
        raise DataError("expected a list of [query, response] pairs", field="history")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise DataError("expected a [query, response] pair of strings", field=f"history[{i}]")
        out += [Message("user", pair[0], where=f"history[{i}][0]"),
                Message("assistant", pair[1], where=f"history[{i}][1]")]
    for name in ("query", "response"):
        if not isinstance(row.get(name), str):
            raise DataError(f"expected a string, got {type(row.get(name)).__name__}", field=name)
    return out + [Message("user", row["query"], where="query"),
                  Message("assistant", row["response"], where="response")]


def _check_turns(messages: list[Message], field: str, role_key: str, require_answer: bool) -> None:
    for i, message in enumerate(messages):
        if message.role == "system" and i != 0:
            raise DataError("a system message may only come first", field=f"{field}[{i}].{role_key}")
    if require_answer and not any(m.role == "assistant" for m in messages):
        raise DataError("no assistant turn to train on", field=field)
    first = next((m for m in messages if m.role != "system"), None)
    if require_answer and first is not None and first.role == "assistant":
        # ms-swift inserts an empty user turn here (its pretraining rows); the HF templates render an answer to
        # nothing. Neither is what a chat dataset means: say so, and how to get ms-swift's encoding.
        where = first.field(role_key) if first.where else field
        raise DataError("the conversation starts with an assistant turn: there is no question for it to answer. "
                        'Start with a user turn (ms-swift inserts an empty one: add {"role": "user", "content": ""} '
                        "for the same encoding)", field=where)
