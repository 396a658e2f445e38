"""Multi-GPU launching as ms-swift does it: NPROC_PER_NODE / NNODES / ... make `vlft sft` re-run under torchrun.

A worker that fails records why in a dir its launcher names (WORKER_ERRORS), so the launcher prints the error
after torchrun's own report of the failed process, as the last thing the user sees."""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from vlft.errors import VlftError

WORKER_ERRORS = "VLFT_WORKER_ERRORS"  # the dir where the workers of a `vlft sft` launch record their errors


@dataclass(frozen=True)
class LaunchPlan:
    """torchrun's topology: processes per node, nodes, this node's rank and the rendezvous address."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500


def _int_env(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise VlftError(f"environment variable {name}={text!r}: expected an integer") from None


def launch_plan(environ: Mapping[str, str], single: bool = False) -> LaunchPlan | None:
    """The torchrun plan from ms-swift's variables; None for a plain single process, unless `single` asks for a
    plan of one process too (DeepSpeed needs a process group: torchrun provides it, at MASTER_ADDR:MASTER_PORT)."""
    if not environ.get("NPROC_PER_NODE", "").strip() and not single:
        return None
    plan = LaunchPlan(
        nproc_per_node=_int_env(environ, "NPROC_PER_NODE", 1),
        nnodes=_int_env(environ, "NNODES", 1),
        node_rank=_int_env(environ, "NODE_RANK", 0),
        master_addr=environ.get("MASTER_ADDR", "").strip() or "127.0.0.1",
        master_port=_int_env(environ, "MASTER_PORT", 29500),
    )
    if plan.nproc_per_node < 1 or plan.nnodes < 1:
        raise VlftError(f"NPROC_PER_NODE and NNODES must be positive, got {plan.nproc_per_node} and {plan.nnodes}")
    if plan.nproc_per_node == 1 and plan.nnodes == 1 and not single:
        return None
    return plan


def is_distributed_worker(environ: Mapping[str, str]) -> bool:
    """True inside a process started by torchrun or the deepspeed launcher (they set LOCAL_RANK)."""
    return bool(environ.get("LOCAL_RANK", "").strip())


def torchrun_command(plan: LaunchPlan, argv: list[str], command: tuple[str, ...] = ("sft",)) -> list[str]:
    """The command that re-runs `vlft <command> argv` under torch.distributed.run with `plan`."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc_per_node", str(plan.nproc_per_node),
        "--nnodes", str(plan.nnodes),
        "--node_rank", str(plan.node_rank),
        "--master_addr", plan.master_addr,
        "--master_port", str(plan.master_port),
        "-m", "vlft.cli.main", *command, *argv,
    ]


def launch_outcome(command: str, code: int, error: "WorkerError | None", run_dir: Path | None, created: bool) -> int:
    """After torchrun ran `vlft <command>`'s workers: on success, a FAILED left by an earlier run in `run_dir` is
    removed; on failure the run dir is removed or marked FAILED (run_dir.finish_failed_run), and the first worker's
    error is reported last: a VlftError (exit code 2) is raised again as in one process, another is printed.
    Returns the exit code."""
    import logging

    from vlft.train.run_dir import clear_failed, finish_failed_run

    if code == 0:
        if run_dir is not None:
            clear_failed(run_dir)
        return 0
    if run_dir is not None:
        note = finish_failed_run(run_dir, error.message if error else f"torchrun exited with code {code}", created)
        if note:
            logging.getLogger("vlft").warning(note)
    if error is not None and error.code == 2:
        raise VlftError(error.message)  # printed last, as in one process; exit code 2
    if error is not None:
        print(f"vlft {command}: rank {error.rank} failed: {error.message} (its traceback is above torchrun's "
              "report)", file=sys.stderr)
    return code


@dataclass(frozen=True)
class WorkerError:
    """Why a worker failed: its rank, its exit code (2 for a VlftError, as the CLI exits) and the message."""

    rank: int
    code: int
    message: str
    time: float


@contextmanager
def worker_error_recorded(environ: Mapping[str, str]) -> Iterator[None]:
    """In a worker of a `vlft sft` launch (WORKER_ERRORS set), an exception is written to the launcher's dir
    (rank{RANK}.json) before it goes on; elsewhere nothing is done."""
    try:
        yield
    except Exception as e:
        directory = environ.get(WORKER_ERRORS, "").strip()
        if directory:
            rank = _int_env(environ, "RANK", 0)
            user_error = isinstance(e, VlftError)
            record = {"rank": rank, "code": 2 if user_error else 1, "time": time.time(),
                      "message": str(e) if user_error else f"{type(e).__name__}: {e}"}
            path = Path(directory) / f"rank{rank}.json"
            try:
                path.with_suffix(".tmp").write_text(json.dumps(record), encoding="utf-8")
                os.replace(path.with_suffix(".tmp"), path)
            except OSError:
                pass  # the worker's own output still shows the error
        raise


def first_worker_error(directory: Path) -> WorkerError | None:
    """The error recorded first by a worker in `directory`, if any."""
    errors = []
    for path in Path(directory).glob("rank*.json"):
        try:
            errors.append(WorkerError(**json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError):
            continue
    return min(errors, key=lambda e: e.time, default=None)
