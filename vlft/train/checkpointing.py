"""Atomic checkpoints: a checkpoint is written whole into `RUN/.saving/checkpoint-N`, flushed to disk, then
renamed to `RUN/checkpoint-N`. A run killed (or out of disk) mid-save leaves the previous checkpoint as it
was, and no partial `checkpoint-N` that a resume could pick up (transformers' own save writes in place). A
resume checks its checkpoint first (checkpoint_check.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from vlft.errors import VlftError
from vlft.export.unloaded import copy_unloaded_tensors
from vlft.train.checkpoint_check import check_checkpoint_files, check_fits_model, other_checkpoints

if TYPE_CHECKING:
    from vlft.arguments import SftArguments

STAGING_DIR = ".saving"
COMPLETE_MARKER = "trainer_state.json"  # transformers writes it last; a published checkpoint always has it


def staging_dir(run_dir: Path) -> Path:
    """Where checkpoints of `run_dir` are written before they are renamed into place."""
    return Path(run_dir) / STAGING_DIR


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and dir under `root`, so a rename never publishes data still in the page cache."""
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_file() or path.is_dir():
            _fsync(path)
    _fsync(root)


def publish_checkpoint(staged: Path, final: Path) -> None:
    """Rename the fully written `staged` dir to `final` (atomic on one filesystem); an older `final` is replaced."""
    if not (staged / COMPLETE_MARKER).is_file():
        raise VlftError(f"{staged}: incomplete checkpoint (no {COMPLETE_MARKER}); not published")
    _fsync_tree(staged)
    if final.exists():  # the same step saved again (e.g. the last step after a resume)
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(staged, final)
        shutil.rmtree(old)
    else:
        os.rename(staged, final)
    _fsync(final.parent)


def clear_interrupted_saves(run_dir: Path) -> list[str]:
    """Remove what a killed save left in `run_dir`; put back a checkpoint whose replacement was cut short.

    Returns a line per thing done, for the log."""
    run_dir = Path(run_dir)
    done = []
    staging = staging_dir(run_dir)
    if staging.is_dir():
        done += [f"removed the unfinished save {p}" for p in sorted(staging.iterdir())]
        shutil.rmtree(staging)
    for old in sorted(run_dir.glob(".checkpoint-*.old")):
        final = run_dir / old.name[1:-len(".old")]
        if final.exists():
            shutil.rmtree(old)
        else:
            os.rename(old, final)
            done.append(f"restored {final} (its replacement was interrupted)")
    return done


def check_resumable(checkpoint: Path, args: SftArguments | None = None, ds_config: dict | None = None) -> None:
    """VlftError unless `checkpoint` is a complete checkpoint dir that training can resume from; given the
    resuming run's `args` (and DeepSpeed config), also that every file the resume reads is there and whole
    (checkpoint_check.py): cheap file checks, before any data or model is loaded."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        # ms-swift-style `true` (the last checkpoint) is not taken: a resume names the checkpoint it continues.
        hint = " (it takes a checkpoint dir, e.g. output/v0-.../checkpoint-100)" if checkpoint.name.lower() in (
            "true", "false") else ""
        raise VlftError(f"--resume_from_checkpoint {checkpoint}: no such directory{hint}")
    if not (checkpoint / COMPLETE_MARKER).is_file():
        raise VlftError(f"--resume_from_checkpoint {checkpoint}: not a complete checkpoint (no {COMPLETE_MARKER}: "
                        "its save was interrupted, or it is not a training checkpoint); "
                        f"{other_checkpoints(checkpoint)}")
    if args is not None:
        check_checkpoint_files(checkpoint, args, ds_config)


def write_checkpoint_extras(checkpoint: Path, processor: Any, args_json: dict[str, Any],
                            unloaded_from: tuple[Path, tuple[str, ...]] | None = None) -> None:
    """The processor and args.json beside the weights, so a checkpoint dir loads and resumes on its own; with
    `unloaded_from` (base model dir, prefixes), a full model's checkpoint also gets the base's tensors that
    transformers did not load (Qwen3.5's `mtp.*`), so it keeps the base's key set. A LoRA checkpoint's
    adapter_config.json names the base model as args_json's `model` names it; every file gets the umask's mode."""
    from vlft.export.checkpoint import apply_umask

    processor.save_pretrained(checkpoint)
    if unloaded_from is not None:
        copy_unloaded_tensors(unloaded_from[0], Path(checkpoint), unloaded_from[1])
    text = json.dumps(args_json, indent=2, ensure_ascii=False, default=str)
    (Path(checkpoint) / "args.json").write_text(text + "\n", encoding="utf-8")
    adapter_config = Path(checkpoint) / "adapter_config.json"
    if adapter_config.is_file() and args_json.get("model"):
        # PEFT records the dir the base was loaded from (a hub cache, vlft's tiny-model cache); the adapter names
        # the model as the user gave it (`Qwen/Qwen3-VL-4B-Instruct`, `vlft/tiny-qwen3-vl`). Rewritten here, not
        # in PEFT's config: at each save PEFT reads the base's config.json by that name, online for a hub id.
        config = json.loads(adapter_config.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = args_json["model"]
        adapter_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    apply_umask(Path(checkpoint))  # safetensors writes the weights 0600


class AtomicCheckpoints:
    """A transformers Trainer mixin: checkpoints are staged whole and renamed into place, and a checkpoint to
    resume from is checked against the model before transformers loads it.

    `checkpoint_extras(dir)`, when set, adds files (processor, args.json) to a checkpoint before its rename.
    """

    checkpoint_extras: Callable[[Path], None] | None = None

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """Trainer.train, after the checkpoint's weights (safetensors headers) and optimizer state are checked
        to fit the model: the first thing Trainer.train does with a checkpoint is load it."""
        if isinstance(resume_from_checkpoint, (str, os.PathLike)):
            check_fits_model(Path(resume_from_checkpoint), self.model)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _save_checkpoint(self, model, trial):
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        run_dir = Path(self.args.output_dir)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging, final = staging_dir(run_dir), run_dir / name
        self.args.output_dir = str(staging)  # transformers writes a checkpoint under args.output_dir
        try:
            super()._save_checkpoint(model, trial)
            self.accelerator.wait_for_everyone()  # every rank's shards are written
            if self.args.should_save:
                self._finish(staging / name, run_dir)
                publish_checkpoint(staging / name, final)
                try:
                    staging.rmdir()  # nothing else is being saved: leave no empty dir in the run
                except OSError:
                    pass
                rotate_checkpoints(str(run_dir), self.args.save_total_limit, self.state.best_model_checkpoint,
                                   use_mtime=True)
        except OSError as e:  # disk full, quota, permissions: the previous checkpoint is untouched
            shutil.rmtree(staging / name, ignore_errors=True)
            previous = sorted((p for p in run_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir()),
                              key=lambda p: int(p.name.rsplit("-", 1)[1]))
            kept = f"the last complete checkpoint is {previous[-1]}" if previous else "no checkpoint was completed"
            raise VlftError(f"saving {final} failed: {e.strerror or e}; {kept}") from None
        finally:
            self.args.output_dir = str(run_dir)
        self.accelerator.wait_for_everyone()  # the checkpoint is in place before any rank goes on

    def _finish(self, staged: Path, run_dir: Path) -> None:
        from transformers.trainer import TRAINER_STATE_NAME

        best = self.state.best_model_checkpoint
        if best and Path(best).parent == staged.parent:  # transformers named the staged path: name the final one
            self.state.best_model_checkpoint = str(run_dir / Path(best).name)
            self.state.save_to_json(str(staged / TRAINER_STATE_NAME))
        if self.checkpoint_extras is not None:
            self.checkpoint_extras(staged)

    def save_checkpoint(self) -> None:
        """A full checkpoint (model, optimizer, scheduler, state) of the current step, now."""
        self._save_checkpoint(self.model, trial=None)
