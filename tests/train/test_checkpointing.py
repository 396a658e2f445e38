"""Atomic checkpoints: publishing a staged dir, cleaning up after a killed save, refusing to resume from
an incomplete checkpoint, and a save that fails for lack of disk leaving the previous checkpoint usable."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from tests.train.test_callbacks import _Rows, _tiny_llama
from vlft.errors import VlftError
from vlft.train.checkpointing import (AtomicCheckpoints, check_resumable, clear_interrupted_saves,
                                      publish_checkpoint, staging_dir)


def _checkpoint(path, marker="step"):
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"marker": marker}))
    (path / "model.safetensors").write_bytes(b"weights " + marker.encode())
    return path


def test_publish_moves_a_complete_checkpoint_and_replaces_an_older_copy(tmp_path):
    staged = _checkpoint(staging_dir(tmp_path) / "checkpoint-2", "new")
    final = _checkpoint(tmp_path / "checkpoint-2", "old")
    publish_checkpoint(staged, final)
    assert json.loads((final / "trainer_state.json").read_text()) == {"marker": "new"}
    assert not staged.exists() and not list(tmp_path.glob(".checkpoint-*"))


def test_publish_refuses_a_checkpoint_without_its_state(tmp_path):
    staged = staging_dir(tmp_path) / "checkpoint-2"
    staged.mkdir(parents=True)
    with pytest.raises(VlftError, match="incomplete checkpoint"):
        publish_checkpoint(staged, tmp_path / "checkpoint-2")
    assert not (tmp_path / "checkpoint-2").exists()


def test_clear_removes_unfinished_saves_and_restores_an_interrupted_replacement(tmp_path):
    _checkpoint(staging_dir(tmp_path) / "checkpoint-6", "half")
    _checkpoint(tmp_path / ".checkpoint-4.old", "four")  # killed between the two renames of a replacement
    _checkpoint(tmp_path / "checkpoint-2", "two")
    _checkpoint(tmp_path / ".checkpoint-2.old", "stale")  # killed after the second rename
    done = clear_interrupted_saves(tmp_path)
    assert len(done) == 2
    assert not staging_dir(tmp_path).exists() and not list(tmp_path.glob(".checkpoint-*"))
    assert json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text()) == {"marker": "four"}
    assert json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text()) == {"marker": "two"}


def test_resume_needs_a_complete_checkpoint(tmp_path):
    with pytest.raises(VlftError, match="no such directory"):
        check_resumable(tmp_path / "checkpoint-9")
    (tmp_path / "checkpoint-4").mkdir()
    with pytest.raises(VlftError, match="not a complete checkpoint"):
        check_resumable(tmp_path / "checkpoint-4")
    check_resumable(_checkpoint(tmp_path / "checkpoint-2"))


def test_a_save_that_runs_out_of_disk_keeps_the_previous_checkpoint(tmp_path):
    from transformers import Trainer, TrainingArguments

    class DiskFullAtStep4(AtomicCheckpoints, Trainer):
        def _save_optimizer_and_scheduler(self, output_dir):
            if self.state.global_step == 4:  # as if the disk filled while the optimizer state was written
                raise OSError(errno.ENOSPC, "No space left on device")
            super()._save_optimizer_and_scheduler(output_dir)

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, max_steps=6, per_device_train_batch_size=2,
                             learning_rate=1e-2, save_steps=2, report_to=[], disable_tqdm=True)
    trainer = DiskFullAtStep4(model=_tiny_llama(), args=args, train_dataset=_Rows())
    with pytest.raises(VlftError, match=r"checkpoint-4 failed: No space left on device; the last complete "
                                        r"checkpoint is .*checkpoint-2"):
        trainer.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (staging_dir(tmp_path) / "checkpoint-4").exists()
    check_resumable(tmp_path / "checkpoint-2")
    assert torch.load(tmp_path / "checkpoint-2" / "optimizer.pt", weights_only=True)["state"]
