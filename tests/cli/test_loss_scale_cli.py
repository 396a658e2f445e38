"""`vlft sft --loss_scale hermes` end to end (examples/data/tools.jsonl on the tiny Qwen3.5): the weights reach the
loss by both paths (the whole logits on the CPU by default, the chunked loss with --chunked_loss true), which give
the same first loss, above the unweighted one (the calls' tokens count twice); --sequence_parallel_size refuses it."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO
from vlft.cli.main import main

TOOLS = str(REPO / "examples" / "data" / "tools.jsonl")


def first_loss(tmp_path, name: str, *extra: str) -> float:
    out = tmp_path / name
    assert main(["sft", "--model", "vlft/tiny-qwen3.5", "--dataset", TOOLS, "--max_steps", "1",
                 "--per_device_train_batch_size", "3", "--logging_steps", "1", "--image_max_token_num", "16",
                 "--save_strategy", "no", "--report_to", "none", "--output_dir", str(out), *extra]) == 0
    run = next(out.iterdir())
    return [json.loads(line) for line in open(run / "logging.jsonl") if '"loss"' in line][0]["loss"]


def test_hermes_weights_reach_the_loss_by_both_paths(tmp_path, vlft_cache):
    plain = first_loss(tmp_path, "plain")
    whole = first_loss(tmp_path, "whole", "--loss_scale", "hermes")
    chunked = first_loss(tmp_path, "chunked", "--loss_scale", "hermes", "--chunked_loss", "true")
    assert whole == pytest.approx(chunked, rel=1e-4)
    assert whole > plain * 1.05


def test_sequence_parallel_refuses_weighted_tokens(tmp_path, vlft_cache, capsys):
    assert main(["sft", "--model", "vlft/tiny-qwen3.5", "--dataset", TOOLS, "--loss_scale", "last_round+hermes",
                 "--sequence_parallel_size", "2", "--output_dir", str(tmp_path)]) != 0
    assert "--loss_scale last_round+hermes weighs tokens" in capsys.readouterr().err
