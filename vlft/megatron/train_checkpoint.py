"""Training checkpoints of `vlft megatron sft`, in the folders `vlft export --to_mcore` writes (checkpoint.py):
the model's shards, and unless --no_save_optim the optimizer's (Megatron-Core's `dp_reshardable` layout) with the
learning-rate schedule, the iteration and the data position. `vlft export --mcore_model RUN --to_hf true` reads
the model's part; `vlft megatron sft --load RUN` resumes from all of it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vlft.errors import VlftError
from vlft.megatron.checkpoint import McoreCheckpoint, fill_model, megatron_lm_state, save_state
from vlft.megatron.parallel import ParallelSizes

# Megatron-SWIFT's metadata: the distributed optimizer's state is saved per data-parallel shard, reshardable.
OPTIMIZER_METADATA = {"singleton_local_shards": False, "chained_optim_avoid_prefix": True,
                      "distrib_optim_sharding_type": "dp_reshardable"}
TRAINING = "vlft_training"  # the checkpoint's record of where training stood
# The arguments that decide which rows a step reads: a resumed run must keep them to continue the same curve.
DATA_ARGUMENTS = ("dataset", "val_dataset", "split_dataset_ratio", "columns", "packing", "max_length", "packing_length",
                  "model_name", "model_author", "seed", "global_batch_size", "truncation_strategy", "loss_scale",
                  "system", "template", "image_max_token_num", "image_min_token_num", "max_pixels", "min_pixels",
                  "video_max_token_num", "video_min_token_num", "video_max_pixels", "video_min_pixels",
                  "video_total_pixels", "fps", "fps_min_frames", "fps_max_frames")


def resume_problems(saved: dict, args) -> list[str]:
    """Why a run with `args` would not continue the run whose arguments (args.json) are `saved`."""
    if "global_batch_size" not in saved:  # a converted checkpoint (vlft export --to_mcore): weights only
        return []
    changed = [name for name in DATA_ARGUMENTS if name in saved and saved[name] != getattr(args, name)]
    problems = [f"--{name} {getattr(args, name)!r} differs from the run resumed ({saved[name]!r}): it reads other "
                "rows; give the same, or take only its weights with --finetune true" for name in changed]
    if not args.no_load_optim and saved.get("use_distributed_optimizer") != args.use_distributed_optimizer:
        problems.append(f"--use_distributed_optimizer {str(args.use_distributed_optimizer).lower()}: the run "
                        f"resumed saved its optimizer with {str(saved.get('use_distributed_optimizer')).lower()}, "
                        "whose state is laid out differently; give the same, or --no_load_optim true")
    return problems


@dataclass(frozen=True)
class TrainingPosition:
    """Where a run stands: optimizer steps taken, and those the optimizer applied (AdamW's step count)."""

    iteration: int = 0
    applied_steps: int = 0


def _inner_optimizers(optimizer) -> list:
    return [chained.optimizer for chained in getattr(optimizer, "chained_optimizers", [optimizer])]


def _prime_adam_state(optimizer) -> None:
    """A fresh distributed optimizer has no AdamW state, and building its loading state dict reads one `step`:
    give every parameter the state AdamW's first step makes (the load then overwrites it)."""
    for inner in _inner_optimizers(optimizer):
        for group in inner.param_groups:
            for param in group["params"]:
                state = inner.state[param]
                if not state:
                    state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(param),
                                 exp_avg_sq=torch.zeros_like(param))


def _restore_adam_steps(optimizer, steps: int) -> None:
    """Megatron-Core 0.16.1's distributed optimizer restores AdamW's moments but gives every parameter one shared
    `step` tensor holding the primed value: each parameter gets its own, the applied steps' count."""
    for inner in _inner_optimizers(optimizer):
        for state in inner.state.values():
            if "step" in state:
                state["step"] = torch.tensor(float(steps))


def _is_lora(key: str) -> bool:
    return ".lora." in key


def save(root: Path, position: TrainingPosition, ddp, optimizer, scheduler, sizes: ParallelSizes,
         with_optimizer: bool) -> Path:
    """Save every rank's shards at `position.iteration` (collective), then name it in the tracker file."""
    model_state = ddp.module.sharded_state_dict()
    state = megatron_lm_state(model_state, position.iteration, sizes, with_optimizer)
    state[TRAINING] = {"applied_steps": position.applied_steps, "optimizer": with_optimizer,
                       "lora": any(_is_lora(key) for key in model_state)}
    if with_optimizer:
        state["optimizer"] = optimizer.sharded_state_dict(model_state, is_loading=False,
                                                          metadata=OPTIMIZER_METADATA)
        state["opt_param_scheduler"] = scheduler.state_dict()
    return save_state(state, root, position.iteration, OPTIMIZER_METADATA)


def load(checkpoint: McoreCheckpoint, ddp, optimizer, scheduler, *, weights_only: bool, load_optimizer: bool,
         distributed_optimizer: bool) -> TrainingPosition:
    """Fill the model from `checkpoint` and, for a training checkpoint unless `weights_only`, the optimizer (unless
    not `load_optimizer`) and the schedule; returns where training resumes (step 0 for weights only)."""
    from megatron.core import dist_checkpointing

    common = dist_checkpointing.load_common_state_dict(str(checkpoint.path))
    record = common.get(TRAINING) if isinstance(common, dict) else None
    resume = record is not None and not weights_only
    model_state = ddp.module.sharded_state_dict()
    saved_lora = record is not None and record.get("lora", False)
    # LoRA adapters start afresh (or from --adapters) on a checkpoint without them: only the base is read.
    state = {"model": {key: value for key, value in model_state.items() if saved_lora or not _is_lora(key)}}
    with_optimizer = resume and load_optimizer
    if with_optimizer and not record["optimizer"]:
        raise VlftError(f"{checkpoint.path}: saved without the optimizer (--no_save_optim true): resume with "
                        "--no_load_optim true, or take its weights alone with --finetune true")
    if with_optimizer:
        if distributed_optimizer:
            _prime_adam_state(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(model_state, is_loading=True,
                                                          metadata=OPTIMIZER_METADATA)
    loaded = dist_checkpointing.load(state, str(checkpoint.path))
    fill_model(ddp.module, loaded["model"], checkpoint.path, may_miss=lambda key: not saved_lora and _is_lora(key))
    if not resume:
        return TrainingPosition()
    position = TrainingPosition(int(common["iteration"]), int(record["applied_steps"]))
    if with_optimizer:
        with torch.no_grad():  # the optimizer's main parameters are views of the trained ones
            optimizer.load_state_dict(loaded["optimizer"])
        if distributed_optimizer:
            _restore_adam_steps(optimizer, position.applied_steps)
        scheduler.load_state_dict(common["opt_param_scheduler"])
    else:
        scheduler.step(position.iteration)
    return position
