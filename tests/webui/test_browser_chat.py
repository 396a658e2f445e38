"""The chat tab in headless Chromium: load the tiny Qwen3-VL, send a message with an image, find the answer that
InferEngine gives for the same request on the page."""

from __future__ import annotations

from tests.conftest import REPO
from tests.webui.browser import screenshot_path

IMAGE = REPO / "examples/data/images/red.png"
QUESTION = "What colour is this image?"
MAX_NEW_TOKENS = 8


def expected_answer() -> str:
    """The engine's greedy answer, loaded and asked outside the web UI."""
    from vlft.infer.engine import InferEngine
    from vlft.infer.protocol import InferRequest, RequestConfig

    engine = InferEngine(model="vlft/tiny-qwen3-vl")
    request = InferRequest(messages=[{"role": "user", "content": "<image>" + QUESTION}], images=[str(IMAGE)])
    return engine.infer([request], RequestConfig(max_tokens=MAX_NEW_TOKENS))[0].choices[0].message.content


def compact(text: str) -> str:
    """The text without whitespace (the page lays out and trims what the model wrote)."""
    return "".join(text.split())


def test_chat_answers_a_message_with_an_image(page, tmp_path):
    page.locator("#chat-model textarea").fill("vlft/tiny-qwen3-vl")
    page.locator("#chat-load").click()
    page.get_by_text("Loaded vlft/tiny-qwen3-vl").wait_for()
    tokens = page.locator("#chat-max-new-tokens input[type=number]")
    tokens.fill(str(MAX_NEW_TOKENS))
    tokens.press("Enter")
    page.locator("#chat-input input[type=file]").set_input_files(str(IMAGE))
    page.locator("#chat-input img").first.wait_for()  # the upload's thumbnail: the file reached the server
    page.locator("#chat-input textarea").fill(QUESTION)
    page.locator("#chat-input textarea").press("Enter")
    answer = compact(expected_answer())
    assert answer
    page.wait_for_function("([sel, want]) => document.querySelector(sel).innerText.replace(/\\s+/g, '')"
                           ".includes(want)", arg=["#chat-box", answer])
    assert page.locator("#chat-box img").count() >= 1  # the image is shown in the conversation
    page.screenshot(path=str(screenshot_path(tmp_path, "webui_chat.png")))
