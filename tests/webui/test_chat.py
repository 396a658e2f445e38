"""The chat tab's conversation as an InferRequest, and the chatbot's view of it."""

from __future__ import annotations

import pytest

from vlft.data.template import load_template
from vlft.families import FAMILIES
from vlft.webui.chat import Turn, chat_request, infer_argv, split_media, thinking_switch


def test_uploads_split_into_images_and_videos():
    assert split_media(["/t/a.png", "/t/clip.mp4", "/t/b.JPG", "/t/c.webm"]) == (
        ["/t/a.png", "/t/b.JPG"], ["/t/clip.mp4", "/t/c.webm"])


def test_conversation_becomes_one_request_with_placeholders_in_order():
    turns = [Turn("user", "Compare.", images=["a.png", "b.png"]), Turn("assistant", "Red and blue."),
             Turn("user", "And this?", images=["c.png"], videos=["v.mp4"])]
    request = chat_request(turns)
    assert request.messages == [{"role": "user", "content": "<image><image>Compare."},
                                {"role": "assistant", "content": "Red and blue."},
                                {"role": "user", "content": "<image><video>And this?"}]
    assert (request.images, request.videos) == (["a.png", "b.png", "c.png"], ["v.mp4"])
    assert request.chat_template_kwargs is None


def test_thinking_switch_goes_to_the_template():
    assert chat_request([Turn("user", "hi")], thinking=False).chat_template_kwargs == {"enable_thinking": False}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_thinking_switch_only_for_hybrid_thinking_families(family):
    template = load_template(FAMILIES[family].template)
    assert thinking_switch(template) == family.startswith("qwen3_5")


def test_model_and_adapters_fields_become_infer_flags():
    assert infer_argv(" vlft/tiny-qwen3-vl ", "") == ["--model", "vlft/tiny-qwen3-vl"]
    assert infer_argv("", "out/ckpt-1\nout/ckpt-2") == ["--adapters", "out/ckpt-1", "out/ckpt-2"]


def test_chat_display_puts_media_before_the_text():
    from tests.webui.browser import skip_reason

    if skip_reason() and "gradio" in skip_reason():
        pytest.skip(skip_reason())
    from vlft.webui.chat_tab import chat_display

    shown = chat_display([Turn("user", "What is it?", images=["a.png"]), Turn("assistant", "")])
    assert shown == [{"role": "user", "content": {"path": "a.png"}}, {"role": "user", "content": "What is it?"},
                     {"role": "assistant", "content": ""}]
