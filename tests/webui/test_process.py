"""A run the web UI starts: its output streamed line by line, its whole process group ended by Stop."""

from __future__ import annotations

import os
import sys
import time

from vlft.webui.process import TrainingProcess

# A parent that starts a child in its own group (as torchrun starts workers), prints the child's pid, then waits.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("child", child.pid, flush=True)
time.sleep(60)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has ended
        return f.read().split(")")[-1].split()[0] != "Z"


def test_output_lines_and_carriage_returns_become_log_lines():
    run = TrainingProcess([sys.executable, "-c", "print('a'); print('b\\rc', end='\\r\\n'); print('d', end='')"])
    assert run.wait(timeout=30) == 0
    assert run.log() == "a\nb\nc\nd"
    assert run.status() == "finished"


def test_failure_is_reported_with_its_exit_code():
    run = TrainingProcess([sys.executable, "-c", "raise SystemExit(3)"])
    run.wait(timeout=30)
    assert run.status() == "failed (exit code 3)"


def test_stop_ends_the_whole_process_group():
    run = TrainingProcess([sys.executable, "-c", PARENT])
    deadline = time.monotonic() + 30
    while "child" not in run.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(run.log().split()[1])
    assert run.running and alive(child)
    run.stop(grace_s=10)
    assert run.status() == "stopped"
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)
