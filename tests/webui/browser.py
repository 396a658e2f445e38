"""Shared helpers of the browser tests: the system Chromium, why the tests skip without it, a free port, and where
screenshots go (VLFT_SCREENSHOTS=docs/images refreshes the README's)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    """Debian's chromium (Playwright's own browser download cannot be reached from CI)."""
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def skip_reason() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if importlib.util.find_spec("gradio") is None:
        return 'gradio is not installed (pip install -e ".[dev]")'
    if importlib.util.find_spec("playwright") is None:
        return 'playwright is not installed (pip install -e ".[dev]")'
    if chromium_path() is None:
        return "no chromium on PATH (Debian: apt-get install -y chromium; .ci/run does it as root)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def screenshot_path(tmp_path: Path, name: str) -> Path:
    """Where a test's screenshot goes: $VLFT_SCREENSHOTS (made if missing), else the test's tmp dir."""
    folder = Path(os.environ.get("VLFT_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name
