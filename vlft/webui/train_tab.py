"""The training tab: a form for the main `vlft sft` flags, the command it runs, its log and a live loss curve."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from vlft.errors import VlftError
from vlft.webui.command import TrainForm, checked_arguments, sft_argv, shown_command
from vlft.webui.train import TrainRun, start_run

POLL_S = 1.0


class CurrentRun:
    """The tab's one run at a time (shared by every browser tab of this web UI)."""

    run: TrainRun | None = None


def loss_frame(points: list[tuple[int, float, str]]) -> pd.DataFrame:
    return pd.DataFrame(points, columns=["step", "loss", "series"])


def build_train_tab(model: str | None) -> None:
    """The tab's components and events (inside a gr.Blocks)."""
    current = CurrentRun()
    with gr.Row():
        model_box = gr.Textbox(value=model, label="Model", placeholder="model dir, hub id or vlft/tiny-qwen3-vl",
                               elem_id="train-model")
        dataset = gr.Textbox(label="Dataset", placeholder="files, folders or ID[:SUBSET][#N], space-separated",
                             elem_id="train-dataset")
        train_type = gr.Radio(["lora", "full"], value="lora", label="train_type")
    with gr.Row():
        learning_rate = gr.Number(0, label="learning_rate (0: 1e-4 for lora, 1e-5 for full)")
        epochs = gr.Number(3, label="num_train_epochs")
        max_steps = gr.Number(-1, precision=0, label="max_steps (> 0 overrides epochs)", elem_id="train-max-steps")
        max_length = gr.Number(0, precision=0, label="max_length (0: no limit)")
    with gr.Row():
        lora_rank = gr.Number(8, precision=0, label="lora_rank")
        lora_alpha = gr.Number(32, precision=0, label="lora_alpha")
        packing = gr.Checkbox(False, label="packing (needs max_length)")
        freeze_vit = gr.Checkbox(True, label="freeze_vit")
        output_dir = gr.Textbox("output", label="output_dir", elem_id="train-output-dir")
    extra = gr.Textbox(label="Other vlft sft flags", placeholder="--logging_steps 1 --report_to none",
                       elem_id="train-extra")
    with gr.Row():
        preview_button = gr.Button("Show command")
        start_button = gr.Button("Start", variant="primary", elem_id="train-start")
        stop_button = gr.Button("Stop", variant="stop", interactive=False, elem_id="train-stop")
    command = gr.Textbox(label="Command", lines=2, max_lines=6, interactive=False, buttons=["copy"],
                         elem_id="train-command")
    status = gr.Markdown("No run started.", elem_id="train-status")
    # No title or height: with either, Gradio 6.31 draws the axes of an update but not its line.
    plot = gr.LinePlot(loss_frame([]), x="step", y="loss", color="series", label="loss", elem_id="train-loss")
    log = gr.Textbox(label="Log", lines=14, max_lines=14, autoscroll=True, interactive=False, elem_id="train-log")
    timer = gr.Timer(POLL_S, active=False)
    fields = [model_box, dataset, train_type, learning_rate, epochs, max_steps, max_length, lora_rank, lora_alpha,
              packing, freeze_vit, output_dir, extra]

    def form(*values) -> TrainForm:
        (model_path, data, kind, lr, n_epochs, steps, length, rank, alpha, pack, freeze, out, flags) = values
        return TrainForm(model=model_path or "", dataset=data or "", train_type=kind, learning_rate=lr,
                         num_train_epochs=n_epochs if n_epochs is not None else 3.0,
                         max_steps=int(steps) if steps is not None else -1, max_length=length,
                         lora_rank=int(rank or 8), lora_alpha=int(alpha or 32), packing=pack, freeze_vit=freeze,
                         output_dir=out or "output", extra_flags=flags or "")

    def preview(*values):
        try:
            argv = sft_argv(form(*values))
        except ValueError as e:  # unbalanced quotes in the dataset or the other flags
            return gr.update(), f"**invalid:** {e}"
        try:
            checked_arguments(argv)
        except VlftError as e:
            return shown_command(argv), f"**invalid:** {e}"
        return shown_command(argv), "The command is valid."

    def start(*values):
        if current.run is not None and current.run.process.running:
            raise gr.Error("A run is going on: stop it first.")
        try:
            current.run = start_run(form(*values))
        except (VlftError, ValueError) as e:  # ValueError: unbalanced quotes in the flags
            return gr.update(), f"**invalid:** {e}", gr.update(), gr.update()
        return (current.run.command, "running", gr.Timer(active=True),
                gr.update(interactive=True))

    def refresh():
        run = current.run
        if run is None:
            return gr.update(), gr.update(), gr.update(), gr.Timer(active=False), gr.update(interactive=False)
        running = run.process.running
        if not running:
            run.process.wait()  # the output's last lines read before they are shown for the last time
        where = f" in `{run.run_dir}`" if run.run_dir else ""
        return (run.process.log(), f"**{run.process.status()}**{where}", loss_frame(run.losses()),
                gr.Timer(active=running), gr.update(interactive=running))

    def stop():
        if current.run is not None:
            current.run.stop()
        return refresh()

    preview_button.click(preview, fields, [command, status])
    start_button.click(start, fields, [command, status, timer, stop_button])
    timer.tick(refresh, None, [log, status, plot, timer, stop_button])
    stop_button.click(stop, None, [log, status, plot, timer, stop_button])
