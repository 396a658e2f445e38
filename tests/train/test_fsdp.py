"""`--fsdp` (FSDP2 through transformers' Trainer) on CPU with gloo: two processes give the losses of one process
on the same global batch, LoRA and full fine-tuning of packed rows of the tiny Qwen3-VL (gradient checkpointing
and the frozen ViT: the defaults); a checkpoint resumes to the same curve and merges with `vlft export`; the
settings' checks and the --deepspeed + --fsdp error.

The two-process runs share one torchrun launch (tests/train/fsdp_worker.py; one per test run under pytest-xdist too:
two_processes.run_once); the one-process runs (no FSDP, the ground truth) train in this process meanwhile. The
ground truth takes the global batch of 2 rows as 2 accumulated micro-batches of 1 row: the same rows in the same
order as rank 0 and rank 1 take them (the data loader deals batches of 1 row to the ranks in turn). LoRA dropout is
off: each rank's dropout masks are drawn from its own copy of the seeded generator, so with dropout the runs differ
by design.

Tolerance: everything is float32; the runs differ only in the order of sums (the loss over two halves of the
global batch, the gradients reduce-scattered rather than accumulated), about 1e-7 relative per sum. Measured over
3 AdamW steps: 2e-7 relative on the losses; 1e-5 leaves room for other machines' kernels while any real difference
(another row, a gradient not averaged over ranks, a shard not updated) moves the losses by 1e-3 or more.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.two_processes import TwoProcessLaunch, run_once
from vlft.cli.main import main
from vlft.errors import VlftError
from vlft.families import get_family
from vlft.train.fsdp import resolve_fsdp

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("fsdp_worker.py")
TOLERANCE = 1e-5


def sft_argv(model_dir: Path) -> list[str]:
    return ["--model", "vlft/tiny-qwen3-vl", "--model_dir", str(model_dir),
            "--dataset", str(REPO / "examples" / "data" / "train.jsonl"), "--packing", "true", "--max_length", "160",
            "--max_steps", "3", "--save_strategy", "no", "--logging_steps", "1", "--learning_rate", "1e-3",
            "--lr_scheduler_type", "constant", "--lora_dropout", "0", "--image_max_token_num", "16",
            "--report_to", "none", "--dataloader_num_workers", "0"]


def logged(run_dir: Path, key: str) -> list[float]:
    lines = [json.loads(line) for line in open(run_dir / "logging.jsonl")]
    return [entry[key] for entry in lines if "loss" in entry]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """name -> run dir: the FSDP runs (lora, full, resumed; two processes) and the one-process ground truth
    (lora_1, full_1). Under pytest-xdist one worker makes them and the others read them (run_once): the dirs are
    shared, so tests only read them."""
    out = run_once(tmp_path_factory, "fsdp", lambda out: launch_and_ground_truth(out, tiny_model_dir))
    return {name: out / name for name in ("lora", "full", "resumed", "lora_1", "full_1")}


def launch_and_ground_truth(out: Path, tiny_model_dir) -> None:
    """The torchrun launch (fsdp_worker.py) writing OUT/lora, OUT/full and OUT/resumed, and meanwhile the
    one-process runs OUT/lora_1 and OUT/full_1."""
    argv = sft_argv(tiny_model_dir("qwen3_vl"))
    with TwoProcessLaunch(WORKER, [str(out), *argv, "--fsdp", "fsdp2"], cwd=out) as launch:
        for name, extra in (("lora_1", []), ("full_1", ["--train_type", "full"])):
            assert main(["sft", *argv, *extra, "--gradient_accumulation_steps", "2", "--output_dir",
                         str(out / name), "--add_version", "false"]) == 0
        launch.finish(timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("train_type", ["lora", "full"])
def test_two_processes_give_the_losses_of_one(runs, train_type):
    sharded, single = runs[train_type], runs[f"{train_type}_1"]
    expected = logged(single, "loss")
    assert len(expected) == 3 and expected[-1] < expected[0]  # it learns: a frozen model would fail below
    assert logged(sharded, "loss") == pytest.approx(expected, rel=TOLERANCE)
    assert logged(sharded, "grad_norm") == pytest.approx(logged(single, "grad_norm"), rel=TOLERANCE)
    checkpoint = sharded / "checkpoint-3"
    assert (checkpoint / "pytorch_model_fsdp.bin").is_file() and (checkpoint / "optimizer.bin").is_file()
    # The weights a checkpoint holds are whole (FULL_STATE_DICT), as the one-process run's.
    weights = "adapter_model.safetensors" if train_type == "lora" else "model.safetensors"
    ours, theirs = load_file(checkpoint / weights), load_file(single / "checkpoint-3" / weights)
    assert ours.keys() == theirs.keys()
    # AdamW's update lr * m / sqrt(v) turns summation-order noise in a near-zero gradient into up to ~lr of change:
    # measured 4e-6 at most (full fine-tuning, one of 70 tensors); 1e-5 absolute allows that, not a missed update.
    assert all(torch.allclose(ours[k], theirs[k], rtol=1e-4, atol=1e-5) for k in ours)


@pytest.mark.slow
def test_a_checkpoint_resumes_to_the_same_curve(runs):
    whole, resumed = logged(runs["lora"], "loss"), logged(runs["resumed"], "loss")
    assert len(resumed) == 1  # step 3 only
    assert resumed[0] == pytest.approx(whole[2], rel=TOLERANCE)
    assert resumed[0] == pytest.approx(logged(runs["lora_1"], "loss")[2], rel=TOLERANCE)


@pytest.mark.slow
def test_merge_lora_exports_an_fsdp_checkpoint(runs, tiny_model_dir, tmp_path):
    # A copy of the checkpoint: the export writes beside it, and the run dirs may be shared with other workers.
    checkpoint = shutil.copytree(runs["lora"] / "checkpoint-3", tmp_path / "checkpoint-3")
    assert main(["export", "--adapters", str(checkpoint), "--merge_lora", "true"]) == 0
    merged = load_file(checkpoint.parent / "checkpoint-3-merged" / "model.safetensors")
    base = load_file(tiny_model_dir("qwen3_vl") / "model.safetensors")
    adapter = load_file(checkpoint / "adapter_model.safetensors")
    name = "model.language_model.layers.0.self_attn.q_proj"
    a, b = (adapter[f"base_model.model.{name}.lora_{x}.weight"] for x in "AB")
    assert b.abs().max() > 0  # trained: the merge below changes the weight
    scale = 32 / 8  # --lora_alpha / --lora_rank (the defaults)
    torch.testing.assert_close(merged[f"{name}.weight"], base[f"{name}.weight"] + scale * b @ a)


def test_deepspeed_and_fsdp_together_is_an_argument_error(capsys):
    assert main(["sft", "--model", "vlft/tiny-qwen3-vl", "--dataset", "x.jsonl", "--deepspeed", "zero2",
                 "--fsdp", "fsdp2", "--lora_rank", "0"]) == 2
    message = capsys.readouterr().err
    assert "--deepspeed zero2 and --fsdp fsdp2: choose one" in message
    assert "--lora_rank must be positive" in message  # listed with the other argument problems


def test_builtin_preset_and_the_family_blocks():
    settings = resolve_fsdp("fsdp2", None)
    config = settings.training_config(get_family("qwen3_vl").block_classes)
    assert config["version"] == 2 and config["reshard_after_forward"] is True
    assert config["state_dict_type"] == "FULL_STATE_DICT"
    assert config["transformer_layer_cls_to_wrap"] == ["Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock"]


@pytest.mark.parametrize("fsdp, extra, expected", [
    ("shard_grad_op offload", None, {"reshard_after_forward": False, "cpu_offload": True}),
    ("full_shard auto_wrap", '{"fsdp_reshard_after_forward": false}', {"reshard_after_forward": False}),
    ('{"fsdp": "full_shard offload", "fsdp_config": {"fsdp_version": 2}}', None, {"cpu_offload": True,
                                                                                  "reshard_after_forward": True}),
])
def test_option_words_json_and_fsdp_config(fsdp, extra, expected):
    config = resolve_fsdp(fsdp, extra).config
    assert {key: config[key] for key in expected} == expected


def test_a_config_file_of_ms_swift_shape(tmp_path):
    path = tmp_path / "fsdp.json"
    path.write_text(json.dumps({"fsdp": "full_shard auto_wrap", "fsdp_config": {
        "fsdp_version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "transformer_layer_cls_to_wrap": ["X"]}}))
    config = resolve_fsdp(str(path), None).training_config(("A", "B"))
    assert config["transformer_layer_cls_to_wrap"] == ["X"]  # the file's own classes win over the family's


@pytest.mark.parametrize("fsdp, extra, message", [
    ("hybrid_shard", None, "an FSDP1 strategy"),
    ("fsdp2", '{"fsdp_version": 1}', "FSDP2 only"),
    ("fsdp2", '{"state_dict_type": "SHARDED_STATE_DICT"}', "whole weights"),
    ("fsdp2", '{"activation_checkpointing": true}', "--gradient_checkpointing"),
    ("fsdp2", '{"cpu_ram_efficient_loading": true}', "every rank loads the model"),
    ("zero9.json", None, "no such file"),
    (None, '{"reshard_after_forward": false}', "--fsdp_config needs --fsdp"),
])
def test_what_vlft_does_not_run_is_refused_by_name(fsdp, extra, message):
    with pytest.raises(VlftError, match=message):
        resolve_fsdp(fsdp, extra)


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "qwen2_5_vl", "qwen2_vl"])
def test_each_family_names_its_decoder_layer_and_vision_block_classes(family, tiny_model_dir):
    """Ground truth: the classes of the tiny model's first decoder layer and first vision block."""
    from transformers import AutoModelForImageTextToText

    from vlft.families import module_at

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir(family))
    modules = get_family(family).modules
    found = (type(module_at(model, modules.decoder_layers)[0]).__name__,
             type(module_at(model, modules.vision_blocks)[0]).__name__)
    assert get_family(family).block_classes == found


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_reduce_in_float32_and_keep_the_loss_dtype(dtype, tmp_path):
    """The policy the Trainer's accelerate plugin gets, after accelerate applies the run's mixed precision."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from vlft.arguments import SftArguments
    from vlft.train.sft import trainer_arguments

    args = SftArguments(model="m", dataset=["d.jsonl"], fsdp="fsdp2")
    config = resolve_fsdp("fsdp2", None).training_config(("Block",))
    training_args = trainer_arguments(args, tmp_path, None, dtype, False, has_eval=False, fsdp_config=config)
    plugin = FullyShardedDataParallelPlugin(**training_args.fsdp_plugin_args)
    plugin.set_mixed_precision("bf16" if dtype == torch.bfloat16 else "fp16")
    assert plugin.mixed_precision_policy == MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    full = trainer_arguments(args, tmp_path, None, torch.float32, False, has_eval=False, fsdp_config=config)
    assert "mixed_precision_policy" not in full.fsdp_plugin_args  # float32 runs: no policy, nothing cast
