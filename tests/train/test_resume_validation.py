"""A damaged checkpoint is refused before a resume reads it, with an error naming the checkpoint, the file and
what is wrong: real checkpoints of the tiny Qwen3-VL written by `vlft sft` (LoRA and full), copied and
damaged one way per test; the fit to the model is checked against models built as `vlft sft` builds them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from vlft.arguments import SftArguments
from vlft.cli.main import main
from vlft.errors import VlftError
from vlft.train.checkpoint_check import check_fits_model
from vlft.train.checkpointing import AtomicCheckpoints, check_resumable
from vlft.train.deepspeed import resolve_deepspeed_config

DATASET = f"{REPO / 'examples' / 'data' / 'train.jsonl'}#2"
TINY = ["--model", "vlft/tiny-qwen3-vl", "--dataset", DATASET, "--max_length", "256", "--image_max_token_num",
        "16", "--image_min_token_num", "4", "--report_to", "none", "--add_version", "false"]
LORA_STEPS, FULL_STEPS = (1, 2), (1,)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, vlft_cache) -> dict[str, Path]:
    """train type -> run dir of a tiny `vlft sft` run: LoRA saved at steps 1 and 2, full at step 1."""
    out = tmp_path_factory.mktemp("runs")
    assert main(["sft", *TINY, "--max_steps", "2", "--save_steps", "1", "--output_dir", str(out / "lora")]) == 0
    assert main(["sft", *TINY, "--train_type", "full", "--max_steps", "1", "--output_dir", str(out / "full")]) == 0
    return {"lora": out / "lora", "full": out / "full"}


def _args(**overrides) -> SftArguments:
    return SftArguments(model="vlft/tiny-qwen3-vl", dataset=[DATASET], **overrides)


def _copy(run: Path, tmp_path: Path, step: int) -> Path:
    """A copy of the run (the tokenizer files left out: no check reads them), and its checkpoint-{step}."""
    copy = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("tokenizer*", "*.jinja"))
    return Path(copy) / f"checkpoint-{step}"


def _cut(path: Path, keep: int) -> None:
    os.truncate(path, keep)


def _refused(checkpoint: Path, args: SftArguments, message: str, ds_config: dict | None = None) -> str:
    with pytest.raises(VlftError, match=message) as error:
        check_resumable(checkpoint, args, ds_config)
    text = str(error.value)
    assert text.startswith(f"--resume_from_checkpoint {checkpoint}: "), text
    return text


def test_the_checkpoints_vlft_wrote_pass(runs):
    for step in LORA_STEPS:
        check_resumable(runs["lora"] / f"checkpoint-{step}", _args())
    check_resumable(runs["full"] / "checkpoint-1", _args(train_type="full"))


def test_a_missing_dir_and_a_boolean_are_named(tmp_path):
    with pytest.raises(VlftError, match="checkpoint-9: no such directory$"):
        check_resumable(tmp_path / "checkpoint-9", _args())
    with pytest.raises(VlftError, match="true: no such directory .it takes a checkpoint dir"):
        check_resumable(Path("true"), _args())


def test_a_run_dir_given_for_a_checkpoint_lists_its_checkpoints(runs):
    run = runs["lora"]
    text = _refused(run, _args(), "not a complete checkpoint .no trainer_state.json")
    assert text.endswith(f"newest first): {run}/checkpoint-2, {run}/checkpoint-1"), text


LORA_DAMAGE = {
    "no trainer state": (lambda c: (c / "trainer_state.json").unlink(), "not a complete checkpoint .no "
                                                                        "trainer_state.json"),
    "trainer state cut": (lambda c: _cut(c / "trainer_state.json", 40), "trainer_state.json: not valid JSON"),
    "no global_step": (lambda c: (c / "trainer_state.json").write_text('{"epoch": 1.0}'),
                       "trainer_state.json: no global_step"),
    "no adapter": (lambda c: (c / "adapter_model.safetensors").unlink(), "adapter_model.safetensors: missing"),
    "adapter data cut": (lambda c: _cut(c / "adapter_model.safetensors", 60000),
                         r"adapter_model.safetensors: cut short: 60000 bytes, its header describes \d+"),
    "adapter header cut": (lambda c: _cut(c / "adapter_model.safetensors", 100),
                           "adapter_model.safetensors: cut short or not a safetensors file: 100 bytes"),
    "adapter zeroed": (lambda c: (c / "adapter_model.safetensors").write_bytes(bytes(4096)),
                       "adapter_model.safetensors: not a safetensors file"),
    "no adapter config": (lambda c: (c / "adapter_config.json").unlink(), "adapter_config.json: missing"),
    "no optimizer": (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt: missing"),
    "optimizer cut": (lambda c: _cut(c / "optimizer.pt", 150000), "optimizer.pt: cut short or corrupted"),
    "scheduler cut": (lambda c: _cut(c / "scheduler.pt", 700), "scheduler.pt: cut short or corrupted"),
    "no rng state": (lambda c: (c / "rng_state.pth").unlink(), r"rng_state.pth: missing"),
}


@pytest.mark.parametrize("case", LORA_DAMAGE)
def test_a_damaged_lora_checkpoint_names_the_file_and_the_checkpoint_to_resume_from(case, runs, tmp_path):
    damage, message = LORA_DAMAGE[case]
    checkpoint = _copy(runs["lora"], tmp_path, 2)
    damage(checkpoint)
    text = _refused(checkpoint, _args(), message)
    assert text.endswith(f"resume from another checkpoint of the run (newest first): {checkpoint.parent}/"
                         "checkpoint-1"), text


def _shard_full_checkpoint(checkpoint: Path, lost_key: bool) -> None:
    """model.safetensors split by hand into an index and its first shard: the index puts one tensor in a
    second shard that is not there, or (`lost_key`) in the first shard, which lacks it."""
    from safetensors import safe_open

    with safe_open(str(checkpoint / "model.safetensors"), "pt") as f:
        keys = sorted(f.keys())
    (checkpoint / "model.safetensors").rename(checkpoint / "model-00001-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in keys}
    weight_map["extra.weight" if lost_key else keys[0]] = ("model-00001-of-00002.safetensors" if lost_key else
                                                           "model-00002-of-00002.safetensors")
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


FULL_DAMAGE = {
    "no weights": (lambda c: (c / "model.safetensors").unlink(),
                   r"model.safetensors: missing \(and no model.safetensors.index.json\)"),
    "index names a missing shard": (lambda c: _shard_full_checkpoint(c, lost_key=False),
                                    r"model-00002-of-00002.safetensors: missing \(model.safetensors.index.json puts "
                                    "1 tensors in it\\)"),
    "shard lacks a tensor": (lambda c: _shard_full_checkpoint(c, lost_key=True),
                             "model-00001-of-00002.safetensors: lacks 1 tensors that model.safetensors.index.json "
                             r"puts in it \(e.g. extra.weight\)"),
    "weights cut": (lambda c: _cut(c / "model.safetensors", 1 << 20), "model.safetensors: cut short: 1048576 bytes"),
}


@pytest.mark.parametrize("case", FULL_DAMAGE)
def test_a_damaged_full_checkpoint_names_the_file(case, runs, tmp_path):
    damage, message = FULL_DAMAGE[case]
    checkpoint = _copy(runs["full"], tmp_path, 1)
    damage(checkpoint)
    text = _refused(checkpoint, _args(train_type="full"), message)
    assert text.endswith("holds no other checkpoint: train again without --resume_from_checkpoint, or copy the "
                         "checkpoint again"), text


def test_a_checkpoint_of_another_kind_or_rank_names_the_argument_to_change(runs):
    lora, full = runs["lora"] / "checkpoint-2", runs["full"] / "checkpoint-1"
    _refused(lora, _args(train_type="full"), "model.safetensors: missing: this is a LoRA checkpoint.*; resume with "
                                             "--train_type lora$")
    _refused(full, _args(), "adapter_config.json: missing: this is a full model's checkpoint.*; resume with "
                            "--train_type full$")
    _refused(lora, _args(lora_rank=4), "adapter_config.json: a LoRA of rank 8; this run trains rank 4; resume with "
                                       "--lora_rank 8$")
    _refused(lora, _args(use_dora=True), "use_dora False; this run has --use_dora True")


def _as_deepspeed(checkpoint: Path, world: int = 2) -> Path:
    """The checkpoint laid out as DeepSpeed 0.19 saves one under ZeRO-2 (bf16) in `world` processes: the optimizer
    state in global_step{N}/, one shard a rank, named in `latest`; transformers' scheduler.pt beside it."""
    step = checkpoint / "global_step2"
    step.mkdir()
    torch.save({"module": {}}, step / "mp_rank_00_model_states.pt")
    for rank in range(world):
        torch.save({"optimizer_state_dict": {}}, step / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    (checkpoint / "latest").write_text("global_step2")
    (checkpoint / "optimizer.pt").unlink()
    args_json = json.loads((checkpoint / "args.json").read_text())
    (checkpoint / "args.json").write_text(json.dumps({**args_json, "deepspeed": "zero2"}))
    return checkpoint


DEEPSPEED_DAMAGE = {
    "latest names a missing dir": (lambda c: (c / "latest").write_text("global_step9"),
                                   r"latest: names 'global_step9', which is not a dir of the checkpoint \(it has "
                                   r"global_step2\)"),
    "no latest": (lambda c: (c / "latest").unlink(), "latest: missing"),
    "a rank's shard missing": (lambda c: (c / "global_step2/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink(),
                               "global_step2/: lacks the ZeRO optim states of rank.s. 0 of 2"),
    "a shard cut": (lambda c: _cut(c / "global_step2/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt", 300),
                    "global_step2/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt: cut short or corrupted"),
    "no scheduler": (lambda c: (c / "scheduler.pt").unlink(), "scheduler.pt: missing"),
}


@pytest.mark.parametrize("case", DEEPSPEED_DAMAGE)
def test_a_damaged_deepspeed_checkpoint_names_the_file(case, runs, tmp_path):
    damage, message = DEEPSPEED_DAMAGE[case]
    checkpoint = _as_deepspeed(_copy(runs["lora"], tmp_path, 2))
    check_resumable(checkpoint, _args(deepspeed="zero2"), resolve_deepspeed_config("zero2"))
    damage(checkpoint)
    _refused(checkpoint, _args(deepspeed="zero2"), message, resolve_deepspeed_config("zero2"))


def test_deepspeed_and_plain_checkpoints_resume_only_as_they_were_saved(runs, tmp_path):
    _refused(runs["lora"] / "checkpoint-2", _args(deepspeed="zero2"), "global_step.: missing: the checkpoint was "
             "not saved under DeepSpeed.*; resume without --deepspeed", resolve_deepspeed_config("zero2"))
    checkpoint = _as_deepspeed(_copy(runs["lora"], tmp_path, 2))
    _refused(checkpoint, _args(), "optimizer.pt: missing: the checkpoint was saved under DeepSpeed.*; resume with "
                                  "--deepspeed zero2")


def _model(tiny_model_dir, **overrides):
    """The tiny Qwen3-VL as `vlft sft` prepares it for these arguments (CPU: float32, sdpa)."""
    from vlft.families import family_of
    from vlft.train.model import load_model
    from vlft.train.tuners import prepare_trainable

    model = load_model(tiny_model_dir("qwen3_vl"), torch.float32, "sdpa")
    return prepare_trainable(model, family_of(model), _args(**overrides))


@pytest.mark.parametrize("overrides, message", [
    ({}, None),
    ({"lora_rank": 4}, r"adapter_model.safetensors: 28 tensor\(s\) of another shape than the model being trained "
                       r"has \(e.g. .*lora_A.weight: \[8, \d+\] here, \[4, \d+\] in the model\)"),
    ({"target_modules": ["q_proj", "v_proj"]}, "adapter_model.safetensors: 20 LoRA tensors of modules this run "
                                               "does not adapt"),
    ({"freeze_vit": False}, "adapter_model.safetensors: no adapter for .* of the LoRA tensors this run trains "
                            r"\(e.g. base_model.model.model.visual"),
])
def test_a_lora_checkpoint_must_fit_the_model_being_trained(overrides, message, runs, tiny_model_dir):
    checkpoint = runs["lora"] / "checkpoint-2"
    model = _model(tiny_model_dir, **overrides)
    if message is None:
        check_fits_model(checkpoint, model)
        return
    with pytest.raises(VlftError, match=message) as error:
        check_fits_model(checkpoint, model)
    assert str(error.value).endswith("resume with the arguments of the run that saved it (its args.json), or start "
                                     "a new run without --resume_from_checkpoint")


def test_a_full_checkpoint_must_fit_the_model_and_its_optimizer_the_trained_parameters(runs, tiny_model_dir):
    checkpoint = runs["full"] / "checkpoint-1"
    check_fits_model(checkpoint, _model(tiny_model_dir, train_type="full"))
    model = _model(tiny_model_dir, train_type="full", freeze_vit=False)
    trained = sum(p.requires_grad for p in model.parameters())
    with pytest.raises(VlftError, match=rf"optimizer.pt: the state of \d+ trained tensors; this run trains {trained}"):
        check_fits_model(checkpoint, model)
    model.resize_token_embeddings(model.config.text_config.vocab_size + 64)
    with pytest.raises(VlftError, match=r"model.safetensors: 2 tensor\(s\) of another shape"):
        check_fits_model(checkpoint, model)


def test_trainer_train_checks_the_checkpoint_before_loading_it(runs, tmp_path):
    from transformers import Trainer, TrainingArguments

    from tests.train.test_callbacks import _Rows, _tiny_llama

    class Checked(AtomicCheckpoints, Trainer):
        def _load_from_checkpoint(self, *args, **kwargs):
            raise AssertionError("the checkpoint was loaded")

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, max_steps=1, report_to=[], disable_tqdm=True)
    trainer = Checked(model=_tiny_llama(), args=args, train_dataset=_Rows())
    with pytest.raises(VlftError, match=r"model.safetensors: 1 tensor\(s\) of another shape than the model being "
                                        r"trained has \(e.g. lm_head.weight: \[151936, 64\] here, \[64, 32\] in the "
                                        r"model\): another base model"):
        trainer.train(resume_from_checkpoint=str(runs["full"] / "checkpoint-1"))


def test_the_cli_refuses_a_cut_checkpoint_before_any_work_without_a_traceback(runs, tmp_path, capfd):
    """`vlft sft` through its entry point (in this process: a subprocess would add ~10 s of imports)."""
    checkpoint = _copy(runs["lora"], tmp_path, 2)
    _cut(checkpoint / "adapter_model.safetensors", 60000)
    code = main(["sft", *TINY, "--output_dir", str(tmp_path / "out"), "--resume_from_checkpoint", str(checkpoint)])
    err = capfd.readouterr().err
    assert code == 2, err[-2000:]
    assert f"vlft sft: error: --resume_from_checkpoint {checkpoint}: adapter_model.safetensors: cut short: 60000 " \
           "bytes" in err
    assert "checkpoint-1" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before the run dir, the data or the model
