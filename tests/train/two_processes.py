"""One torchrun launch of two CPU (gloo) processes running a test worker beside the test process, which computes the
one-process ground truth meanwhile (tests/train/test_fsdp.py, tests/train/test_sequence_parallel.py); `run_once`
keeps pytest-xdist's workers from each making the same launch."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TwoProcessLaunch:
    """`torchrun --nproc_per_node 2 WORKER ARGS` started on entry (no GPU, one thread per process); `finish` waits for
    it and asserts it succeeded; leaving the block stops it if it still runs (a test failed meanwhile)."""

    def __init__(self, worker: Path, args: list[str], cwd: Path):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
        self.command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                        "127.0.0.1", "--master_port", str(free_port()), str(worker), *args]
        self.env, self.cwd = env, cwd

    def __enter__(self) -> TwoProcessLaunch:
        self.process = subprocess.Popen(self.command, env=self.env, cwd=self.cwd, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        return self

    def finish(self, timeout: float) -> str:
        """The launch's output, once it exited with 0."""
        output = self.process.communicate(timeout=timeout)[0]
        assert self.process.returncode == 0, output[-4000:]
        return output

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:  # torchrun stops its workers on SIGTERM (they run in sessions of their own)
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def run_once(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """A dir that `make` fills: under pytest-xdist one worker of the run makes it (under a file lock; the others wait
    and share it, as conftest's `checkpoint` does), else a dir of this session's own. A module fixture of every
    worker that gets some of a module's tests would otherwise make its own launch, two at once on two cores."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        out = tmp_path_factory.mktemp(name)
        make(out)
        return out
    from filelock import FileLock

    out = tmp_path_factory.getbasetemp().parent / name  # the run's dir, above the workers' own
    with FileLock(f"{out}.lock"):
        if not (out / ".made").is_file():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            make(out)
            (out / ".made").touch()
    return out
