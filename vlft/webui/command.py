"""The training tab's form as a `vlft sft` command line, checked by the CLI's own parser before it runs."""

from __future__ import annotations

import contextlib
import io
import shlex
import sys
from dataclasses import dataclass

from vlft.arguments import SftArguments
from vlft.cli.parsing import parse_args
from vlft.errors import VlftError

PROG = "vlft sft"


@dataclass
class TrainForm:
    """What the training tab asks for; `extra_flags` holds any other `vlft sft` flags, as typed on a shell."""

    model: str
    dataset: str  # one or more, separated by spaces (quoted when a path holds one)
    train_type: str = "lora"
    learning_rate: float | None = None
    num_train_epochs: float = 3.0
    max_steps: int = -1
    max_length: int | None = None
    lora_rank: int = 8
    lora_alpha: int = 32
    packing: bool = False
    freeze_vit: bool = True
    output_dir: str = "output"
    extra_flags: str = ""


def _number(value: float) -> str:
    """A form's number as a flag value: 3.0 -> 3, 1e-4 stays 0.0001."""
    return str(int(value)) if float(value).is_integer() and abs(value) >= 1 else repr(float(value))


def sft_argv(form: TrainForm) -> list[str]:
    """The `vlft sft` flags for a form: its fields, then the extra flags (which win, being later)."""
    model, datasets = form.model.strip(), shlex.split(form.dataset)
    argv = (["--model", model] if model else []) + (["--dataset", *datasets] if datasets else [])
    argv += ["--train_type", form.train_type]
    if form.learning_rate:
        argv += ["--learning_rate", _number(form.learning_rate)]
    if form.max_steps and form.max_steps > 0:
        argv += ["--max_steps", str(int(form.max_steps))]
    else:
        argv += ["--num_train_epochs", _number(form.num_train_epochs)]
    if form.max_length:
        argv += ["--max_length", str(int(form.max_length))]
    if form.train_type == "lora":
        argv += ["--lora_rank", str(int(form.lora_rank)), "--lora_alpha", str(int(form.lora_alpha))]
    argv += ["--packing", str(form.packing).lower(), "--freeze_vit", str(form.freeze_vit).lower(),
             "--output_dir", form.output_dir.strip()]
    return argv + shlex.split(form.extra_flags)


def checked_arguments(argv: list[str]) -> SftArguments:
    """The arguments `vlft sft argv` would run with; VlftError lists every problem the CLI would report."""
    # argparse itself exits on a flag without its value (`--dataset` last): its message becomes the error here,
    # where an exit would end the web UI's worker instead of reporting the form's problem.
    usage = io.StringIO()
    try:
        with contextlib.redirect_stderr(usage):
            return parse_args(SftArguments, argv, PROG)
    except SystemExit:
        raise VlftError(usage.getvalue().strip().splitlines()[-1]) from None


def shown_command(argv: list[str]) -> str:
    """The command as a user would type it."""
    return f"{PROG} {shlex.join(argv)}"


def process_command(argv: list[str]) -> list[str]:
    """The process to start: this Python's `vlft` CLI (works without the console script on PATH)."""
    return [sys.executable, "-m", "vlft.cli.main", "sft", *argv]
