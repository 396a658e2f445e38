"""The `launches` fixture: the processes vlft's commands start, with a time limit, and one-process runs (a
conversion, or `vlft megatron sft` on one process) in this process where no GPU is present."""

from __future__ import annotations

import os
import subprocess
import traceback

import pytest
import torch

# A one-process conversion (`vlft export --to_hf`: `python -m vlft.megatron.worker PLAN`, no torchrun) is the
# worker's main() under the environment vlft/megatron/launch.py gives it: without a GPU it runs here, which saves
# the imports of torch, transformers and Megatron-Core of a process of its own. Conversions of several ranks keep
# torchrun and their processes. Likewise a one-process `vlft megatron sft` (torchrun --nproc_per_node 1): its one
# worker, `vlft megatron sft` under the environment torchrun gives it, runs here (its launcher, torchrun's command line
# and two-process runs stay as they are). With a GPU every conversion and run is a process of its own, as the
# user's is.
IN_PROCESS = not torch.cuda.is_available()


def one_process_torchrun(command) -> tuple[dict[str, str], list[str]] | None:
    """For `torchrun --nproc_per_node 1 --nnodes 1 ... -m vlft.cli.main megatron sft ...` (as torchrun's own parser
    reads it): the environment torchrun gives its one worker and the worker's `vlft` ARGV; None for any other
    command."""
    if list(command[1:3]) != ["-m", "torch.distributed.run"]:
        return None
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(list(command[3:]))
    if not (args.module and args.training_script == "vlft.cli.main" and args.training_script_args[:2] == [
            "megatron", "sft"] and str(args.nproc_per_node) == "1" and str(args.nnodes) == "1" and not args.standalone):
        return None
    env = {"RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0", "ROLE_RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_WORLD_SIZE": "1", "GROUP_WORLD_SIZE": "1", "ROLE_WORLD_SIZE": "1", "MASTER_ADDR": args.master_addr,
           "MASTER_PORT": str(args.master_port)}
    return env, list(args.training_script_args)


@pytest.fixture
def launches(monkeypatch):
    """TIMEOUT -> subprocess.call, as vlft's launchers call it, gives each process TIMEOUT s; when IN_PROCESS, a
    one-process conversion, or the one worker of a one-process `vlft megatron sft` torchrun, runs in this process
    (its environment in os.environ meanwhile, RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT as torchrun
    would give them) and returns the exit code its process would: its main()'s, or 1 after printing the traceback
    (the error is recorded for the launcher either way, by the worker's own worker_error_recorded). Runs of several
    processes keep torchrun and their processes."""
    real_call = subprocess.call

    def install(timeout: float) -> None:
        def call(command, *args, env=None, **kwargs):
            converter = list(command[1:3]) == ["-m", "vlft.megatron.worker"]
            worker = one_process_torchrun(command) if IN_PROCESS and env is not None and not converter else None
            if not (IN_PROCESS and env is not None and (converter or worker)):
                return real_call(command, *args, env=env, timeout=timeout, **kwargs)
            if converter:
                from vlft.megatron.worker import main

                argv = list(command[3:])
            else:
                from vlft.cli.main import main

                env, argv = {**env, **worker[0]}, worker[1]
            with monkeypatch.context() as m:
                for key in set(os.environ) - set(env):
                    m.delenv(key)
                for key, value in env.items():
                    m.setenv(key, value)
                try:
                    return main(argv)
                except Exception:
                    traceback.print_exc()
                    return 1

        monkeypatch.setattr(subprocess, "call", call)

    return install
