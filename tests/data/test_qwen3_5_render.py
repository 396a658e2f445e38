"""The Qwen3.5 renderer against the official chat template rendered by transformers (0.8B's official blob, and
the thinking-default and Qwen3.6-style variants of tests/data/qwen3_5_templates/), and its labels against the
template's own generation prompts."""

from __future__ import annotations

import dataclasses
import json
import re
from importlib import resources
from pathlib import Path

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from vlft.data.render_qwen3_5 import (DEFAULT_STYLE, QWEN3_5, QWEN3_5_0_8B, QWEN3_6, TemplateStyle, render_qwen3_5,
                                      style_of)
from vlft.data.sample import Message
from vlft.data.loss_scale import LossScale, parse_loss_scale
from vlft.data.template import load_template, render
from vlft.errors import DataError, VlftError

HERE = Path(__file__).parent / "qwen3_5_templates"
JINJA = {
    "0.8b": (resources.files("vlft.templates") / "official/qwen3_5/chat_template.jinja").read_text(),
    "thinking": (HERE / "thinking_default.jinja").read_text(),
    "3.6": (HERE / "qwen3_6_style.jinja").read_text(),
}
STYLES = {"0.8b": QWEN3_5_0_8B, "thinking": QWEN3_5, "3.6": QWEN3_6}


def user(text, **kw):
    return Message("user", text, **kw)


def assistant(text, **kw):
    return Message("assistant", text, **kw)


def tool(text):
    return Message("tool", text)


def call(name, arguments):
    return {"name": name, "arguments": arguments}


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Météo d'une ville",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}},
         {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {}}}}]

CASES = {
    "text": ([user("Where is the capital of Zhejiang?"), assistant("Hangzhou.")], None),
    "system": ([Message("system", "  Be brief.\n"), user("  hi \n"), assistant("\nHello!  ")], None),
    "empty system": ([Message("system", ""), user("hi"), assistant("Hello")], None),
    "image": ([user("<image>What is this?"), assistant("A cat.")], None),
    "multi-image": ([user("<image><image>What's the difference?"), assistant("Kitten, puppy.")], None),
    "video": ([user("<video>\nDescribe <image> and the video."), assistant("A dog runs.")], None),
    "grounding": ([user("<image>Locate the cat, output bbox as JSON."),
                   assistant('```json\n[\n\t{"bbox_2d": [12, 40, 512, 980], "label": "cat"}\n]\n```')], None),
    "thinking history": ([user("1+1?"), assistant("<think>\nadd them\n</think>\n\n2"), user("times 3?"),
                          assistant("<think>2*3</think>6")], None),
    "reasoning_content": ([user("a?"), assistant("A", reasoning_content="  first\n"), user("b?"),
                           assistant("B </think> kept", reasoning_content="second")], None),
    "unclosed think": ([user("q"), assistant("<think>\nstill thinking")], None),
    "empty answer": ([user("q"), assistant("")], None),
    "single call": ([user("Weather in Paris?"), assistant("", tool_calls=[call("get_weather", {"city": "Paris"})])],
                    TOOLS),
    "calls with content": ([user("Weather?"), assistant("<think>need both</think>Let me check.", tool_calls=[
        call("get_weather", {"city": "Paris", "days": 3, "units": ["C"], "opts": {"hourly": True}}),
        call("search", '{"q": "Lyon météo", "exact": true, "page": null, "limit": 2.5}')])], TOOLS),
    "calls without arguments": ([user("go"), assistant("ok", tool_calls=[call("search", {}), {"name": "search"}])],
                                None),
    "tool results grouped": ([user("Weather in Paris and Lyon?"),
                              assistant("", tool_calls=[call("get_weather", {"city": "Paris"}),
                                                        call("get_weather", {"city": "Lyon"})]),
                              tool('{"temp": 21}'), tool("  sunny\n"),
                              assistant("<think>\nboth warm\n</think>\nBoth are warm."),
                              user("thanks"), assistant("You're welcome.")], TOOLS),
    "multi-step tools": ([Message("system", "You are an agent."), user("find x"),
                          assistant("<think>search first</think>", tool_calls=[call("search", {"q": "x"})]),
                          tool("<image>x is here"),
                          assistant("<think>look again</think>", tool_calls=[call("search", {"q": "x 2"})]),
                          tool("found"), assistant("<think>done</think>Found x.")], TOOLS),
    "tool response as user text": ([user("hi"), assistant("calling", tool_calls=[call("search", {"q": "a"})]),
                                    user("<tool_response>\nr\n</tool_response>"), assistant("<think>ok</think>done")],
                                   None),
    "tools without system": ([user("hi"), assistant("Hello")], TOOLS),
    "tools with empty system": ([Message("system", "  "), user("hi"), assistant("Hello")], TOOLS),
    "inference": ([user("first"), assistant("<think>r</think>one"), user("<image>second")], None),
    "consecutive assistants": ([user("q"), assistant("part one"), assistant("<think>t</think>part two")], None),
    "tool first": ([tool("r"), user("q"), assistant("a")], None),  # the template opens no user turn for it
    "tool after system": ([Message("system", "s"), tool("r"), user("q"), assistant("a")], None),
}


def hf_messages(messages: list[Message]) -> list[dict]:
    """The conversation in the shape HF chat templates read (media as content items, OpenAI tool calls)."""
    out = []
    for m in messages:
        parts = [p for p in re.split(r"(<image>|<video>)", m.content) if p]
        content = m.content if not any(p in ("<image>", "<video>") for p in parts) else [
            {"type": p[1:-1]} if p in ("<image>", "<video>") else {"type": "text", "text": p} for p in parts]
        message = {"role": m.role, "content": content}
        if m.tool_calls:
            message["tool_calls"] = [{"type": "function", "function": {
                "name": c["name"], **({"arguments": json.loads(c["arguments"]) if isinstance(c["arguments"], str)
                                       else c["arguments"]} if "arguments" in c else {})}} for c in m.tool_calls]
        if m.reasoning_content is not None:
            message["reasoning_content"] = m.reasoning_content
        out.append(message)
    return out


def jinja(template: str, messages: list[Message], tools=None, **kwargs) -> str:
    kwargs = {k: v for k, v in kwargs.items() if v is not None}  # None: the variable is undefined
    rendered, _ = render_jinja_template(conversations=[hf_messages(messages)], tools=tools,
                                        chat_template=JINJA[template], **kwargs)
    return rendered[0]


def text_of(segments) -> str:
    return "".join(s.text for s in segments)


def trained_text(segments) -> list[str]:
    """The trained runs, adjacent trained segments joined."""
    runs, previous = [], False
    for s in segments:
        if s.trained and previous:
            runs[-1] += s.text
        elif s.trained:
            runs.append(s.text)
        previous = s.trained
    return runs


# ---------------------------------------------------------------------------------------------------
# text parity with the official template


@pytest.mark.parametrize("template", JINJA)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("enable_thinking", [None, True, False])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_text_is_the_official_templates(template, case, enable_thinking, add_generation_prompt):
    messages, tools = CASES[case]
    expected = jinja(template, messages, tools, add_generation_prompt=add_generation_prompt,
                     enable_thinking=enable_thinking)
    for loss_scale in ("default", "last_round", "all"):
        segments = render_qwen3_5(messages, tools=tools, style=STYLES[template], loss_scale=loss_scale,
                                  add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking)
        assert text_of(segments) == expected


@pytest.mark.parametrize("case", ["thinking history", "reasoning_content", "tool results grouped",
                                  "consecutive assistants"])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_preserve_thinking_is_the_qwen3_6_templates(case, add_generation_prompt):
    messages, tools = CASES[case]
    segments = render_qwen3_5(messages, tools=tools, style=QWEN3_6, preserve_thinking=True,
                              add_generation_prompt=add_generation_prompt)
    expected = jinja("3.6", messages, tools, add_generation_prompt=add_generation_prompt, preserve_thinking=True)
    assert "<think>\nadd them\n</think>" in expected or case != "thinking history"
    assert text_of(segments) == expected


@pytest.mark.parametrize("style", [QWEN3_5, QWEN3_5_0_8B])
@pytest.mark.parametrize("case", ["thinking history", "reasoning_content", "tool results grouped",
                                  "consecutive assistants"])
def test_preserve_thinking_on_a_qwen3_5_template_is_the_qwen3_6_templates_text(style, case):
    """Qwen3.5's templates have no preserve_thinking; kept thinking (ms-swift's training default) is written as
    Qwen3.6's template writes it."""
    messages, tools = CASES[case]
    assert text_of(render_qwen3_5(messages, tools=tools, style=style, preserve_thinking=True)) == jinja(
        "3.6", messages, tools, preserve_thinking=True)


def test_style_of_the_templates():
    assert {name: style_of(text) for name, text in JINJA.items()} == STYLES
    assert DEFAULT_STYLE == QWEN3_5
    qwen3_vl = (resources.files("vlft.templates") / "official/qwen3_vl/chat_template.jinja").read_text()
    with pytest.raises(VlftError, match="not Qwen3.5-style"):
        style_of(qwen3_vl)
    unrecognised = JINJA["0.8b"].replace("enable_thinking is defined and enable_thinking is true", "force_thinking")
    assert style_of(unrecognised).thinking_default == DEFAULT_STYLE.thinking_default


# ---------------------------------------------------------------------------------------------------
# labels


def only_turn_trained(messages: list[Message], k: int) -> list[Message]:
    return [dataclasses.replace(m, loss=i == k) if m.role == "assistant" else m for i, m in enumerate(messages)]


@pytest.mark.parametrize("template", JINJA)
@pytest.mark.parametrize("case", ["text", "thinking history", "reasoning_content", "tool results grouped",
                                  "multi-step tools", "calls with content", "empty answer", "tools with empty system"])
@pytest.mark.parametrize("enable_thinking", [None, True, False])
def test_prompt_of_a_turn_is_the_templates_generation_prompt(template, case, enable_thinking):
    """Every answer after the last user query: the untrained text before it is the official render of the
    conversation up to it with add_generation_prompt=True; the rest of its turn through <|im_end|>\n is trained."""
    messages, tools = CASES[case]
    last_query = max(i for i, m in enumerate(messages) if m.role == "user")
    for k in range(last_query + 1, len(messages)):
        if messages[k].role != "assistant":
            continue
        segments = render_qwen3_5(only_turn_trained(messages, k), tools=tools, style=STYLES[template],
                                  enable_thinking=enable_thinking)
        first = next(i for i, s in enumerate(segments) if s.trained)
        prompt = text_of(segments[:first])
        (answer,) = trained_text(segments)
        full = jinja(template, messages, tools, enable_thinking=enable_thinking)
        assert full.startswith(prompt + answer) and answer.endswith("<|im_end|>\n")
        assert "<|im_start|>" not in answer
        expected_prompt = jinja(template, messages[:k], tools, add_generation_prompt=True,
                                enable_thinking=enable_thinking)
        if expected_prompt.endswith("<think>\n\n</think>\n\n") and not answer.startswith("<think>"):
            assert prompt == expected_prompt  # no reasoning in a non-thinking prompt
        elif expected_prompt.endswith("<think>\n"):
            assert prompt == expected_prompt
        else:  # reasoning under a non-thinking generation prompt: the whole <think> block is trained
            assert prompt == expected_prompt.removesuffix("<think>\n\n</think>\n\n")
            assert answer.startswith("<think>\n") and not answer.startswith("<think>\n\n</think>")


def test_history_turns_are_trained_after_the_bare_assistant_prompt():
    messages, _ = CASES["thinking history"]
    segments = render_qwen3_5(only_turn_trained(messages, 1), style=QWEN3_5)
    first = next(i for i, s in enumerate(segments) if s.trained)
    assert text_of(segments[:first]).endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert trained_text(segments) == ["2<|im_end|>\n"]  # its thinking is dropped, as the template drops it


def test_default_trains_every_answer_its_im_end_and_the_newline_after_it():
    messages, _ = CASES["thinking history"]
    segments = render_qwen3_5(messages, style=QWEN3_5)
    assert trained_text(segments) == ["2<|im_end|>\n", "2*3\n</think>\n\n6<|im_end|>\n"]
    assert segments[-1] == type(segments[-1])("\n", True)
    # --train_turn_separator false: the newline is not trained (the same text)
    untrained = render_qwen3_5(messages, style=QWEN3_5, train_turn_separator=False)
    assert trained_text(untrained) == ["2<|im_end|>", "2*3\n</think>\n\n6<|im_end|>"]
    assert text_of(untrained) == text_of(segments)


def test_ignore_empty_think():
    messages = [user("q"), assistant("A"), user("r"), assistant("B")]
    plain = render_qwen3_5(messages, style=QWEN3_5)
    assert trained_text(plain) == ["A<|im_end|>\n", "\n</think>\n\nB<|im_end|>\n"]
    ignored = render_qwen3_5(messages, style=QWEN3_5, ignore_empty_think=True)
    assert trained_text(ignored) == ["A<|im_end|>\n", "B<|im_end|>\n"]
    assert text_of(ignored) == text_of(plain)
    # a non-empty block stays trained, after the thinking prompt's "<think>\n"
    thought = render_qwen3_5([user("q"), assistant("<think>x</think>B")], style=QWEN3_5, ignore_empty_think=True)
    assert trained_text(thought) == ["x\n</think>\n\nB<|im_end|>\n"]
    # "all": everything trained but the empty block (ms-swift's all+ignore_empty_think) and the generation prompt
    everything = render_qwen3_5(messages, style=QWEN3_5, loss_scale="all", ignore_empty_think=True)
    assert [s.text for s in everything if not s.trained] == ["<think>\n\n</think>\n\n"]


def test_qwen3_5_templates_ignore_empty_think_unless_disabled():
    template = load_template("qwen3_5")
    messages = [user("q"), assistant("B")]
    assert trained_text(render(template, messages, style=QWEN3_5)) == ["B<|im_end|>\n"]
    assert trained_text(render(template, messages, style=QWEN3_5, disable_ignore_empty_think=True)) == [
        "\n</think>\n\nB<|im_end|>\n"]
    assert trained_text(render(template, messages, style=QWEN3_5, loss_scale="ignore_empty_think",
                               disable_ignore_empty_think=True)) == ["B<|im_end|>\n"]


def test_last_round_trains_the_answers_after_the_last_user_or_tool_message():
    messages, tools = CASES["multi-step tools"]
    assert trained_text(render_qwen3_5(messages, tools=tools, loss_scale="last_round")) == [
        "done\n</think>\n\nFound x.<|im_end|>\n"]
    messages, _ = CASES["consecutive assistants"]
    assert trained_text(render_qwen3_5(messages, style=QWEN3_5_0_8B, loss_scale="last_round")) == [
        "part one<|im_end|>\n", "<think>\nt\n</think>\n\npart two<|im_end|>\n"]


def test_a_messages_loss_overrides_the_loss_scale():
    messages = [user("q"), assistant("A", loss=True), user("r"), assistant("B", loss=False)]
    for loss_scale in ("default", "last_round"):
        assert trained_text(render_qwen3_5(messages, style=QWEN3_5_0_8B, loss_scale=loss_scale)) == ["A<|im_end|>\n"]


def test_all_trains_every_token_but_the_generation_prompt():
    messages, tools = CASES["tool results grouped"]
    segments = render_qwen3_5(messages, tools=tools, loss_scale="all", add_generation_prompt=True)
    assert [s.text for s in segments if not s.trained] == ["<|im_start|>assistant\n<think>\n"]


def test_template_dispatch_and_enable_thinking_defaults():
    messages = [user("q")]
    assert text_of(render(load_template("qwen3_5"), messages, add_generation_prompt=True)).endswith("<think>\n")
    assert text_of(render(load_template("qwen3_5"), messages, add_generation_prompt=True, style=QWEN3_5_0_8B)
                   ).endswith("</think>\n\n")
    assert text_of(render(load_template("qwen3_5_nothink"), messages, add_generation_prompt=True)
                   ).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert text_of(render(load_template("qwen3_5_nothink"), messages, add_generation_prompt=True,
                          enable_thinking=True)).endswith("assistant\n<think>\n")
    assert load_template("qwen3_5").image == "<|vision_start|><|image_pad|><|vision_end|>"


def test_parse_loss_scale():
    assert parse_loss_scale("default") == LossScale("default", False)
    assert parse_loss_scale("last_round+ignore_empty_think") == LossScale("last_round", True)
    assert parse_loss_scale("ignore_empty_think") == LossScale("default", True)
    assert parse_loss_scale("hermes") == LossScale("default", False, ("hermes",))  # ms-swift: default+hermes
    assert parse_loss_scale("last_round+react+ignore_empty_think") == LossScale("last_round", True, ("react",))
    with pytest.raises(VlftError, match="unknown --loss_scale 'hermes2'.*hermes, react"):
        parse_loss_scale("hermes2")
    with pytest.raises(VlftError, match="agentflan is not supported"):
        parse_loss_scale("agentflan")


# ---------------------------------------------------------------------------------------------------
# what cannot be rendered


def test_errors_name_the_field():
    with pytest.raises(DataError, match=r"messages\[1\].tool_calls\[0\].arguments: invalid JSON"):
        render_qwen3_5([user("q"), assistant("", tool_calls=[call("f", "{nope")], where="messages[1].content")])
    with pytest.raises(DataError, match=r"messages\[1\].tool_calls\[0\].arguments: expected an object"):
        render_qwen3_5([user("q"), assistant("", tool_calls=[call("f", "[1]")], where="messages[1].content")])
    with pytest.raises(DataError, match="system message cannot contain images"):
        render_qwen3_5([Message("system", "<image>"), user("q")])
    with pytest.raises(DataError, match="no user query"):
        render_qwen3_5([user("<tool_response>\nx\n</tool_response>"), assistant("a")])


@pytest.mark.parametrize("template, message, tools, field", [
    ("qwen3_vl", assistant("a", reasoning_content="r", where="messages[1].content"), None,
     r"messages\[1\].reasoning_content"),
    ("qwen2_5_vl", assistant("a", reasoning_content="r", where="messages[1].content"), None,
     r"messages\[1\].reasoning_content"),
])
def test_json_templates_refuse_what_they_cannot_render(template, message, tools, field):
    """Qwen3-VL's, Qwen2.5-VL's and Qwen2-VL's templates write no reasoning (test_hermes_tools.py: their tools)."""
    with pytest.raises(DataError, match=f"^{field}: the {template} template cannot render"):
        render(load_template(template), [user("q"), message], tools=tools)


@pytest.mark.parametrize("template", ["qwen2_vl", "qwen2_5_vl"])
def test_tool_results_without_tools_are_hermes_tool_responses(template):
    """Qwen2-VL's and Qwen2.5-VL's tool turns as ms-swift's hermes writes them with or without tools (its
    _format_tool_responses: a run of results as one user turn of <tool_response> items), the text written out here
    from its code; the default system prompt first, as ms-swift's template adds it."""
    messages = [user("q"), assistant("a"), Message("tool", "r1"), Message("tool", "r2"), assistant("b")]
    assert text_of(render(load_template(template), messages)) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nq<|im_end|>\n"
        "<|im_start|>assistant\na<|im_end|>\n<|im_start|>user\n<tool_response>\nr1\n</tool_response>\n"
        "<tool_response>\nr2\n</tool_response><|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n")


def test_style_is_hashable_and_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        QWEN3_5.thinking_default = False  # type: ignore[misc]
    assert len({QWEN3_5, TemplateStyle(True, False, "python")}) == 1


def test_an_openai_row_renders_as_the_official_template():
    from vlft.data.formats import to_sample

    messages = [{"role": "system", "content": "You are an agent."},
                {"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": "Where?"}]},
                {"role": "assistant", "content": "Checking.", "reasoning_content": "look it up",
                 "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {"q": "a", "k": 3}}}]},
                {"role": "tool", "content": "Paris"},
                {"role": "assistant", "content": "<think>\nfound\n</think>\n\nParis."}]
    sample = to_sample({"messages": messages, "tools": json.dumps(TOOLS)})
    segments = render(load_template("qwen3_5"), sample.messages, tools=sample.tools, style=QWEN3_5)
    expected, _ = render_jinja_template(conversations=[messages], tools=TOOLS, chat_template=JINJA["thinking"])
    assert text_of(segments) == expected[0]
