"""Qwen3.5 and Qwen3.5-MoE end to end through the CLI: `vlft sft` (packed rows through the Gated DeltaNet
layers) -> `vlft infer --adapters` -> `vlft export --merge_lora` -> `vlft infer --model MERGED`: the same
greedy answers, and the merged checkpoint keeps the base's key set, its multi-token-prediction (`mtp.*`) and
vision tensors byte for byte; an unknown model type is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from vlft.cli.main import main

EXAMPLES = REPO / "examples" / "data"
MEDIA = ["--image_max_token_num", "16", "--image_min_token_num", "4"]


def stored_tensors(model_dir: Path) -> dict[str, bytes]:
    """Every tensor of a model dir's safetensors files as its raw bytes (dtype and shape included)."""
    from safetensors import safe_open

    out = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                out[key] = (str(tensor.dtype), tuple(tensor.shape),
                            tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("tiny", ["vlft/tiny-qwen3.5", "vlft/tiny-qwen3.5-moe"])
def test_sft_infer_export_infer_keeps_answers_and_the_base_tensors(tiny, tmp_path, vlft_cache):
    from vlft.model.hub import resolve_model_dir

    out = tmp_path / "run"
    assert main(["sft", "--model", tiny, "--dataset", str(EXAMPLES / "train.jsonl"), "--split_dataset_ratio", "0.3",
                 "--max_steps", "2", "--learning_rate", "1e-2", "--packing", "true", "--max_length", "1024",
                 "--logging_steps", "1",
                 *MEDIA, "--report_to", "none", "--output_dir", str(out)]) == 0
    run = next(out.iterdir())
    checkpoint = sorted(run.glob("checkpoint-*"))[-1]
    logged = [json.loads(line) for line in open(run / "logging.jsonl") if '"loss"' in line]
    assert logged and all(entry["loss"] == entry["loss"] for entry in logged)  # trained, no NaN

    first = tmp_path / "adapter.jsonl"
    assert main(["infer", "--adapters", str(checkpoint), "--load_data_args", "true", "--max_new_tokens", "6",
                 "--result_path", str(first)]) == 0
    merged = tmp_path / "merged"
    assert main(["export", "--adapters", str(checkpoint), "--merge_lora", "true", "--output_dir", str(merged)]) == 0
    second = tmp_path / "merged.jsonl"
    assert main(["infer", "--model", str(merged), "--val_dataset", str(run / "val_dataset.jsonl"), *MEDIA,
                 "--max_new_tokens", "6", "--result_path", str(second)]) == 0
    answers = [[json.loads(line)["response"] for line in open(p)] for p in (first, second)]
    assert answers[0] == answers[1] and len(answers[0]) == 3

    base = stored_tensors(resolve_model_dir(tiny, use_hf=False, cache_root=vlft_cache))
    exported = stored_tensors(merged)
    assert exported.keys() == base.keys()
    kept = [k for k in base if k.startswith(("mtp.", "model.visual."))]
    assert any(k.startswith("mtp.") for k in kept) and any(k.startswith("model.visual.") for k in kept)
    assert all(exported[k] == base[k] for k in kept)
    # LoRA was merged somewhere: some language-model weight changed.
    assert any(exported[k] != base[k] for k in base if k.startswith("model.language_model.layers."))


@pytest.mark.slow
def test_a_full_fine_tuning_checkpoint_keeps_the_base_key_set(tmp_path, vlft_cache):
    """The checkpoint of a full fine-tune is the model users deploy: the `mtp.*` head transformers did not load
    is copied into it from the base, byte for byte."""
    from vlft.model.hub import resolve_model_dir

    out = tmp_path / "run"
    assert main(["sft", "--model", "vlft/tiny-qwen3.5", "--dataset", f"{EXAMPLES / 'train.jsonl'}#2",
                 "--train_type", "full", "--max_steps", "1", *MEDIA, "--report_to", "none",
                 "--output_dir", str(out)]) == 0
    checkpoint = sorted(next(out.iterdir()).glob("checkpoint-*"))[-1]
    base = stored_tensors(resolve_model_dir("vlft/tiny-qwen3.5", use_hf=False, cache_root=vlft_cache))
    saved = stored_tensors(checkpoint)
    assert saved.keys() == base.keys()
    assert all(saved[k] == base[k] for k in base if k.startswith("mtp."))


def test_the_tools_example_checks_on_qwen3_5_and_qwen3_vl_refuses_only_reasoning(vlft_cache, capsys):
    """examples/data/tools.jsonl (OpenAI tool_calls, ms-swift's tool_call / tool_response roles, a JSON-string
    tools column, reasoning_content) encodes for Qwen3.5; Qwen3-VL's template writes the tools (hermes) and
    reports the line with reasoning_content."""
    data = str(EXAMPLES / "tools.jsonl")
    assert main(["data", "check", "--model", "vlft/tiny-qwen3.5", "--dataset", data]) == 0
    assert "lines: 3 (3 ok, 0 bad" in capsys.readouterr().out
    assert main(["data", "check", "--model", "vlft/tiny-qwen3-vl", "--dataset", data]) == 1
    out = capsys.readouterr().out
    assert "lines: 3 (2 ok, 1 bad" in out
    assert f"{data}:3: messages[1].reasoning_content: the qwen3_vl template cannot render reasoning_content" in out


def test_an_unknown_model_type_is_refused_by_name(tmp_path, capsys):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen4_exp"}))
    assert main(["data", "check", "--model", str(model), "--dataset", str(EXAMPLES / "train.jsonl")]) != 0
    err = capsys.readouterr().err
    assert "unsupported 'qwen4_exp'" in err and "hyper-connections" in err and "qwen3_5_moe" in err


def test_the_qwen3_5_template_on_another_familys_model_names_its_chat_template(vlft_cache, tiny_model_dir, capsys):
    """--template qwen3_5 on a Qwen3-VL model: its chat template is not Qwen3.5-style, said with the model dir."""
    code = main(["data", "check", "--model", "vlft/tiny-qwen3-vl", "--template", "qwen3_5",
                 "--dataset", str(EXAMPLES / "train.jsonl")])
    assert code != 0
    err = capsys.readouterr().err
    assert f"{tiny_model_dir('qwen3_vl')}: chat template: the chat template is not Qwen3.5-style" in err
