"""Where vlft keeps its cache (tiny models, encoded datasets)."""

from __future__ import annotations

from pathlib import Path


def cache_root(cache_dir: str | None) -> Path:
    """`--cache_dir` (or VLFT_CACHE_HOME, read by the CLI) else ~/.cache/vlft."""
    return Path(cache_dir).expanduser() if cache_dir else Path.home() / ".cache" / "vlft"
