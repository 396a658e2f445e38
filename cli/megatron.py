"""`vlft megatron sft`: training on Megatron-Core (Megatron-SWIFT's `megatron sft` arguments) with vlft's data
pipeline. Always runs under torchrun (NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT as `vlft sft`);
every problem that shows before the model loads is reported at once. A failed run's v{N}-{time} dir is removed
when it holds nothing, else kept with a FAILED file saying why."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path

from vlft.cli.parsing import build_parser, parse_args
from vlft.errors import ArgumentProblems, VlftError
from vlft.megatron.arguments import MegatronSftArguments

USAGE = """usage: vlft megatron sft [<args>]

Megatron-Core training with vlft's data pipeline (docs/megatron.md).
`vlft megatron sft --help` describes its arguments."""


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] != "sft":
        raise VlftError(f"unknown megatron command {argv[0]!r}: vlft megatron sft")
    argv = argv[1:]
    if "-h" in argv or "--help" in argv:
        build_parser(MegatronSftArguments, "vlft megatron sft").print_help()
        return 0
    try:
        args, problems = parse_args(MegatronSftArguments, argv, "vlft megatron sft"), []
    except ArgumentProblems as e:  # reported below with the model's and the launch's problems
        if e.arguments is None:
            raise
        args, problems = e.arguments, list(e.problems)
    from vlft.megatron import require_megatron
    from vlft.train.launch import is_distributed_worker, worker_error_recorded

    require_megatron()
    if is_distributed_worker(os.environ):  # a worker of the torchrun below (or of one the user started)
        from vlft.megatron.sft import run_megatron_sft

        with worker_error_recorded(os.environ):
            if problems:
                raise ArgumentProblems(problems)
            run_megatron_sft(args, Path(args.save))
        return 0
    return launch(args, argv, problems)


def launch(args: MegatronSftArguments, argv: list[str], problems: list[str]) -> int:
    """Resolve the model once per node, check everything, make the run dir, and run the workers under torchrun."""
    import torch

    from vlft.errors import listed_problems
    from vlft.families import detect_family
    from vlft.megatron.checkpoint import read_checkpoint, write_model_files
    from vlft.megatron.sft import check_model, check_world
    from vlft.megatron.train_checkpoint import resume_problems
    from vlft.model.hub import resolve_model_dir
    from vlft.paths import cache_root
    from vlft.train.launch import WORKER_ERRORS, first_worker_error, launch_outcome, launch_plan, torchrun_command
    from vlft.train.run_dir import new_run_dir

    plan = launch_plan(os.environ, single=True)
    if plan.nnodes == 1 and not os.environ.get("MASTER_PORT", "").strip():  # one host: any free port will do
        from dataclasses import replace

        from vlft.megatron.launch import free_port

        plan = replace(plan, master_port=free_port())
    problems += check_world(args, plan.nproc_per_node * plan.nnodes)
    if torch.cuda.is_available() and plan.nproc_per_node > torch.cuda.device_count():
        problems.append(f"NPROC_PER_NODE={plan.nproc_per_node} but this host has {torch.cuda.device_count()} GPU(s): "
                        "Megatron-Core runs one process per GPU (NCCL refuses two ranks on one device)")
    with tempfile.TemporaryDirectory(prefix="vlft-megatron-") as scratch:
        model_dir = None
        try:
            if args.load:
                found = read_checkpoint(Path(args.load).expanduser())
                model_dir = write_model_files(found, Path(scratch) / "model")
                if not args.finetune:
                    problems += resume_problems(found.args, args)
            elif args.model:
                model_dir = resolve_model_dir(args.model, use_hf=args.use_hf, cache_root=cache_root(args.cache_dir),
                                              hub_token=args.hub_token, revision=args.model_revision)
        except VlftError as e:
            problems.append(str(e))
        if model_dir is not None:
            try:
                family = detect_family(model_dir, args.model_type)
                hf_config = json.loads((model_dir / "config.json").read_text())
                problems += check_model(args, family, hf_config, torch.cuda.is_available())
            except VlftError as e:
                problems.append(str(e))
        if problems:
            raise VlftError(listed_problems(problems))
        worker_argv = [*argv, "--model_dir", str(model_dir)]
        created = args.add_version and plan.nnodes == 1
        run_dir = new_run_dir(Path(args.save), datetime.now()) if created else Path(args.save)
        worker_argv += ["--save", str(run_dir), "--add_version", "false"]
        with tempfile.TemporaryDirectory(prefix="vlft-sft-") as errors:
            code = subprocess.call(torchrun_command(plan, worker_argv, ("megatron", "sft")),
                                   env={**os.environ, WORKER_ERRORS: errors})
            error = first_worker_error(Path(errors))
    outcome = launch_outcome("megatron sft", code, error, run_dir, created)
    if outcome == 0:
        print(f"vlft megatron sft: wrote {run_dir}")
    return outcome

