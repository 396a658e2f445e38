"""What a user sees (issue 21): the summary printed before training, a console free of known library
warnings, readable plots with the last step logged, and files that keep the user's umask with an adapter that
names the model as the user gave it. One tiny `vlft sft` run (in-process, as tests/cli/test_sft_cli.py runs
them) feeds the end-to-end checks; the summary's arithmetic is checked on hand-made counts and against
transformers' and accelerate's own step counting."""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import REPO
from vlft.cli.main import KNOWN_WARNINGS, main
from vlft.export.checkpoint import apply_umask
from vlft.train.summary import (GIB, DataCounts, MemoryEstimate, activation_bytes, data_counts, format_duration,
                                memory_estimate, optimizer_steps, steps_per_epoch, summary_lines, training_seconds)

EXAMPLES = REPO / "examples" / "data"
UMASK = 0o022


# --- the summary's arithmetic -------------------------------------------------------------------------------

def _sample(ids, labels, line=None):
    return SimpleNamespace(input_ids=ids, labels=labels, source="d.jsonl" if line else None, line=line)


def test_data_counts_by_hand():
    a = _sample([1, 9, 9, 2], [-100, -100, 5, 6], line=1)  # two image pads (9), two labelled
    b = _sample([1, 2, 3, 4, 5, 6], [-100] * 3 + [1, 2, 3], line=7)
    c = _sample([1, 2], [-100, 4], line=9)
    packed = data_counts([a, b, c], held_out=2, skipped=3, rows=[[b, c], [a]], vision_ids={9})
    assert packed == DataCounts(samples=3, held_out=2, skipped=3, rows=2, packed=True, tokens=12, labelled=6,
                                vision_tokens=2, square_sum=16 + 36 + 4, longest=6, longest_at="d.jsonl:7",
                                longest_row=8)
    unpacked = data_counts([a, b, c], held_out=0, skipped=0, rows=[a, b, c], vision_ids={9})
    assert (unpacked.rows, unpacked.packed, unpacked.longest_row) == (3, False, 6)


@pytest.mark.parametrize("rows, batch, accum, epochs, max_steps", [
    (10, 3, 2, 1.5, -1), (7, 1, 4, 3.0, -1), (5, 2, 1, 1.0, -1), (9, 2, 2, 3.0, 7), (1, 4, 8, 2.0, -1)])
def test_step_count_matches_transformers_trainer(rows, batch, accum, epochs, max_steps, tmp_path):
    """transformers' own count for the same rows (one process), from the Trainer's dataloader."""
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    data = [{"input_ids": torch.tensor([1, 2]), "labels": torch.tensor([1, 2])}] * rows
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=batch,
                             gradient_accumulation_steps=accum, num_train_epochs=epochs, max_steps=max_steps,
                             report_to=[])
    trainer = Trainer(model=model, args=args, train_dataset=data)
    values = trainer.set_initial_training_values(args, trainer.get_train_dataloader())
    per_epoch, total = values[1], values[-1]
    assert steps_per_epoch(rows, batch, accum, world_size=1) == per_epoch
    assert optimizer_steps(per_epoch, epochs, max_steps) == total


@pytest.mark.parametrize("rows, batch, world", [(10, 2, 2), (11, 3, 4), (3, 1, 8)])
def test_step_count_over_processes_matches_accelerate_sharding(rows, batch, world):
    """Each process's batches: accelerate's BatchSamplerShard (even batches), as the Trainer's dataloader has."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler, SequentialSampler

    sampler = BatchSampler(SequentialSampler(range(rows)), batch, drop_last=False)
    batches = len(BatchSamplerShard(sampler, num_processes=world, process_index=0))
    for accum in (1, 2, 3):
        assert steps_per_epoch(rows, batch, accum, world) == max(-(-batches // accum), 1)


def test_memory_of_lora_full_and_zero_by_hand():
    # LoRA: 1 GiB of bf16 weights + 8 MiB of fp32 adapters (2M elements); torch's AdamW keeps two moments of
    # the adapters' size and dtype.
    lora = memory_estimate(GIB + 8 * 2**20, 8 * 2**20, 2 * 2**20, activations=100)
    assert lora == MemoryEstimate(weights=GIB + 8 * 2**20, gradients=8 * 2**20, optimizer=16 * 2**20,
                                  activations=100)
    assert lora.total == GIB + 32 * 2**20 + 100
    # Full bf16 training of 512M elements (1 GiB) under ZeRO-2 on 4 processes: DeepSpeed's fp32 master weights
    # and moments (12 bytes an element) and the bf16 gradients sharded, the weights not.
    full = memory_estimate(GIB, GIB, GIB // 2, activations=0, zero_stage=2, world_size=4)
    assert (full.weights, full.gradients, full.optimizer) == (GIB, GIB // 4, 6 * GIB // 4)
    assert memory_estimate(GIB, GIB, GIB // 2, 0, zero_stage=3, world_size=4).weights == GIB // 4
    assert memory_estimate(GIB, GIB, GIB // 2, 0, zero_stage=0, world_size=4).optimizer == 6 * GIB


def test_activations_by_hand():
    # 10 tokens, hidden 4, intermediate 8, 3 layers, vocab 100, bf16: a layer keeps 10 x (32 + 32) x 2 = 1280
    # bytes; the loss 10 x 100 x (2 + 8) = 10000, chunked by 4 positions 4 x 100 x (4 + 2) + 10 x 4 x 2 = 2480.
    assert activation_bytes(10, 4, 8, 3, 100, 2, checkpointing=False, chunked_loss=True, chunk=4) == 3 * 1280 + 2480
    assert activation_bytes(10, 4, 8, 3, 100, 2, checkpointing=True, chunked_loss=True,
                            chunk=4) == 3 * 10 * 4 * 2 + 1280 + 2480
    assert activation_bytes(10, 4, 8, 3, 100, 2, checkpointing=True, chunked_loss=False) == 240 + 1280 + 10000


def test_time_only_with_a_known_peak():
    assert training_seconds(6e15, world_size=2, peak_flops=1e15, mfu=0.3) == pytest.approx(10.0)
    assert training_seconds(6e15, world_size=1, peak_flops=None) is None
    assert [format_duration(s) for s in (42, 12 * 60 + 10, 3 * 3600 + 5 * 60)] == ["42 s", "12 min", "3 h 05 min"]


def test_summary_lines_name_every_count():
    counts = DataCounts(samples=180, held_out=2, skipped=3, rows=12, packed=True, tokens=44_000, labelled=5_210,
                        vision_tokens=0, square_sum=0, longest=3_100, longest_at="train.jsonl:17", longest_row=4_000)
    memory = MemoryEstimate(weights=8 * GIB, gradients=GIB // 4, optimizer=GIB // 2, activations=GIB)
    data, plan, peak, time = summary_lines(counts, 4096, 1, 2, 1, per_epoch=6, steps=18, max_steps=-1,
                                           memory=memory, device=None, device_memory=None, seconds=None, flops=1e15)
    for text in ("180 training samples", "2 held out", "3 bad line(s) skipped", "12 packed rows of at most 4,096",
                 "(90% full)", "44,000 tokens", "5,210 of them trained", "longest sample 3,100 tokens",
                 "(train.jsonl:17)"):
        assert text in data, text
    assert plan.startswith("steps: 18 optimizer steps (3 epochs x 6 per epoch = 12 rows")
    assert "about 9.75 GiB per process" in peak
    assert time == "time: unknown on CPU"
    gpu = summary_lines(counts, 4096, 1, 2, 1, 6, 18, -1, memory, "NVIDIA H100 80GB HBM3", 80 * GIB, 5400.0, 1e18)
    assert "of 80.0 GiB on NVIDIA H100" in gpu[2] and gpu[3].startswith("time: about 1 h 30 min")


# --- plots --------------------------------------------------------------------------------------------------

def test_plot_has_labels_a_legend_and_whole_steps(tmp_path):
    pytest.importorskip("matplotlib")
    from vlft.train.callbacks import plot_series

    figure = plot_series([1, 2, 3], [2.0, 1.5, 1.2], "train_loss", tmp_path / "loss.png", smoothed=True,
                         ylabel="training loss")
    axes = figure.axes[0]
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("step", "training loss")
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["raw", "smoothed (EMA 0.9)"]
    ticks = [t for t in axes.get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)
    lr = plot_series([1, 2, 3], [1e-4, 5e-5, 0.0], "learning_rate", tmp_path / "lr.png", ylabel="learning rate")
    assert lr.axes[0].get_ylabel() == "learning rate" and lr.axes[0].get_legend() is None


# --- files keep the user's umask ----------------------------------------------------------------------------

def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def test_apply_umask_gives_mkdtemp_dirs_and_private_files_the_umask_modes(tmp_path):
    old = os.umask(0o027)
    try:
        staging = Path(tempfile.mkdtemp(dir=tmp_path))  # 0700
        (staging / "sub").mkdir()
        weights = staging / "sub" / "model.safetensors"
        weights.write_bytes(b"x")
        weights.chmod(0o600)
        apply_umask(staging)
    finally:
        os.umask(old)
    assert _modes(staging) == {".": 0o750, "sub": 0o750, "sub/model.safetensors": 0o640}


# --- one tiny run, end to end -------------------------------------------------------------------------------

class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def console_warnings(argv: list[str]) -> list[warnings.WarningMessage]:
    """Run `vlft argv` in-process; the warnings a console would print (Python's default filters: deprecations
    only from __main__, everything else once per place)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__", append=True)
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.filterwarnings("ignore", category=category, append=True)
        warnings.simplefilter("default", append=True)
        assert main(argv) == 0
    return caught


def deprecations(caught: list[warnings.WarningMessage]) -> list[str]:
    return [f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}" for w in caught
            if issubclass(w.category, (FutureWarning, DeprecationWarning, PendingDeprecationWarning))]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, vlft_cache):
    """`vlft sft` on the tiny Qwen3-VL under umask 022: 3 steps logged every 2, 2 of 8 samples held out.
    Returns (run dir, the summary lines logged, the console warnings)."""
    out = tmp_path_factory.mktemp("user-view") / "out"
    handler = _Lines()
    logging.getLogger("vlft").addHandler(handler)
    old = os.umask(UMASK)
    try:
        caught = console_warnings([
            "sft", "--model", "vlft/tiny-qwen3-vl", "--dataset", f"{EXAMPLES / 'train.jsonl'}#8",
            "--split_dataset_ratio", "0.25", "--max_steps", "3", "--logging_steps", "2", "--save_steps", "100",
            "--eval_steps", "100", "--packing", "true", "--max_length", "400", "--packing_length", "1024",
            "--image_max_token_num", "64",
            "--chunked_loss", "true", "--report_to", "none", "--output_dir", str(out)])
    finally:
        os.umask(old)
        logging.getLogger("vlft").removeHandler(handler)
    (run_dir,) = [p for p in out.iterdir() if p.name.startswith("v")]
    return run_dir, handler.lines, caught


def test_summary_is_printed_before_training(tiny_run):
    _, lines, _ = tiny_run
    summary = {line.split(":", 1)[0]: line for line in lines
               if line.startswith(("data:", "steps:", "peak memory:", "time:"))}
    assert list(summary) == ["data", "steps", "peak memory", "time"]
    assert "6 training samples, 2 held out for eval" in summary["data"]
    # rows of --packing_length (ms-swift's), samples cut at --max_length
    assert "packed rows of at most 1,024 tokens" in summary["data"] and "longest sample" in summary["data"]
    assert summary["steps"].startswith("steps: 3 optimizer steps (--max_steps;")
    assert "GiB per process" in summary["peak memory"]
    if not torch.cuda.is_available():
        assert summary["time"] == "time: unknown on CPU"
    # Printed before the first step's log (the trainable-parameter line comes before it too).
    assert lines.index(summary["data"]) > next(i for i, line in enumerate(lines) if line.startswith("trainable"))


def test_the_last_step_is_logged_and_plotted(tiny_run):
    run_dir, _, _ = tiny_run
    records = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 3]  # 3 is off the logging_steps grid
    assert (run_dir / "images" / "train_loss.png").is_file()


def test_sft_console_has_no_known_library_warnings(tiny_run):
    _, _, caught = tiny_run
    assert deprecations(caught) == []
    # PEFT looks the adapter's base up by name at each save: it must find the local dir, not ask a hub.
    assert not [w for w in caught if "Could not find a config file" in str(w.message)]


def test_known_warnings_are_matched_precisely():
    """A filter hides its own message from its own module, not the same text from elsewhere."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["--version"])  # installs nothing: filters come with a command
        from vlft.cli.main import quiet_known_warnings

        quiet_known_warnings()
        for category, message, module, _ in KNOWN_WARNINGS:
            text = message.replace("\\", "") + " and will be removed in v6."
            warnings.warn_explicit(text, category, "library.py", 1, module=module.replace("\\", ""))
            warnings.warn_explicit(text, category, "other.py", 1, module="vlft.train.model")
            warnings.warn_explicit("another " + text, category, "library.py", 1, module=module.replace("\\", ""))
    shown = sorted((w.filename, str(w.message).startswith("another")) for w in caught)
    assert shown == sorted([("other.py", False), ("library.py", True)] * len(KNOWN_WARNINGS))


def test_checkpoint_files_keep_the_umask_and_name_the_users_model(tiny_run):
    run_dir, _, _ = tiny_run
    checkpoint = run_dir / "checkpoint-3"
    modes = _modes(checkpoint)
    assert modes.pop(".") == 0o777 & ~UMASK
    assert modes["adapter_model.safetensors"] == 0o666 & ~UMASK
    assert set(modes.values()) == {0o666 & ~UMASK}, modes
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "vlft/tiny-qwen3-vl"


def test_merged_folder_keeps_the_umask_and_export_and_infer_print_no_known_warnings(tiny_run, tmp_path):
    run_dir, _, _ = tiny_run
    checkpoint = run_dir / "checkpoint-3"
    old = os.umask(UMASK)
    try:
        merged = tmp_path / "merged"
        exported = console_warnings(["export", "--adapters", str(checkpoint), "--merge_lora", "true",
                                     "--output_dir", str(merged)])
        rows = tmp_path / "rows.jsonl"
        rows.write_text(json.dumps({"messages": [{"role": "user", "content": "Where is Hangzhou?"},
                                                 {"role": "assistant", "content": "Zhejiang."}]}) + "\n")
        answered = console_warnings(["infer", "--adapters", str(checkpoint), "--val_dataset", str(rows),
                                     "--max_new_tokens", "2", "--result_path", str(tmp_path / "result.jsonl")])
    finally:
        os.umask(old)
    modes = _modes(merged)
    assert modes.pop(".") == 0o777 & ~UMASK
    assert "model.safetensors" in modes and set(modes.values()) == {0o666 & ~UMASK}, modes
    assert deprecations(exported) == [] and deprecations(answered) == []


def test_a_hub_id_stays_the_adapters_base(tmp_path):
    """The checkpoint's adapter_config.json names the run's --model, whatever dir PEFT loaded the base from."""
    from vlft.train.checkpointing import write_checkpoint_extras

    saved = {"base_model_name_or_path": "/home/u/.cache/modelscope/Qwen/Qwen3-VL-4B-Instruct", "r": 8}
    (tmp_path / "adapter_config.json").write_text(json.dumps(saved))
    write_checkpoint_extras(tmp_path, SimpleNamespace(save_pretrained=lambda path: None),
                            {"model": "Qwen/Qwen3-VL-4B-Instruct"})
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config == {"base_model_name_or_path": "Qwen/Qwen3-VL-4B-Instruct", "r": 8}


def test_vlft_enables_checkpointing_without_a_deprecation_warning(tiny_model_dir):
    """vlft's own call uses transformers' current name; only the libraries' calls are left to KNOWN_WARNINGS."""
    from vlft.train.model import enable_gradient_checkpointing, load_model

    model = load_model(tiny_model_dir("qwen3_vl"), torch.float32, "sdpa")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enable_gradient_checkpointing(model, llm=True, vit=False)
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []
    assert model.model.language_model.layers[0].gradient_checkpointing
    assert not model.model.visual.blocks[0].gradient_checkpointing
