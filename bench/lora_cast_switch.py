"""Host time of the per-step LoRA input-cast switch on the Qwen3-VL-4B shape (built on the meta device, so any
machine runs it): PEFT's `disable_input_dtype_casting(model)`, which walks every module twice per call, against
vlft's `LoraLayers.input_casting_off()` (vlft/train/trainer.py), which finds the adapted layers once; and the
other whole-model walks transformers' Trainer makes every step, which SftTrainer replaces by lists taken once
(the parameter count of its FLOPs estimate, the parameters gradient clipping iterates), and the two it keeps
(`model.train()`, which only a copy of Trainer.training_step would skip, and `model.zero_grad()`, made by the
training loop itself). One command:

    python bench/lora_cast_switch.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_qwen3_vl_4b import qwen3_vl_4b_config  # noqa: E402

LLM_LINEAR = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def ms_per_call(call, calls: int = 20, repeats: int = 3) -> float:
    """Median over `repeats` of the mean milliseconds of `call()`."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            call()
        times.append((time.perf_counter() - started) / calls * 1000)
    return statistics.median(times)


def entered(enter):
    """A call that enters and leaves the context manager `enter()` returns."""
    def call():
        with enter():
            pass
    return call


def main() -> int:
    from peft import LoraConfig, get_peft_model
    from peft.helpers import disable_input_dtype_casting
    from transformers import Qwen3VLForConditionalGeneration

    from vlft.train.trainer import LoraLayers

    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(qwen3_vl_4b_config())
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules=LLM_LINEAR))
    layers = LoraLayers(model)
    print(f"modules {sum(1 for _ in model.modules()):,}, adapted layers {len(layers.layers)}\n")
    print("| switch | ms per training step |\n| --- | --- |")
    print(f"| peft.helpers.disable_input_dtype_casting | "
          f"{ms_per_call(entered(lambda: disable_input_dtype_casting(model))):.2f} |")
    print(f"| vlft LoraLayers.input_casting_off | {ms_per_call(entered(layers.input_casting_off)):.2f} |")
    print(f"| model.num_parameters(exclude_embeddings=True) (Trainer.floating_point_ops) | "
          f"{ms_per_call(lambda: model.num_parameters(exclude_embeddings=True)):.2f} |")
    print(f"| list(model.parameters()) (the walk of Trainer's gradient clipping) | "
          f"{ms_per_call(lambda: list(model.parameters())):.2f} |")
    print(f"| model.train() (Trainer.training_step, every step) | {ms_per_call(model.train):.2f} |")
    print(f"| model.zero_grad() (Trainer's loop, every step) | {ms_per_call(model.zero_grad):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
