"""The chat tab: load a model (and adapters), then talk to it with images and videos, answers streamed."""

from __future__ import annotations

import dataclasses

import gradio as gr

from vlft.errors import VlftError
from vlft.infer.protocol import RequestConfig
from vlft.webui.chat import ChatModel, Turn, chat_request, split_media


def chat_display(turns: list[Turn]) -> list[dict]:
    """The chatbot's messages for a conversation: each medium its own bubble, before its turn's text."""
    shown = []
    for turn in turns:
        shown += [{"role": turn.role, "content": {"path": path}} for path in turn.images + turn.videos]
        if turn.text or turn.role == "assistant":
            shown.append({"role": turn.role, "content": turn.text})
    return shown


def build_chat_tab(chat: ChatModel, model: str | None) -> None:
    """The tab's components and events (inside a gr.Blocks)."""
    with gr.Row():
        model_box = gr.Textbox(value=model, label="Model", placeholder="model dir, hub id or vlft/tiny-qwen3-vl",
                               scale=3, elem_id="chat-model")
        adapters_box = gr.Textbox(label="Adapters (optional)", placeholder="LoRA checkpoint dir(s)", scale=3,
                                  elem_id="chat-adapters")
        load_button = gr.Button("Load", variant="primary", scale=1, elem_id="chat-load")
    status = gr.Markdown("No model loaded.", elem_id="chat-status")
    chatbot = gr.Chatbot(label="Chat", height=420, render_markdown=False, elem_id="chat-box")
    message = gr.MultimodalTextbox(placeholder="Message (attach images or videos)", file_count="multiple",
                                   file_types=["image", "video"], show_label=False, elem_id="chat-input")
    with gr.Row():
        max_new_tokens = gr.Slider(1, 4096, value=512, step=1, label="max_new_tokens", elem_id="chat-max-new-tokens")
        temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature (0: greedy)")
        thinking = gr.Checkbox(value=True, label="thinking", visible=False, elem_id="chat-thinking")
        clear_button = gr.Button("Clear", scale=0)
    turns = gr.State([])

    def load(model_path: str, adapters: str):
        try:
            name = chat.load(model_path, adapters)
        except VlftError as e:
            return f"**error:** {e}", gr.update(visible=False)
        return (f"Loaded **{name}** ({chat.family_name})", gr.update(visible=chat.has_thinking_switch))

    def answer(sent: dict, history: list[Turn], max_tokens: float, temp: float, think: bool):
        if chat.engine is None:
            raise gr.Error("Load a model first.")
        images, videos = split_media(list(sent.get("files") or []))
        history = [*history, Turn("user", sent.get("text") or "", images, videos)]
        request = chat_request(history, think if chat.has_thinking_switch else None)
        reply = Turn("assistant", "")
        yield gr.update(value=None), chat_display([*history, reply]), history
        config = RequestConfig(max_tokens=int(max_tokens), temperature=float(temp))
        try:
            for text in chat.stream(request, config):
                reply = dataclasses.replace(reply, text=text)
                yield gr.update(), chat_display([*history, reply]), history
        except VlftError as e:
            raise gr.Error(str(e))
        yield gr.update(), chat_display([*history, reply]), [*history, reply]

    load_button.click(load, [model_box, adapters_box], [status, thinking])
    message.submit(answer, [message, turns, max_new_tokens, temperature, thinking], [message, chatbot, turns])
    clear_button.click(lambda: ([], []), None, [chatbot, turns])
