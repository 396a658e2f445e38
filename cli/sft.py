"""`vlft sft`: fine-tune (ms-swift's `swift sft` arguments); starts torchrun itself for NPROC_PER_NODE > 1 and
for DeepSpeed and FSDP. A failed run's v{N}-{time} dir is removed when it holds nothing (no checkpoint, no logged
step), else kept, with a FAILED file saying why."""

from __future__ import annotations

import os
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path

from vlft.arguments import SftArguments
from vlft.cli.parsing import build_parser, parse_args
from vlft.errors import ArgumentProblems


def run(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        build_parser(SftArguments, "vlft sft").print_help()
        return 0
    try:  # flags the command does not take, and values that do not convert, fail here
        args, argument_problems = parse_args(SftArguments, argv, "vlft sft"), []
    except ArgumentProblems as e:  # the values' own problems: reported below with the run's others
        if e.arguments is None:
            raise
        args, argument_problems = e.arguments, e.problems
    import torch

    from vlft.train.launch import is_distributed_worker, launch_plan, worker_error_recorded
    from vlft.train.run_dir import failed_run_handled
    from vlft.train.sft import check_run_arguments, run_sft

    # Every problem that shows without data or a model, in one error, before anything is made or loaded.
    if is_distributed_worker(os.environ):  # a worker of the torchrun below (or of one the user started)
        with worker_error_recorded(os.environ):
            run_sft(args, check_run_arguments(args, torch.cuda.is_available(), argument_problems))
        return 0
    checks = check_run_arguments(args, torch.cuda.is_available(), argument_problems)
    # DeepSpeed and FSDP: torchrun, also for one process (they need a process group)
    plan = launch_plan(os.environ, single=bool(args.deepspeed or args.fsdp))
    if plan is not None:
        return launch(plan, args, argv)
    run_dir, created = own_run_dir(args)
    if created:  # the run writes into the dir made here, which is removed or marked FAILED if it fails
        args = parse_args(SftArguments, [*argv, "--output_dir", str(run_dir), "--add_version", "false"], "vlft sft")
    with failed_run_handled(run_dir, created):
        run_sft(args, checks)
    return 0


def own_run_dir(args: SftArguments, nnodes: int = 1) -> tuple[Path | None, bool]:
    """(the run dir, whether it was made here): a new v{N}-{time} dir, --output_dir itself under --add_version
    false, or None on several nodes, whose ranks agree on a new dir once connected."""
    if not args.add_version:
        return Path(args.output_dir), False
    if nnodes > 1:
        return None, False
    from vlft.train.run_dir import new_run_dir

    return new_run_dir(Path(args.output_dir), datetime.now()), True


def launch(plan, args: SftArguments, argv: list[str]) -> int:
    """Run this command under torchrun with `plan`. The model is resolved here (a download or a tiny build
    happens once per node, not once per rank) and, on one node, the run dir is made here; a worker's error is
    printed after torchrun's report, and the run dir is removed or marked FAILED when the run fails."""
    from vlft.model.hub import resolve_model_dir
    from vlft.paths import cache_root
    from vlft.train.launch import WORKER_ERRORS, first_worker_error, launch_outcome, torchrun_command

    model_dir = resolve_model_dir(args.model, use_hf=args.use_hf, cache_root=cache_root(args.cache_dir),
                                  hub_token=args.hub_token, revision=args.model_revision)
    worker_argv = argv + ["--model_dir", str(model_dir)]
    run_dir, created = own_run_dir(args, plan.nnodes)
    if created:
        worker_argv += ["--output_dir", str(run_dir), "--add_version", "false"]
    with tempfile.TemporaryDirectory(prefix="vlft-sft-") as errors:
        code = subprocess.call(torchrun_command(plan, worker_argv), env={**os.environ, WORKER_ERRORS: errors})
        error = first_worker_error(Path(errors))
    return launch_outcome("sft", code, error, run_dir, created)
