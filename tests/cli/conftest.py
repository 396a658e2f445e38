"""The `vlft_console` fixture: a console-script command run in this process where that is the same run."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

VLFT = str(Path(sys.executable).with_name("vlft"))
# Without a GPU a launcher runs in this process through the console script's entry point (its torchrun and workers
# are processes of their own either way), which saves the imports of a launcher process; with one, every command
# is a process of its own (the environments the tests give hide or pick GPUs, which this process already saw).
IN_PROCESS = not torch.cuda.is_available()


@pytest.fixture
def vlft_console(capfd, monkeypatch):
    """(ARGV, ENV, CWD) -> (exit code, stdout + stderr) of the console script `VLFT ARGV` (ARGV[0] is VLFT) under
    ENV, run from CWD: in this process when IN_PROCESS (ENV in os.environ and CWD the working dir meanwhile;
    torchrun gets 600 s), else in a process of its own."""
    monkeypatch.setattr(subprocess, "call", functools.partial(subprocess.call, timeout=600))

    def run(argv: list[str], env: dict, cwd: Path) -> tuple[int, str]:
        assert argv[0] == VLFT
        if not IN_PROCESS:
            done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
            return done.returncode, done.stdout + done.stderr
        from vlft.cli.main import main

        with monkeypatch.context() as m:
            for key in set(os.environ) - set(env):
                m.delenv(key)
            for key, value in env.items():
                m.setenv(key, value)
            m.chdir(cwd)
            capfd.readouterr()
            code = main(argv[1:])
            out, err = capfd.readouterr()
        return code, out + err

    return run
