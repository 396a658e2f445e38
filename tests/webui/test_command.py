"""The training tab's form as a `vlft sft` command line, checked by the CLI's parser."""

from __future__ import annotations

import shlex
import sys

import pytest

from vlft.cli.parsing import parse_args
from vlft.arguments import SftArguments
from vlft.errors import VlftError
from vlft.webui.command import TrainForm, checked_arguments, process_command, sft_argv, shown_command


def test_form_becomes_the_sft_flags():
    form = TrainForm(model="vlft/tiny-qwen3-vl", dataset="data/a.jsonl 'my data/b.jsonl#5'", learning_rate=2e-4,
                     max_steps=3, max_length=2048, lora_rank=16, lora_alpha=64, packing=True, freeze_vit=False,
                     output_dir="out", extra_flags="--logging_steps 1 --report_to none")
    assert sft_argv(form) == [
        "--model", "vlft/tiny-qwen3-vl", "--dataset", "data/a.jsonl", "my data/b.jsonl#5", "--train_type", "lora",
        "--learning_rate", "0.0002", "--max_steps", "3", "--max_length", "2048", "--lora_rank", "16",
        "--lora_alpha", "64", "--packing", "true", "--freeze_vit", "false", "--output_dir", "out",
        "--logging_steps", "1", "--report_to", "none"]


def test_defaults_leave_learning_rate_and_length_to_sft_and_full_drops_lora_flags():
    argv = sft_argv(TrainForm(model="m", dataset="d.jsonl", train_type="full", num_train_epochs=1.5))
    assert argv == ["--model", "m", "--dataset", "d.jsonl", "--train_type", "full", "--num_train_epochs", "1.5",
                    "--packing", "false", "--freeze_vit", "true", "--output_dir", "output"]
    args = checked_arguments(argv)
    assert (args.learning_rate, args.num_train_epochs, args.max_length) == (1e-5, 1.5, None)


def test_checked_arguments_are_what_the_cli_parses():
    argv = sft_argv(TrainForm(model="vlft/tiny-qwen3-vl", dataset="d.jsonl", max_steps=3, lora_rank=4))
    assert checked_arguments(argv) == parse_args(SftArguments, argv, "vlft sft")


@pytest.mark.parametrize("form, problems", [
    (TrainForm(model="", dataset=""), ["--model is required", "--dataset is required"]),
    (TrainForm(model="m", dataset="d", packing=True), ["--packing true needs --max_length"]),
    (TrainForm(model="m", dataset="d", extra_flags="--lora_rnak 4"), ["did you mean --lora_rank?"]),
    (TrainForm(model="m", dataset="d", extra_flags="--use_liger_kernel true"), ["is not supported"]),
    (TrainForm(model="m", dataset="d", extra_flags="--max_length"), ["--max_length: expected one argument"]),
])
def test_problems_are_the_clis(form, problems):
    with pytest.raises(VlftError) as error:
        checked_arguments(sft_argv(form))
    assert all(problem in str(error.value) for problem in problems), str(error.value)


def test_shown_command_reads_back_as_the_same_flags():
    argv = sft_argv(TrainForm(model="m", dataset="'a b.jsonl'", output_dir="runs/x y"))
    shown = shown_command(argv)
    assert shown.startswith("vlft sft --model m ")
    assert shlex.split(shown)[2:] == argv


def test_process_runs_this_pythons_cli():
    assert process_command(["--model", "m"]) == [sys.executable, "-m", "vlft.cli.main", "sft", "--model", "m"]
