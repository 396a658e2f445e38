"""The FSDP2 runs of tests/train/test_fsdp.py, started by it under torchrun: one launch (one process group, the
imports paid once) runs `vlft sft` three times, one after another: LoRA and full fine-tuning for 3 steps, then the
LoRA run again from its checkpoint-2.

    python -m torch.distributed.run --nproc_per_node 2 tests/train/fsdp_worker.py OUT_DIR SFT_ARGS...
"""

from __future__ import annotations

import sys

from accelerate.state import AcceleratorState

from vlft.cli.main import main

RUNS = {"lora": ["--save_strategy", "steps", "--save_steps", "2"], "full": ["--train_type", "full"],
        "resumed": ["--resume_from_checkpoint", "{out}/lora/checkpoint-2"]}


if __name__ == "__main__":
    out, *common = sys.argv[1:]
    for name, extra in RUNS.items():
        AcceleratorState._reset_state(True)  # each run builds its accelerator afresh, as in its own launch
        argv = ["sft", *common, *(arg.format(out=out) for arg in extra), "--output_dir", f"{out}/{name}",
                "--add_version", "false"]
        if main(argv) != 0:
            sys.exit(f"vlft {' '.join(argv)} failed")
