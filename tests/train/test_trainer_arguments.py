"""transformers TrainingArguments made from vlft's: the NaN/inf log filter is off unless asked for (its check
reads every step's loss back to the host, a stall in a host-bound GPU step); ms-swift's flag turns it on."""

from __future__ import annotations

import torch

from vlft.arguments import SftArguments
from vlft.cli.parsing import parse_args
from vlft.train.sft import trainer_arguments


def made(tmp_path, *argv: str):
    args = parse_args(SftArguments, ["--model", "vlft/tiny-qwen3-vl", "--dataset", "train.jsonl", *argv], "test")
    return trainer_arguments(args, tmp_path, None, torch.float32, cuda=False, has_eval=False)


def test_nan_inf_filter_is_off_by_default_and_the_flag_turns_it_on(tmp_path):
    assert made(tmp_path).logging_nan_inf_filter is False
    assert made(tmp_path, "--logging_nan_inf_filter", "true").logging_nan_inf_filter is True
    assert made(tmp_path, "--logging_steps", "7").logging_steps == 7
