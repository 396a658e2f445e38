"""Run a training module (`python -m MODULE ARGS...`) with measure.py's hooks and write its records:

    python bench/peers/measured_run.py RECORDS.json swift.cli.sft --model ... --dataset ...
    python bench/peers/measured_run.py RECORDS.json vlft.cli.main sft --model ... --dataset ...

Imports nothing of vlft, so it runs in ms-swift's own environment too."""

from __future__ import annotations

import runpy
import sys

from measure import Records, install


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    path, module = sys.argv[1], sys.argv[2]
    records = Records()
    install(records)
    sys.argv = [module, *sys.argv[3:]]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        records.dump(path)


if __name__ == "__main__":
    main()
