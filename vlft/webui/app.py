"""The web UI's page: a chat tab and a training tab (Gradio Blocks), and its launch."""

from __future__ import annotations

import gradio as gr

from vlft.webui.arguments import WebUiArguments
from vlft.webui.chat import ChatModel
from vlft.webui.chat_tab import build_chat_tab
from vlft.webui.train_tab import build_train_tab


def build_app(model: str | None = None) -> gr.Blocks:
    """The page; `model` fills both tabs' model fields."""
    with gr.Blocks(title="vlft", analytics_enabled=False) as app:
        gr.Markdown("# vlft web UI")
        with gr.Tab("Chat", elem_id="tab-chat"):
            build_chat_tab(ChatModel(), model)
        with gr.Tab("Train", elem_id="tab-train"):
            build_train_tab(model)
    return app


def launch(app: gr.Blocks, args: WebUiArguments, block: bool = True) -> str:
    """Serve the page as the arguments say; returns its local URL (block=False: serve from a thread)."""
    # ssr_mode off: server-side rendering would start a Node.js server beside Python's.
    _, url, share_url = app.launch(server_name=args.host, server_port=args.port or None, share=args.share,
                                   prevent_thread_lock=True, ssr_mode=False, quiet=True)
    print(f"vlft web UI at {url}" + (f" and {share_url}" if share_url else "") + " (Ctrl-C stops)", flush=True)
    if block:
        app.block_thread()  # until Ctrl-C
    return url
