"""Scale-out on CPU through the real console script: a two-node launch on one host (two launchers,
node ranks 0 and 1, gloo, 127.0.0.1), and ZeRO-3 on the tiny MoE with expert LoRA over a dataset whose
ranks get different modalities (text only, image, video) in the same step, then resume and merge.

Without a GPU one launcher of the two nodes, and each launcher of the ZeRO-3 test, runs in this process through the
console script's entry point (tests/conftest.py: torchrun and its workers are processes of their own either
way)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from tests.cli.test_sft_cli import EXAMPLES, VLFT, only_run_dir, read_log

TEXT_ROW = {"messages": [{"role": "user", "content": "Where is the capital of Zhejiang?"},
                         {"role": "assistant", "content": "The capital of Zhejiang is Hangzhou."}]}
IMAGE_ROW = {"messages": [{"role": "user", "content": "<image>What colour is this image?"},
                          {"role": "assistant", "content": "red"}],
             "images": [str(EXAMPLES / "images" / "red.png")]}
VIDEO_ROW = {"messages": [{"role": "user", "content": "<video>Describe the video."},
                          {"role": "assistant", "content": "A blue bar moves from left to right."}],
             "videos": [str(EXAMPLES / "videos" / "bar.mp4")]}


def launch_env(port: int, **topology: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NPROC_PER_NODE", "NNODES", "NODE_RANK")}
    return {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "CUDA_VISIBLE_DEVICES": "",
            "IMAGE_MAX_TOKEN_NUM": "16", "VIDEO_MAX_TOKEN_NUM": "16", "FPS_MAX_FRAMES": "4", **topology}


@pytest.mark.slow
def test_two_nodes_on_one_host_train_and_save_one_checkpoint(tmp_path, vlft_cache, vlft_console):
    argv = [VLFT, "sft", "--model", "vlft/tiny-qwen3-vl", "--dataset", f"{EXAMPLES / 'train.jsonl'}#4",
            "--num_train_epochs", "1", "--save_steps", "100", "--logging_steps", "1", "--padding_free", "true",
            "--report_to", "none", "--output_dir", str(tmp_path / "output")]
    envs = [launch_env(29631, NPROC_PER_NODE="1", NNODES="2", NODE_RANK=str(rank)) for rank in (0, 1)]
    # node 1's launcher in a process of its own, node 0's meanwhile (in this process without a GPU)
    node_1 = subprocess.Popen(argv, env=envs[1], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        code_0, output_0 = vlft_console(argv, envs[0], tmp_path)
        output_1 = node_1.communicate(timeout=600)[0]
    finally:
        node_1.kill()
    for code, output in ((code_0, output_0), (node_1.returncode, output_1)):
        assert code == 0, output[-3000:]
    run_dir = only_run_dir(tmp_path / "output")  # both nodes wrote into one run
    # 4 rows, one per rank per step: 2 steps prove a world of two processes (one alone would take 4).
    assert [e["step"] for e in read_log(run_dir) if "loss" in e] == [1, 2]
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-2"]
    assert (run_dir / "checkpoint-2" / "adapter_model.safetensors").is_file()


def mixed_rows(path: Path) -> Path:
    """8 rows, one epoch of 4 steps on 2 ranks: the image and the video rows meet text-only rows (or each
    other) in a step, so every arrangement gives the ranks different vision calls. In the order seed 42 gives
    (steps of rows 6+3, 0+7, 2+1, 4+5) the video meets a text-only rank before checkpoint-2, the image one
    after it (a step the resumed run replays)."""
    rows = [TEXT_ROW] * 4 + [IMAGE_ROW] + [TEXT_ROW] * 2 + [VIDEO_ROW]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_zero3_moe_expert_lora_with_text_only_ranks_resumes_and_merges(tmp_path, vlft_cache, vlft_console):
    data = mixed_rows(tmp_path / "mixed.jsonl")

    def sft(output_dir: Path, *extra: str) -> None:
        argv = [VLFT, "sft", "--model", "vlft/tiny-qwen3-vl-moe", "--dataset", str(data), "--num_train_epochs", "1",
                "--save_steps", "2", "--logging_steps", "1", "--padding_free", "true", "--deepspeed", "zero3",
                "--router_aux_loss_coef", "0.01", "--report_to", "none", "--output_dir", str(output_dir), *extra]
        code, output = vlft_console(argv, launch_env(29632, NPROC_PER_NODE="2"), tmp_path)
        assert code == 0, output[-3000:]

    sft(tmp_path / "whole")
    run_dir = only_run_dir(tmp_path / "whole")
    losses = {e["step"]: e["loss"] for e in read_log(run_dir) if "loss" in e}
    assert sorted(losses) == [1, 2, 3, 4]
    for name in ("adapter_model.safetensors", "adapter_config.json", "args.json", "chat_template.jinja",
                 "tokenizer.json"):  # what the seed command's ZeRO-2 test checks, here under ZeRO-3
        assert (run_dir / "checkpoint-4" / name).is_file(), name
    adapter = json.loads((run_dir / "checkpoint-4" / "adapter_config.json").read_text())
    assert any(name.endswith("mlp.experts.down_proj") for name in adapter["target_parameters"])
    # torchrun's workers get the resolved dir as --model_dir; what they record is the user's --model
    assert adapter["base_model_name_or_path"] == "vlft/tiny-qwen3-vl-moe"
    for args_json in (run_dir / "args.json", run_dir / "checkpoint-4" / "args.json"):
        assert json.loads(args_json.read_text())["model"] == "vlft/tiny-qwen3-vl-moe", args_json

    resumed_dir = tmp_path / "resumed"
    import shutil

    shutil.copytree(run_dir, resumed_dir, ignore=shutil.ignore_patterns("checkpoint-4", "logging.jsonl"))
    sft(resumed_dir, "--add_version", "false", "--resume_from_checkpoint", str(resumed_dir / "checkpoint-2"))
    again = {e["step"]: e["loss"] for e in read_log(resumed_dir) if "loss" in e}
    for step in (3, 4):
        assert again[step] == pytest.approx(losses[step], abs=1e-4), step

    code, output = vlft_console([VLFT, "export", "--adapters", str(run_dir / "checkpoint-4"), "--merge_lora", "true"],
                                {**os.environ, "VLFT_CACHE_HOME": str(vlft_cache)}, tmp_path)
    assert code == 0, output[-3000:]
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(run_dir / "checkpoint-4-merged")
    assert type(model).__name__ == "Qwen3VLMoeForConditionalGeneration"
    assert torch.isfinite(model.model.language_model.layers[0].mlp.experts.gate_up_proj).all()
