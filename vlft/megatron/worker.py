"""One converter process: `python -m vlft.megatron.worker PLAN.json`, started under torchrun by launch.py.

dist_checkpointing's writer starts a multiprocessing Manager by `spawn`, which re-imports this module: it does
nothing at import, and imports nothing heavy (torch, Megatron-Core) until main() runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from vlft.megatron.convert import run_plan
    from vlft.megatron.plan import ConversionPlan
    from vlft.train.launch import worker_error_recorded

    plan = ConversionPlan.from_json(Path(argv[0]).read_text(encoding="utf-8"))
    with worker_error_recorded(os.environ):
        run_plan(plan)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
