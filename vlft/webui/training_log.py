"""What the training tab reads from a run: its dir under --output_dir and the losses in its logging.jsonl."""

from __future__ import annotations

import json
import re
from pathlib import Path

from vlft.train.callbacks import LOG_FILE

_VERSION_DIR = re.compile(r"^v\d+-")
SERIES = {"loss": "train loss", "eval_loss": "eval loss"}  # logged key -> name on the plot


def version_dirs(output_dir: Path) -> set[str]:
    """Names of the `v{N}-{time}` run dirs in an output dir (none when it does not exist)."""
    if not output_dir.is_dir():
        return set()
    return {p.name for p in output_dir.iterdir() if p.is_dir() and _VERSION_DIR.match(p.name)}


def new_run_dir(output_dir: Path, before: set[str]) -> Path | None:
    """The run dir `vlft sft` made since `before` was taken (the newest, if several), or None yet."""
    made = sorted(version_dirs(output_dir) - before, key=lambda name: int(name[1:].split("-")[0]))
    return output_dir / made[-1] if made else None


def loss_points(log_file: Path) -> list[tuple[int, float, str]]:
    """(step, value, series) of every loss in a logging.jsonl that is still being written: a line cut off by
    the writer is skipped, as is a record without a loss (the final train_runtime summary)."""
    if not log_file.is_file():
        return []
    points = []
    for line in log_file.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        for key, series in SERIES.items():
            if isinstance(record, dict) and isinstance(record.get(key), (int, float)):
                points.append((int(record["step"]), float(record[key]), series))
    return points


def run_log_file(run_dir: Path) -> Path:
    return run_dir / LOG_FILE
