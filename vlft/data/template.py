"""Chat templates: the declarative JSON in templates/ and rendering a conversation into text segments
that know which characters are trained."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from vlft.data.loss_scale import BaseStrategy, parse_loss_scale
from vlft.data.sample import Message
from vlft.errors import DataError, VlftError

if TYPE_CHECKING:
    from vlft.data.render_qwen3_5 import TemplateStyle

IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"


@dataclass(frozen=True)
class Template:
    """A family's chat format, read from templates/<name>.json."""

    name: str
    default_system: str | None
    system: str
    turn_start: str
    turn_end: str
    turn_separator: str
    image: str
    video: str
    image_pad: str
    video_pad: str
    vision_start: str
    vision_end: str
    stop_words: tuple[str, ...]
    # Hermes wraps runs of tool results into one user turn of <tool_response> items; None: a plain turn.
    tool_start: str | None = None
    tool_item: str | None = None
    tool_end: str | None = None
    # Hermes tool use (Qwen3-VL's chat template; ms-swift's hermes for Qwen2-VL and Qwen2.5-VL, whose official templates
    # have no tools): with tools, the system turn holds the system message (or the default system), a blank line,
    # `tools_header`, each tool's JSON on a line of its own and `tools_footer`; an assistant's tool calls follow its
    # content, each `tool_call` formatted with the call's name and its arguments' JSON. None: refused.
    tools_header: str | None = None
    tools_footer: str | None = None
    tool_call: str | None = None
    # The call's name JSON-escaped inside its quotes (ms-swift's hermes json.dumps the call; Qwen3-VL's official
    # template writes the name as it is): they differ only for a name with `"`, `\` or a control character.
    tool_call_name_json: bool = False
    # Between an assistant's content and its first tool call: Qwen3-VL's official template writes a line break;
    # ms-swift's hermes (Qwen2-VL, Qwen2.5-VL) joins them with nothing.
    tool_call_after_content: str = "\n"
    # ms-swift's name of the tool format this template writes (its --agent_template); None: it writes no tools.
    agent_template: str | None = None
    # A code hook for a chat format these fields cannot express (Qwen3.5: "qwen3_5", vlft/data/render_qwen3_5.py);
    # None: rendered from the fields above.
    renderer: str | None = None
    # Hooks only: enable_thinking when the caller gives none (None: the checkpoint's chat template decides).
    enable_thinking: bool | None = None
    # ms-swift appends "+ignore_empty_think" to --loss_scale for hybrid-thinking templates
    # (unless --disable_ignore_empty_think); true for those.
    ignore_empty_think: bool = False
    # The roles whose media the official chat template renders (Qwen3-VL drops system and assistant images).
    media_roles: tuple[str, ...] = ("system", "user", "assistant", "tool")

    @property
    def generation_prompt(self) -> str:
        """What opens the assistant's answer at inference time."""
        return self.turn_start.format(role="assistant")


@dataclass(frozen=True)
class Segment:
    """A run of rendered text and whether its tokens are trained."""

    text: str
    trained: bool


def load_template(name: str) -> Template:
    """The template called `name` from vlft's templates/ package data."""
    path = resources.files("vlft.templates") / f"{name}.json"
    if not path.is_file():
        known = sorted(p.name[:-5] for p in resources.files("vlft.templates").iterdir() if p.name.endswith(".json"))
        raise VlftError(f"unknown template {name!r}; known: {', '.join(known)}")
    spec = json.loads(path.read_text())
    spec["stop_words"] = tuple(spec["stop_words"])
    if "media_roles" in spec:
        spec["media_roles"] = tuple(spec["media_roles"])
    return Template(**spec)


def render(template: Template, messages: list[Message], *, loss_scale: str = "default",
           add_generation_prompt: bool = False, tools: list | None = None, enable_thinking: bool | None = None,
           preserve_thinking: bool = False, style: TemplateStyle | None = None,
           disable_ignore_empty_think: bool = False, train_turn_separator: bool = True) -> list[Segment]:
    """The conversation as text segments; assistant content, its closing turn_end and (`train_turn_separator`,
    as ms-swift and Qwen's fine-tuning code do) the separator after it are trained.

    `loss_scale` (loss_scale.py; its weightings are applied by the encoder): "default" trains every assistant turn,
    "last_round" only the last, "all" every token; "+ignore_empty_think": an empty `<think>` block is not trained
    (templates with `ignore_empty_think` add it unless `disable_ignore_empty_think`, as ms-swift does). A message's
    own `loss` (true/false) overrides for that assistant turn. `tools`, `enable_thinking` (None: the template's,
    else the checkpoint's default), `preserve_thinking` and `style` (read from the checkpoint's chat template with
    render_qwen3_5.style_of; None: its default) are for templates with a renderer; the others refuse tools, tool
    calls and reasoning.
    """
    parsed = parse_loss_scale(loss_scale)
    base, ignore_empty_think = parsed.base, parsed.ignore_empty_think
    if template.renderer is None:
        _refuse_unwritable(template, messages, tools)
        return _render_fields(template, messages, base, add_generation_prompt, train_turn_separator, tools)
    hook, default_style = _renderer(template.renderer)
    ignore_empty_think = ignore_empty_think or (template.ignore_empty_think and not disable_ignore_empty_think)
    return hook(messages, tools=tools, style=style or default_style, loss_scale=base,
                ignore_empty_think=ignore_empty_think, train_turn_separator=train_turn_separator,
                add_generation_prompt=add_generation_prompt, preserve_thinking=preserve_thinking,
                enable_thinking=template.enable_thinking if enable_thinking is None else enable_thinking,
                image=template.image, video=template.video)


def _render_fields(template: Template, messages: list[Message], loss_scale: BaseStrategy,
                   add_generation_prompt: bool, train_turn_separator: bool, tools: list | None) -> list[Segment]:
    segments: list[Segment] = []
    everything = loss_scale == "all"
    if messages and messages[0].role == "system":
        system, messages = messages[0].content, messages[1:]
    else:
        system = template.default_system  # with tools too: ms-swift's hermes writes it before them
    if tools:
        listed = "".join("\n" + json.dumps(tool, ensure_ascii=False) for tool in tools)  # transformers' tojson
        before = "" if system is None else _with_media(template, system) + "\n\n"
        content = before + template.tools_header + listed + template.tools_footer
        segments.append(Segment(template.system.format(content=content), everything))
    elif system is not None:
        segments.append(Segment(template.system.format(content=_with_media(template, system)), everything))
    last_assistant = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=-1)
    for i, message in enumerate(messages):
        start = template.turn_start.format(role=message.role)
        content = _with_media(template, message.content)
        if message.role == "tool" and template.tool_item is not None:
            first = i == 0 or messages[i - 1].role != "tool"
            last = i == len(messages) - 1 or messages[i + 1].role != "tool"
            text = (template.tool_start if first else "") + template.tool_item.format(content=content)
            segments.append(Segment(text + (template.tool_end if last else ""), everything))
            continue
        if message.role != "assistant":
            segments.append(Segment(start + content + template.turn_end + template.turn_separator, everything))
            continue
        trained = everything or (loss_scale == "default" or i == last_assistant)
        if message.loss is not None:
            trained = message.loss
        segments += [
            Segment(start, everything),
            Segment(content + _tool_calls(template, message, content), trained),
            Segment(template.turn_end, trained),  # apart: --loss_scale's weightings weigh the answer, not it
            Segment(template.turn_separator, everything or (trained and train_turn_separator)),
        ]
    if add_generation_prompt:
        segments.append(Segment(template.generation_prompt, False))
    return segments


# Render hooks by name: the module that holds `render`, `style_of` and `DEFAULT_STYLE` (imported when used: the
# hook modules import Segment from this one).
RENDERERS = {"qwen3_5": "vlft.data.render_qwen3_5"}


def _renderer_module(name: str):
    import importlib

    if name not in RENDERERS:
        raise VlftError(f"unknown template renderer {name!r}; known: {', '.join(RENDERERS)}")
    return importlib.import_module(RENDERERS[name])


def _renderer(name: str):
    module = _renderer_module(name)
    return module.render, module.DEFAULT_STYLE


def _tool_calls(template: Template, message: Message, content: str) -> str:
    """An assistant's tool calls (formats.py made each {"name", "arguments": {...}}) in the template's `tool_call`
    form after its content (a line break between calls; `tool_call_after_content` before the first when there is
    content), the arguments as JSON, as ms-swift's hermes writes them (the official template writes arguments given
    as a JSON string as they are: the same text unless that string was spaced otherwise)."""
    calls = []
    for j, call in enumerate(message.tool_calls or []):
        separator = "\n" if j else template.tool_call_after_content if content else ""
        arguments = json.dumps(call["arguments"], ensure_ascii=False)
        name = json.dumps(call["name"], ensure_ascii=False)[1:-1] if template.tool_call_name_json else call["name"]
        calls.append(separator + template.tool_call.format(name=name, arguments=arguments))
    return "".join(calls)


def _refuse_unwritable(template: Template, messages: list[Message], tools: list | None) -> None:
    """Tools, tool calls and reasoning this template cannot write are an error, never dropped."""
    if tools and template.tools_header is None:
        raise DataError(f"the {template.name} template cannot render tools", field="tools")
    for m in messages:
        if m.tool_calls and template.tool_call is None:
            raise DataError(f"the {template.name} template cannot render tool calls", field=m.field("tool_calls"))
        if m.reasoning_content is not None:
            raise DataError(f"the {template.name} template cannot render reasoning_content",
                            field=m.field("reasoning_content"))


def _with_media(template: Template, text: str) -> str:
    return text.replace(IMAGE_PLACEHOLDER, template.image).replace(VIDEO_PLACEHOLDER, template.video)


def template_style(template: Template, chat_template: str | None) -> TemplateStyle | None:
    """The render hook's style read from a checkpoint's chat template (None for templates without a hook; the
    hook's default style without a chat template)."""
    if template.renderer is None:
        return None
    module = _renderer_module(template.renderer)
    return module.style_of(chat_template) if chat_template else module.DEFAULT_STYLE


def check_agent_template(template: Template, requested: str | None) -> None:
    """ms-swift's --agent_template: vlft writes tools in one format per template (the official template's, or
    ms-swift's default for the template where the official one has none), so only that format's name is taken."""
    if requested is None or requested == template.agent_template:
        return
    if template.agent_template is None:
        raise VlftError(f"--agent_template {requested}: the {template.name} template writes no tools")
    raise VlftError(f"--agent_template {requested}: the {template.name} template writes tools in one format, "
                    f"{template.agent_template}; give that or leave it out")
