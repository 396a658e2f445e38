"""Megatron-LM's checkpoint folders: `latest_checkpointed_iteration.txt` naming the iteration, `iter_0000001/`
holding dist_checkpointing's torch_dist files, and vlft's `args.json` beside them (the source model's config,
family, dtype and parallel sizes), with the processor files the HF model is rebuilt with."""

from __future__ import annotations

import json
import shutil
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

from vlft.errors import VlftError
from vlft.megatron.parallel import ParallelSizes

TRACKER = "latest_checkpointed_iteration.txt"
ARGS = "args.json"
ITERATION_FILES = ("metadata.json", ".metadata", "common.pt")
DEFAULT_ITERATION = 1  # ms-swift's export writes iteration 1 too
# Beside the weights, what a model dir needs to load: tokenizer, processor, chat template, generation config.
_PROCESSOR_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken")
_NOT_PROCESSOR = ("config.json", ARGS, TRACKER, "model.safetensors.index.json", "pytorch_model.bin.index.json")


def iteration_dir(root: Path, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


@dataclass(frozen=True)
class McoreCheckpoint:
    """A checked checkpoint folder: its iteration dir and what args.json records."""

    root: Path
    iteration: int
    args: dict

    @property
    def path(self) -> Path:
        return iteration_dir(self.root, self.iteration)

    @property
    def sizes(self) -> ParallelSizes:
        return ParallelSizes.from_args(self.args)


def read_checkpoint(root: Path, iteration: int | None = None) -> McoreCheckpoint:
    """The checkpoint at `root` (its latest iteration unless one is given); a VlftError naming what is missing
    when the folder is not a Megatron-Core checkpoint written by `vlft export --to_mcore`."""
    root = Path(root).expanduser()
    where = f"--mcore_model {root}"
    if not root.is_dir():
        raise VlftError(f"{where}: no such directory")
    if iteration is None:
        tracker = root / TRACKER
        if not tracker.is_file():
            raise VlftError(f"{where}: not a Megatron-Core checkpoint: no {TRACKER} (or pass --iteration N)")
        text = tracker.read_text().strip()
        if not text.isdigit():
            raise VlftError(f"{tracker}: expected an iteration number, got {text[:40]!r}")
        iteration = int(text)
    path = iteration_dir(root, iteration)
    if not path.is_dir():
        found = sorted(p.name for p in root.glob("iter_*"))
        raise VlftError(f"{where}: no {path.name}/ (iterations here: {', '.join(found) or 'none'})")
    missing = [name for name in ITERATION_FILES if not (path / name).is_file()]
    if not any(path.glob("*.distcp")):
        missing.append("*.distcp")
    if missing:
        raise VlftError(f"{path}: not a torch_dist checkpoint: missing {', '.join(missing)}")
    args_path = root / ARGS
    if not args_path.is_file():
        raise VlftError(f"{where}: no {ARGS} (the source model's config is recorded there by vlft export "
                        "--to_mcore)")
    try:
        args = json.loads(args_path.read_text())
    except json.JSONDecodeError as e:
        raise VlftError(f"{args_path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(args, dict) or not isinstance(args.get("hf_config"), dict):
        raise VlftError(f"{args_path}: no hf_config: not written by vlft export --to_mcore")
    return McoreCheckpoint(root, iteration, args)


def write_args(root: Path, args: dict) -> None:
    (Path(root) / ARGS).write_text(json.dumps(args, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def processor_files(model_dir: Path) -> list[Path]:
    """The files of a model dir beside its weights and config.json (tokenizer, processor, chat template,
    generation config)."""
    return sorted(p for p in Path(model_dir).iterdir()
                  if p.is_file() and p.suffix in _PROCESSOR_SUFFIXES and p.name not in _NOT_PROCESSOR)


def copy_processor_files(source: Path, target: Path) -> None:
    for path in processor_files(source):
        shutil.copy2(path, Path(target) / path.name)


def megatron_lm_state(model_state: dict, iteration: int, sizes: ParallelSizes, with_optimizer: bool = False) -> dict:
    """What Megatron-LM saves at the top of a checkpoint (no RNG state): the model's sharded state, the iteration and
    the parallel sizes; the optimizer's state, when saved, is added beside it."""
    return {"model": model_state, "checkpoint_version": 3.0, "iteration": iteration,
            "args": Namespace(**sizes.as_args(), no_save_optim=not with_optimizer, no_save_rng=True)}


def save_state(state: dict, root: Path, iteration: int, content_metadata: dict) -> Path:
    """Save every rank's part of `state` as iteration `iteration` under `root` (collective: every rank calls it)
    and, on rank 0, name it in the tracker file; returns the iteration's dir."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

    path = iteration_dir(root, iteration)
    if dist.get_rank() == 0:
        path.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    dist_checkpointing.save(state, str(path),
                            sharded_strategy=TorchDistSaveShardedStrategy("torch_dist", 1, thread_count=1),
                            content_metadata=content_metadata)
    dist.barrier()
    if dist.get_rank() == 0:
        (Path(root) / TRACKER).write_text(str(iteration))
    return path


def save(model, root: Path, iteration: int, sizes: ParallelSizes) -> None:
    """Save every rank's shard of `model` (collective: every rank calls it) and, on rank 0, the tracker file."""
    save_state(megatron_lm_state(model.sharded_state_dict(), iteration, sizes), root, iteration,
               {"singleton_local_shards": False})


def fill_model(model, loaded: dict, path: Path, may_miss=lambda key: False) -> None:
    """Load `loaded` (a checkpoint's model state) into `model`; a VlftError naming `path` when keys are missing
    (other than those `may_miss`) or unexpected."""
    missing, unexpected = model.load_state_dict(loaded, strict=False)
    missing = [key for key in missing if not key.endswith("_extra_state") and not may_miss(key)]
    if missing or unexpected:
        raise VlftError(f"{path}: does not match the model its args.json describes: missing {missing[:5]}, "
                        f"unexpected {unexpected[:5]}")


def load(model, checkpoint: McoreCheckpoint) -> None:
    """Fill `model` (any parallel sizes: dist_checkpointing reshards) from the checkpoint."""
    from megatron.core import dist_checkpointing

    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(checkpoint.path))
    fill_model(model, loaded["model"], checkpoint.path)


def write_model_files(found: McoreCheckpoint, target: Path) -> Path:
    """An HF model dir without weights (config.json and the processor files) for a checkpoint: what the data
    pipeline reads the tokenizer, processor and chat template from."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps(found.args["hf_config"], indent=2) + "\n", encoding="utf-8")
    copy_processor_files(found.root, target)
    return target
