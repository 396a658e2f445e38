"""Trainer callbacks: logging.jsonl (the last step always in it), and loss and lr plots at the end."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

LOG_FILE = "logging.jsonl"
# image name -> (logged key, y-axis label, add a smoothed curve): noisy per-step series get one, sparse or exact
# ones don't
PLOTS = {"train_loss": ("loss", "training loss", True), "eval_loss": ("eval_loss", "eval loss", False),
         "learning_rate": ("learning_rate", "learning rate", False),
         "tokens_per_second": ("tokens_per_second", "tokens / s", True)}
SMOOTHING = 0.9


class JsonlLogCallback(TrainerCallback):
    """Append each log (`{"step", "epoch", **logs}`) to a JSON-lines file; the last step is always logged."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def on_step_end(self, args, state, control, **kwargs):
        # transformers logs every logging_steps steps only (DefaultFlowCallback, run before this one): a last
        # step off that grid (max_steps 10, logging_steps 4) would leave the final loss out of the log and plots.
        if args.logging_strategy == "steps" and state.global_step >= state.max_steps:
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")


def read_log_series(path: Path, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` in a logging.jsonl file, in file order."""
    steps, values = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line) if line.strip() else {}
        if isinstance(record.get(key), (int, float)):
            steps.append(record["step"])
            values.append(float(record[key]))
    return steps, values


def smooth(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """TensorBoard's exponential moving average, debiased so the first points are not pulled to zero."""
    out, last = [], 0.0
    for i, value in enumerate(values, start=1):
        last = weight * last + (1 - weight) * value
        out.append(last / (1 - weight**i))
    return out


def plot_series(steps: list[int], values: list[float], title: str, path: Path, smoothed: bool = False,
                ylabel: str | None = None):
    """Write one value-against-step line plot as a PNG (Agg canvas: no display, no pyplot global state); returns
    the matplotlib Figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(8, 5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    smoothed = smoothed and len(values) > 1
    marker = "." if len(values) < 20 else None
    axes.plot(steps, values, color="#1f77b4", alpha=0.4 if smoothed else 1.0, marker=marker,
              label="raw" if smoothed else None)
    if smoothed:
        axes.plot(steps, smooth(values), color="#1f77b4", label=f"smoothed (EMA {SMOOTHING})")
        axes.legend()
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole: no tick at step 2.5
    axes.set(title=title, xlabel="step", ylabel=ylabel or title)
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    return figure


class PlotCallback(TrainerCallback):
    """At the end of training, plot the series of `run_dir/logging.jsonl` into `run_dir/images/*.png`."""

    def __init__(self, run_dir: Path | str):
        self.run_dir = Path(run_dir)

    def on_train_end(self, args, state, control, **kwargs):
        log_file = self.run_dir / LOG_FILE
        if not state.is_world_process_zero or not log_file.is_file():
            return
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            # The run itself succeeded; missing plots are not worth failing it over.
            logger.warning("matplotlib is not installed: no plots written to %s", self.run_dir / "images")
            return
        images = self.run_dir / "images"
        images.mkdir(exist_ok=True)
        for name, (key, ylabel, smoothed) in PLOTS.items():
            steps, values = read_log_series(log_file, key)
            if values:
                plot_series(steps, values, name, images / f"{name}.png", smoothed, ylabel)


def reporting_integrations(report_to: list[str]) -> list[str]:
    """--report_to with `all` expanded as transformers expands it (every installed integration)."""
    if report_to == ["all"]:
        from transformers.integrations import get_available_reporting_integrations

        return list(get_available_reporting_integrations())
    return list(report_to)


def tensorboard_callbacks(report_to: list[str], logging_dir: str | None) -> list[TrainerCallback]:
    """With --logging_dir and --report_to tensorboard: transformers' TensorBoard callback writing there (transformers
    5 has no logging_dir argument; its callback reads TENSORBOARD_LOGGING_DIR from the environment, where the run's
    arguments do not belong). Nothing otherwise: --report_to tensorboard alone is transformers' own callback, in
    the run dir's runs/."""
    if not logging_dir or "tensorboard" not in reporting_integrations(report_to):
        return []
    from transformers.integrations import TensorBoardCallback

    callback = TensorBoardCallback()
    callback.logging_dir = str(Path(logging_dir).expanduser())  # read when training begins, on the main process
    return [callback]
