"""Multi-GPU launching as ms-swift does it: NPROC_PER_NODE / NNODES / ... make `vlft sft` re-run under torchrun."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Mapping

from vlft.errors import VlftError


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


def launch_plan(environ: Mapping[str, str]) -> LaunchPlan | None:
    """The torchrun plan from ms-swift's variables; None for a plain single process."""
    if not environ.get("NPROC_PER_NODE", "").strip():
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
    if plan.nproc_per_node == 1 and plan.nnodes == 1:
        return None
    return plan


def is_distributed_worker(environ: Mapping[str, str]) -> bool:
    """True inside a process started by torchrun or the deepspeed launcher (they set LOCAL_RANK)."""
    return bool(environ.get("LOCAL_RANK", "").strip())


def torchrun_command(plan: LaunchPlan, argv: list[str]) -> list[str]:
    """The command that re-runs `vlft sft argv` under torch.distributed.run with `plan`."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc_per_node", str(plan.nproc_per_node),
        "--nnodes", str(plan.nnodes),
        "--node_rank", str(plan.node_rank),
        "--master_addr", plan.master_addr,
        "--master_port", str(plan.master_port),
        "-m", "vlft.cli.main", "sft", *argv,
    ]
