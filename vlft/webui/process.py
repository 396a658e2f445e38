"""A `vlft sft` run started by the web UI: its own process group (torchrun's workers included), its output
kept as it comes, and a stop that ends the whole group."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
from pathlib import Path

MAX_LOG_LINES = 2000  # the log box shows the tail; the run's own files keep everything


class TrainingProcess:
    """One running (or finished) command; output lines (progress bars' carriage returns as line breaks) kept."""

    def __init__(self, command: list[str], cwd: Path | None = None, env: dict[str, str] | None = None):
        self.command = command
        self._lines: collections.deque[str] = collections.deque(maxlen=MAX_LOG_LINES)
        self._lock = threading.Lock()
        self.stopped = False
        # PYTHONUNBUFFERED: the log shows each line as it is printed, not when a buffer fills.
        self.process = subprocess.Popen(command, cwd=cwd, env={**(env or os.environ), "PYTHONUNBUFFERED": "1"},
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        pending = b""
        while chunk := self.process.stdout.read1(65536):
            parts = (pending + chunk).replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
            pending = parts.pop()
            with self._lock:
                self._lines.extend(p.decode("utf-8", "replace") for p in parts if p.strip())
        if pending.strip():
            with self._lock:
                self._lines.append(pending.decode("utf-8", "replace"))

    def log(self) -> str:
        """The output so far (its last MAX_LOG_LINES lines)."""
        with self._lock:
            return "\n".join(self._lines)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def status(self) -> str:
        code = self.process.poll()
        if code is None:
            return "running"
        if self.stopped:
            return "stopped"
        return "finished" if code == 0 else f"failed (exit code {code})"

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to the process group, SIGKILL if it is still there after `grace_s` seconds."""
        if not self.running:
            return
        self.stopped = True
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:  # ended on its own meanwhile
            pass

    def wait(self, timeout: float | None = None) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code
