"""Starting the converter processes: torchrun with one process per model-parallel rank (one for --to_hf), as
`vlft sft` starts its workers; a rank's error is reported last, and a failed conversion leaves no output dir."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from vlft.errors import VlftError
from vlft.megatron.plan import ConversionPlan
from vlft.train.launch import WORKER_ERRORS


def worker_command(nproc: int, plan_path: Path) -> list[str]:
    """torchrun on this host alone (a free rendezvous port) running `nproc` converter processes; one process
    runs without torchrun (worker_env gives it what torchrun would)."""
    worker = ["-m", "vlft.megatron.worker", str(plan_path)]
    if nproc == 1:
        return [sys.executable, *worker]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *worker]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(nproc: int, errors: Path) -> dict[str, str]:
    env = {**os.environ, WORKER_ERRORS: str(errors)}
    if nproc == 1:
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(free_port()))
    return env


def run_conversion(plan: ConversionPlan) -> None:
    """Run the plan's converter processes; a VlftError (the first rank's error) when they fail."""
    from vlft.train.launch import first_worker_error

    nproc = plan.sizes.world_size if plan.direction == "to_mcore" else 1
    output_dir = Path(plan.output_dir)
    with tempfile.TemporaryDirectory(prefix="vlft-mcore-") as work:
        plan_path, errors = Path(work) / "plan.json", Path(work) / "errors"
        plan_path.write_text(plan.to_json(), encoding="utf-8")
        errors.mkdir()
        code = subprocess.call(worker_command(nproc, plan_path), env=worker_env(nproc, errors))
        error = first_worker_error(errors)
    if code == 0:
        return
    shutil.rmtree(output_dir, ignore_errors=True)
    if error is None:
        raise VlftError(f"the converter processes failed (torchrun exited with code {code})")
    raise VlftError(f"rank {error.rank} failed: {error.message} (its traceback is above torchrun's report)")
