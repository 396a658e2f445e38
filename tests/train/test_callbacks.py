"""Run callbacks and atomic checkpoints driven by a real transformers Trainer on a tiny model: logging.jsonl,
plots, checkpoints staged and renamed into place with their extras (processor, args.json)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from transformers import TrainerState

from vlft.arguments import SftArguments
from vlft.arguments import public_args
from vlft.train.callbacks import JsonlLogCallback, PlotCallback, read_log_series, smooth
from vlft.train.checkpointing import AtomicCheckpoints, write_checkpoint_extras


class _Rows(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        row = (torch.arange(12) * (index + 1)) % 64
        return {"input_ids": row, "labels": row}


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 4-step Trainer run with all three callbacks: (run dir, tokenizer, sft args)."""
    from transformers import Trainer, TrainingArguments

    from vlft.model.tokenizer import build_qwen_tokenizer

    run_dir = tmp_path_factory.mktemp("run") / "v0-20260101-000000"
    run_dir.mkdir()
    tokenizer = build_qwen_tokenizer()
    sft_args = SftArguments(model="vlft/tiny-qwen3-vl", dataset=["train.jsonl"], hub_token="hf_secret")
    args = TrainingArguments(output_dir=str(run_dir), use_cpu=True, max_steps=4, per_device_train_batch_size=2,
                             learning_rate=1e-2, logging_steps=1, save_steps=2, eval_strategy="steps", eval_steps=2,
                             metric_for_best_model="eval_loss", greater_is_better=False, report_to=[],
                             disable_tqdm=True)
    callbacks = [JsonlLogCallback(run_dir / "logging.jsonl"), PlotCallback(run_dir)]

    class AtomicTrainer(AtomicCheckpoints, Trainer):
        pass

    trainer = AtomicTrainer(model=_tiny_llama(), args=args, train_dataset=_Rows(), eval_dataset=_Rows(),
                            callbacks=callbacks)
    trainer.checkpoint_extras = lambda d: write_checkpoint_extras(d, tokenizer, public_args(sft_args))
    trainer.train()
    return run_dir, tokenizer, sft_args


def test_logging_jsonl_has_one_line_per_log(trained_run):
    run_dir, _, _ = trained_run
    records = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and "learning_rate" in r and r["epoch"] > 0 for r in train)
    assert [r["step"] for r in records if "eval_loss" in r] == [2, 4]
    assert "train_runtime" in records[-1] and records[-1]["step"] == 4


def test_plots_are_valid_pngs(trained_run):
    pytest.importorskip("matplotlib")
    run_dir, _, _ = trained_run
    images = run_dir / "images"
    assert sorted(p.name for p in images.iterdir()) == ["eval_loss.png", "learning_rate.png", "train_loss.png"]
    for path in images.iterdir():
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 100


def test_checkpoints_hold_args_and_processor(trained_run):
    from transformers import AutoTokenizer

    run_dir, tokenizer, sft_args = trained_run
    for step in (2, 4):
        checkpoint = run_dir / f"checkpoint-{step}"
        written = json.loads((checkpoint / "args.json").read_text())
        assert "hub_token" not in written and written["model"] == sft_args.model
        assert written["dataset"] == ["train.jsonl"]
        assert (checkpoint / "tokenizer_config.json").is_file() and (checkpoint / "model.safetensors").is_file()
    assert not (run_dir / ".saving").exists() or not any((run_dir / ".saving").iterdir())
    state = json.loads((run_dir / "checkpoint-4" / "trainer_state.json").read_text())
    evals = {e["step"]: e["eval_loss"] for e in map(json.loads, open(run_dir / "logging.jsonl")) if "eval_loss" in e}
    best_step = min(evals, key=evals.get)
    assert state["best_model_checkpoint"] == str(run_dir / f"checkpoint-{best_step}")  # the published path
    reloaded = AutoTokenizer.from_pretrained(run_dir / "checkpoint-2")
    text = "<|im_start|>user\nWhere is Hangzhou?<|im_end|>"
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_plot_of_handwritten_log_includes_tokens_per_second(tmp_path):
    pytest.importorskip("matplotlib")
    lines = [{"step": 1, "loss": 2.0, "learning_rate": 1e-4, "tokens_per_second": 900.0},
             {"step": 2, "loss": 1.5, "learning_rate": 1e-4, "tokens_per_second": 1100.0},
             {"step": 2, "train_runtime": 3.0}]
    (tmp_path / "logging.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    PlotCallback(tmp_path).on_train_end(None, TrainerState(), None)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        "learning_rate.png", "tokens_per_second.png", "train_loss.png"]
    assert read_log_series(tmp_path / "logging.jsonl", "tokens_per_second") == ([1, 2], [900.0, 1100.0])


def test_only_the_main_process_writes(tmp_path):
    state = TrainerState(is_world_process_zero=False, global_step=3)
    JsonlLogCallback(tmp_path / "logging.jsonl").on_log(None, state, None, logs={"loss": 1.0})
    assert not (tmp_path / "logging.jsonl").exists()
    (tmp_path / "logging.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    PlotCallback(tmp_path).on_train_end(None, state, None)
    assert not (tmp_path / "images").exists()


def test_smooth_is_a_debiased_moving_average():
    assert smooth([3.0, 3.0, 3.0]) == pytest.approx([3.0, 3.0, 3.0])
    # by hand, weight 0.5: 0.5 / 0.5 = 1; (0.25 + 1) / 0.75 = 5/3
    assert smooth([1.0, 2.0], weight=0.5) == pytest.approx([1.0, 5 / 3])
