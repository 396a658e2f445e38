"""The `launches` fixture: the processes vlft's commands start, with a time limit, and one-process conversions in
this process where no GPU is present."""

from __future__ import annotations

import os
import subprocess
import traceback

import pytest
import torch

# A one-process conversion (`vlft export --to_hf`: `python -m vlft.megatron.worker PLAN`, no torchrun) is the
# worker's main() under the environment vlft/megatron/launch.py gives it: without a GPU it runs here, which saves
# the imports of torch, transformers and Megatron-Core of a process of its own. Conversions of several ranks keep
# torchrun and their processes. With a GPU every conversion is a process of its own, as the user's is.
IN_PROCESS = not torch.cuda.is_available()


@pytest.fixture
def launches(monkeypatch):
    """TIMEOUT -> subprocess.call, as vlft's launchers call it, gives each process TIMEOUT s; when IN_PROCESS, a
    one-process conversion runs in this process (its environment in os.environ meanwhile) and returns the exit
    code its process would: 0, or 1 after printing the traceback (the error is recorded for the launcher either
    way, by the worker's own worker_error_recorded)."""
    real_call = subprocess.call

    def install(timeout: float) -> None:
        def call(command, *args, env=None, **kwargs):
            if not (IN_PROCESS and list(command[1:3]) == ["-m", "vlft.megatron.worker"] and env is not None):
                return real_call(command, *args, env=env, timeout=timeout, **kwargs)
            from vlft.megatron import worker

            with monkeypatch.context() as m:
                for key in set(os.environ) - set(env):
                    m.delenv(key)
                for key, value in env.items():
                    m.setenv(key, value)
                try:
                    return worker.main(list(command[3:]))
                except Exception:
                    traceback.print_exc()
                    return 1

        monkeypatch.setattr(subprocess, "call", call)

    return install
