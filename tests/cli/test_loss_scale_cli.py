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


def test_data_check_and_encode_show_the_weights(tmp_path, vlft_cache, capsys):
    """`vlft data check` counts the weighted tokens; `vlft data encode` writes each token's weight beside its label."""
    tokens = "<tool_call>\n<function=get_weather>\n<parameter=city>\nHangzhou\n</parameter>\n</function>\n</tool_call>"
    assert main(["data", "check", "--model", "vlft/tiny-qwen3.5", "--dataset", TOOLS, "--loss_scale", "hermes"]) == 0
    assert "weighted tokens (--loss_scale): " in capsys.readouterr().out
    out = tmp_path / "encoded.jsonl"
    assert main(["data", "encode", "--model", "vlft/tiny-qwen3.5", "--dataset", TOOLS, "--loss_scale", "hermes",
                 "--output", str(out)]) == 0
    first = json.loads(out.read_text().splitlines()[0])
    assert len(first["loss_scale"]) == len(first["input_ids"]) == len(first["labels"])
    from vlft.model.hub import resolve_model_dir
    from vlft.model.loading import load_processor

    tokenizer = load_processor(resolve_model_dir("vlft/tiny-qwen3.5", use_hf=False, cache_root=vlft_cache)).tokenizer
    doubled = tokenizer.decode([t for t, w in zip(first["input_ids"], first["loss_scale"]) if w == 2.0])
    assert doubled == tokens  # the tools example's first call, as Qwen3.5's template writes it
