"""`vlft sft`: fine-tune (ms-swift's `swift sft` arguments); starts torchrun itself for NPROC_PER_NODE > 1."""

from __future__ import annotations

import os
import subprocess
from datetime import datetime
from pathlib import Path

from vlft.arguments import SftArguments
from vlft.cli.parsing import build_parser, parse_args


def run(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        build_parser(SftArguments, "vlft sft").print_help()
        return 0
    args = parse_args(SftArguments, argv, "vlft sft")  # bad arguments fail here, before anything loads
    from vlft.train.launch import LaunchPlan, is_distributed_worker, launch_plan, torchrun_command

    # DeepSpeed needs a process group even for one process: torchrun provides it.
    plan = launch_plan(os.environ) or (LaunchPlan(nproc_per_node=1) if args.deepspeed else None)
    if plan is not None and not is_distributed_worker(os.environ):
        import torch

        from vlft.train.run_dir import new_run_dir
        from vlft.train.sft import check_run_arguments

        check_run_arguments(args, torch.cuda.is_available())
        # The parent resolves the model (a download or a tiny build happens once per node, not once per rank)
        # and, on one node, picks the run dir; the nodes of a multi-node launch agree on it once connected.
        from vlft.model.hub import resolve_model_dir
        from vlft.paths import cache_root

        model_dir = resolve_model_dir(args.model, use_hf=args.use_hf, cache_root=cache_root(args.cache_dir),
                                      hub_token=args.hub_token, revision=args.model_revision)
        worker_argv = argv + ["--model", str(model_dir)]
        if plan.nnodes == 1 and args.add_version:
            run_dir = new_run_dir(Path(args.output_dir), datetime.now())
            worker_argv += ["--output_dir", str(run_dir), "--add_version", "false"]
        return subprocess.call(torchrun_command(plan, worker_argv))
    from vlft.train.sft import run_sft

    run_sft(args)
    return 0

