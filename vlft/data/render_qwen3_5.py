"""Qwen3.5 / Qwen3.6 conversations as trained and untrained text: the same text as their official chat template
(templates/official/qwen3_5/chat_template.jinja), which the declarative JSON fields cannot express (contents
trimmed, `<think>` parsed out of answers and kept only after the last user query, XML tool calls, a tools
preamble). `style_of` reads what differs between checkpoints' templates from the template text."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

from vlft.data.sample import Message
from vlft.data.loss_scale import BaseStrategy
from vlft.data.template import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, Segment
from vlft.errors import DataError, VlftError

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
ASSISTANT = "<|im_start|>assistant\n"
THINK = "<think>\n"
EMPTY_THINK = "<think>\n\n</think>\n\n"
TURN_END = "<|im_end|>"
TOOLS_HEADER = "# Tools\n\nYou have access to the following functions:\n\n<tools>"
TOOLS_FOOTER = (
    "\n</tools>\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
    "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
    "<parameter=example_parameter_2>\nThis is the value for the second parameter\nthat can span\nmultiple lines\n"
    "</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n- Function calls MUST follow the specified "
    "format: an inner <function=...></function> block must be nested within <tool_call></tool_call> XML tags\n"
    "- Required parameters MUST be specified\n- You may provide optional reasoning for your function call in "
    "natural language BEFORE the function call, but NOT after\n- If there is no function call available, answer "
    "the question like normal with your current knowledge and do not tell the user about function calls\n"
    "</IMPORTANT>")


@dataclass(frozen=True)
class TemplateStyle:
    """What differs between the Qwen3.5 / Qwen3.6 checkpoints' chat templates."""

    thinking_default: bool  # the generation prompt opens <think> unless enable_thinking is false (else only if true)
    preserve_thinking: bool  # the template itself has preserve_thinking=true (<think> kept in every turn; Qwen3.6)
    # Tool-call argument values other than strings, objects and lists: Python's str() (Qwen3.5: True, None)
    # or JSON (Qwen3.6: true, null).
    scalar_arguments: Literal["python", "json"]


QWEN3_5_0_8B = TemplateStyle(thinking_default=False, preserve_thinking=False, scalar_arguments="python")
QWEN3_5 = TemplateStyle(thinking_default=True, preserve_thinking=False, scalar_arguments="python")  # 4B ... 35B-A3B
QWEN3_6 = TemplateStyle(thinking_default=True, preserve_thinking=True, scalar_arguments="json")
# Without a checkpoint's template (and for a part of one not recognised): Qwen3.5's thinking-by-default
# template (4B, 9B, 27B, 35B-A3B), the one most Qwen3.5 checkpoints and Qwen3.6's generation prompt use.
DEFAULT_STYLE = QWEN3_5


def style_of(chat_template: str) -> TemplateStyle:
    """The style of a checkpoint's chat_template.jinja text (its own template is the truth for it); parts not
    recognised take DEFAULT_STYLE's; a template that is clearly not Qwen3.5-style is an error."""
    if "<function=" not in chat_template or "last_query_index" not in chat_template:
        raise VlftError("the chat template is not Qwen3.5-style (no XML `<function=...>` tool calls or no "
                        "last_query_index): use the template of its own family")
    if "reasoning_effort" in chat_template:
        raise VlftError("the chat template injects reasoning_effort instructions (Qwen3.8), which the "
                        "qwen3_5 renderer does not write")
    generation = chat_template[chat_template.rfind("add_generation_prompt"):]
    switch = re.search(r"enable_thinking\s+is\s+defined\s+and\s+enable_thinking\s+is\s+(true|false)", generation)
    if re.search(r"args_value\s*\|\s*string\s+if\s+args_value\s+is\s+string", chat_template):
        scalar_arguments = "json"
    elif re.search(r"args_value\s+is\s+mapping\s+or", chat_template):
        scalar_arguments = "python"
    else:
        scalar_arguments = DEFAULT_STYLE.scalar_arguments
    return TemplateStyle(
        thinking_default=DEFAULT_STYLE.thinking_default if switch is None else switch.group(1) == "false",
        preserve_thinking=re.search(r"preserve_thinking\s+is\s+true", chat_template) is not None,
        scalar_arguments=scalar_arguments)


def generation_prompt(style: TemplateStyle, enable_thinking: bool | None) -> str:
    """What the template appends for add_generation_prompt (enable_thinking None: the style's default)."""
    thinking = style.thinking_default if enable_thinking is None else enable_thinking
    return ASSISTANT + (THINK if thinking else EMPTY_THINK)


def render_qwen3_5(messages: list[Message], *, tools: list | None = None, style: TemplateStyle = DEFAULT_STYLE,
                   loss_scale: BaseStrategy = "default", ignore_empty_think: bool = False,
                   add_generation_prompt: bool = False, enable_thinking: bool | None = None,
                   preserve_thinking: bool = False, image: str = IMAGE, video: str = VIDEO,
                   train_turn_separator: bool = True) -> list[Segment]:
    """The conversation as the official template writes it, split into trained and untrained segments.

    An assistant turn's prompt is what the template gives with add_generation_prompt=True at that point (the
    generation prompt, when the turn shows its `<think>` block and starts with it; else `<|im_start|>assistant\\n`,
    as for history turns, which the template writes without `<think>`); the rest of the turn and its
    `<|im_end|>` are trained, and the `\\n` after it with `train_turn_separator` (ms-swift's labels).
    `loss_scale`: "default" trains every assistant turn, "last_round" those after the last user or tool message
    (ms-swift), "all" every token but the generation prompt; a message's `loss` overrides. `ignore_empty_think`:
    an empty `<think>` block is never trained. `preserve_thinking`: every assistant turn keeps its `<think>` block,
    as Qwen3.6's template writes it with that variable; Qwen3.5's templates have no such variable (they always
    drop the thinking of turns before the last user query), so there it is ms-swift's training rendering, the
    same text as Qwen3.6's.
    """
    if not messages:
        raise DataError("no messages", field="messages")
    texts = [_with_media(m, image, video).strip() for m in messages]  # the template `|trim`s every content
    everything = loss_scale == "all"
    segments = [Segment(_system_turn(messages, texts, tools), everything)]
    last_query = _last_query(messages, texts)
    last_prompt = max(i for i, m in enumerate(messages) if m.role in ("user", "tool"))
    lead = generation_prompt(style, enable_thinking)[len(ASSISTANT):]
    for i, (message, text) in enumerate(zip(messages, texts)):
        if message.role == "system":
            if i:
                raise DataError("a system message may only come first", field=message.field("role"))
        elif message.role == "user":
            segments.append(Segment(f"<|im_start|>user\n{text}<|im_end|>\n", everything))
        elif message.role == "tool":
            first = i > 0 and messages[i - 1].role != "tool"  # the template tests loop.previtem
            last = i == len(messages) - 1 or messages[i + 1].role != "tool"
            item = f"\n<tool_response>\n{text}\n</tool_response>"
            segments.append(Segment(("<|im_start|>user" if first else "") + item + ("<|im_end|>\n" if last else ""),
                                    everything))
        elif message.role == "assistant":
            trained = message.loss if message.loss is not None else loss_scale != "last_round" or i > last_prompt
            shows_think = preserve_thinking or i > last_query
            answer = _answer(message, text, shows_think, style)
            segments += _assistant_turn(answer, lead if shows_think else "", trained, everything,
                                        ignore_empty_think and shows_think, train_turn_separator)
        else:
            raise DataError(f"unknown role {message.role!r}", field=message.field("role"))
    if add_generation_prompt:
        segments.append(Segment(generation_prompt(style, enable_thinking), False))
    return [s for s in segments if s.text]


def _assistant_turn(answer: str, lead: str, trained: bool, everything: bool, ignore_empty_think: bool,
                    train_separator: bool):
    """`<|im_start|>assistant\n` and the generation prompt's `lead` (when the answer starts with it) untrained, the
    rest of the answer `trained`, the `\n` after it trained with it where `train_separator`; with "all", all of
    them trained."""
    if ignore_empty_think and answer.startswith(EMPTY_THINK):  # even under "all", as ms-swift's regex does
        prompt, prompt_trained = EMPTY_THINK, False
    else:
        prompt, prompt_trained = (lead if lead and answer.startswith(lead) else ""), everything
    body = answer[len(prompt):].removesuffix(TURN_END)
    # The turn's end is a segment of its own: --loss_scale's weightings weigh the answer, not it (loss_scale.py).
    return [Segment(ASSISTANT, everything), Segment(prompt, prompt_trained), Segment(body, trained),
            Segment(TURN_END, trained), Segment("\n", everything or (trained and train_separator))]


def _with_media(message: Message, image: str, video: str) -> str:
    if message.role == "system" and (IMAGE_PLACEHOLDER in message.content or VIDEO_PLACEHOLDER in message.content):
        raise DataError("a system message cannot contain images or videos (the Qwen3.5 template refuses them)",
                        field=message.where)
    return message.content.replace(IMAGE_PLACEHOLDER, image).replace(VIDEO_PLACEHOLDER, video)


def _system_turn(messages: list[Message], texts: list[str], tools: list | None) -> str:
    system = texts[0] if messages[0].role == "system" else None
    if not tools:
        return "" if system is None else f"<|im_start|>system\n{system}<|im_end|>\n"
    listed = "".join("\n" + json.dumps(tool, ensure_ascii=False) for tool in tools)  # transformers' tojson
    after = "\n\n" + system if system else ""
    return f"<|im_start|>system\n{TOOLS_HEADER}{listed}{TOOLS_FOOTER}{after}<|im_end|>\n"


def _last_query(messages: list[Message], texts: list[str]) -> int:
    """The last user message that is not only tool responses: assistant turns after it keep their <think>."""
    for i in reversed(range(len(messages))):
        if messages[i].role == "user" and not (texts[i].startswith("<tool_response>")
                                               and texts[i].endswith("</tool_response>")):
            return i
    raise DataError("no user query (the Qwen3.5 template needs a user message that is not only tool responses)",
                    field="messages")


def _answer(message: Message, text: str, shows_think: bool, style: TemplateStyle) -> str:
    """An assistant turn after `<|im_start|>assistant\\n`, through its `<|im_end|>`."""
    if isinstance(message.reasoning_content, str):
        reasoning, content = message.reasoning_content, text
    elif "</think>" in text:  # the template's own parsing, kept exactly (first </think> ends it, last <think> opens it)
        reasoning = text.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
        content = text.split("</think>")[-1].lstrip("\n")
    else:
        reasoning, content = "", text
    think = f"<think>\n{reasoning.strip()}\n</think>\n\n" if shows_think else ""
    calls = []
    for j, call in enumerate(message.tool_calls or []):
        name, arguments = _tool_call(call, message.field(f"tool_calls[{j}]"))
        separator = "\n" if j else "\n\n" if content.strip() else ""
        parameters = "".join(f"<parameter={key}>\n{_argument(value, style)}\n</parameter>\n"
                             for key, value in arguments.items())
        calls.append(f"{separator}<tool_call>\n<function={name}>\n{parameters}</function>\n</tool_call>")
    return think + content + "".join(calls) + TURN_END


def _tool_call(call: dict, field: str) -> tuple[str, dict]:
    function = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise DataError("expected a tool call {\"name\": ..., \"arguments\": {...}}", field=field)
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON ({e.msg})", field=f"{field}.arguments") from None
    if not isinstance(arguments, dict):  # the template iterates `arguments|items`
        raise DataError(f"expected an object of arguments, got {type(arguments).__name__}", field=f"{field}.arguments")
    return function["name"], arguments


def _argument(value, style: TemplateStyle) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)) or style.scalar_arguments == "json":
        return json.dumps(value, ensure_ascii=False)
    return str(value)  # Jinja's `|string`


render = render_qwen3_5  # the name vlft/data/template.py calls a render hook by
