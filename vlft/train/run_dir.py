"""The run's output dir: `OUTPUT_DIR/v{N}-{YYYYMMDD-HHMMSS}` as ms-swift names it, checked and given args.json."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from vlft.arguments import public_args
from vlft.errors import VlftError

_VERSION_DIR = re.compile(r"^v(\d+)-")


def _next_version(output_dir: Path) -> int:
    if not output_dir.is_dir():
        return 0
    versions = [int(m.group(1)) for p in output_dir.iterdir() if p.is_dir() and (m := _VERSION_DIR.match(p.name))]
    return max(versions, default=-1) + 1


def new_run_dir(output_dir: Path, now: datetime) -> Path:
    """Create and return `output_dir/v{N}-{time}`, N one more than the highest existing version (v0 first)."""
    stamp = now.strftime("%Y%m%d-%H%M%S")
    version = _next_version(output_dir)
    # Two runs started in the same second may pick the same N: the loser of the mkdir takes the next one.
    for _ in range(1000):
        run_dir = output_dir / f"v{version}-{stamp}"
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            version = max(version + 1, _next_version(output_dir))
    raise VlftError(f"{output_dir}: could not create a new v{{N}}-{stamp} run dir")


def agreed_run_dir(output_dir: Path, now: datetime, is_main: bool) -> Path:
    """The `v{N}-{time}` run dir that rank 0 creates, broadcast to every rank of the process group.

    Nodes of a multi-node launch start their launchers independently and cannot agree on a name
    beforehand; once the process group is up, rank 0 names the run for all of them.
    """
    import torch.distributed as dist

    name = [new_run_dir(output_dir, now).name if is_main else None]
    dist.broadcast_object_list(name, src=0)
    return output_dir / name[0]


def check_writable(output_dir: Path) -> None:
    """Raise VlftError unless `output_dir` (or, when missing, its nearest existing parent) is a writable dir."""
    path = Path(output_dir).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise VlftError(f"--output_dir {output_dir}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" (its parent {existing} is where it would be created)"
        raise VlftError(f"--output_dir {output_dir}: {existing} is not writable{where}")


def write_args_json(path: Path, args: Any) -> None:
    """Write the run's arguments (secrets such as hub_token left out) to `path` as indented JSON."""
    text = json.dumps(public_args(args), indent=2, ensure_ascii=False, default=str)
    Path(path).write_text(text + "\n", encoding="utf-8")
