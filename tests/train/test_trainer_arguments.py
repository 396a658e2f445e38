"""transformers TrainingArguments made from vlft's: the NaN/inf log filter is off unless asked for (its check
reads every step's loss back to the host, a stall in a host-bound GPU step); ms-swift's flag turns it on. On a
GPU the batches are copied without a host sync."""

from __future__ import annotations

import torch

from vlft.arguments import SftArguments
from vlft.cli.parsing import parse_args
from vlft.train.sft import trainer_arguments


def made(tmp_path, *argv: str, cuda: bool = False):
    args = parse_args(SftArguments, ["--model", "vlft/tiny-qwen3-vl", "--dataset", "train.jsonl", *argv], "test")
    return trainer_arguments(args, tmp_path, None, torch.float32, cuda=cuda, has_eval=False)


def test_nan_inf_filter_is_off_by_default_and_the_flag_turns_it_on(tmp_path):
    assert made(tmp_path).logging_nan_inf_filter is False
    assert made(tmp_path, "--logging_nan_inf_filter", "true").logging_nan_inf_filter is True
    assert made(tmp_path, "--logging_steps", "7").logging_steps == 7


def test_batches_reach_the_gpu_from_pinned_memory_without_a_sync(tmp_path):
    on_gpu = made(tmp_path, cuda=True)
    assert on_gpu.accelerator_config.non_blocking is True and on_gpu.dataloader_pin_memory is True
    assert made(tmp_path).accelerator_config.non_blocking is False
