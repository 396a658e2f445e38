"""Where a `vlft sft` step (the real CLI path: Trainer, data-loader workers, callbacks) leaves the GPU idle:
the run of compare_peers.py's vlft column, in this process, with torch.profiler over a window of steps and
labelled host ranges (data fetch, forward, vision tower, language model, backward, grad clip, optimizer,
between steps); bench/trace_gaps.py turns the trace into GPU busy / idle per range and the host syncs.
GPU machine; one command (extra arguments go to `vlft sft`):

    python bench/trainer_step_gaps.py --workdir /tmp/vb --samples 300 --start 8 --steps 3 -- --torch_compile true

The harness wraps a few methods of this process only (like bench/peers/measure.py): the step-begin / step-end
callback dispatch, the DataLoader iterator, Accelerator.backward and clip_grad_norm_.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from sft_qwen3_vl_4b import build_model, write_data  # noqa: E402
from trace_gaps import PHASE_PREFIX, gap_report  # noqa: E402


class Ranges:
    """record_function ranges opened and closed from hooks (LIFO per thread, as the profiler requires)."""

    def __init__(self):
        self.open: dict[str, object] = {}
        self.active = False

    def begin(self, name: str) -> None:
        if self.active and name not in self.open:
            rf = torch.autograd.profiler.record_function(PHASE_PREFIX + name)
            rf.__enter__()
            self.open[name] = rf

    def end(self, name: str) -> None:
        rf = self.open.pop(name, None)
        if rf is not None:
            rf.__exit__(None, None, None)

    def wrap(self, owner, method: str, name: str) -> None:
        original = getattr(owner, method)

        def wrapped(*args, **kwargs):
            self.begin(name)
            try:
                return original(*args, **kwargs)
            finally:
                self.end(name)

        setattr(owner, method, wrapped)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def install(ranges: Ranges, start: int, steps: int, trace_path: Path) -> None:
    from accelerate import Accelerator
    from torch.utils.data import dataloader
    from transformers import trainer_callback

    state = {"profiler": None, "hooked": False, "t0": None, "tokens": 0}
    ranges.wrap(dataloader._BaseDataLoaderIter, "__next__", "data fetch")
    ranges.wrap(Accelerator, "backward", "backward")
    ranges.wrap(Accelerator, "clip_grad_norm_", "grad clip")
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    register_optimizer_step_pre_hook(lambda *a: ranges.begin("optimizer step"))
    register_optimizer_step_post_hook(lambda *a: ranges.end("optimizer step"))
    step_begin, step_end = trainer_callback.CallbackHandler.on_step_begin, trainer_callback.CallbackHandler.on_step_end

    def hook_model(model) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        for name, module in (("forward", model), ("vision tower", base.model.visual),
                             ("language model", base.model.language_model)):
            module.register_forward_pre_hook(lambda *a, n=name: ranges.begin(n))
            module.register_forward_hook(lambda *a, n=name: ranges.end(n))

    def on_step_begin(self, args, st, control):
        if not state["hooked"]:
            hook_model(self.model)
            state["hooked"] = True
        if st.global_step == start and state["profiler"] is None:
            from torch.profiler import ProfilerActivity, profile

            sync()
            state["profiler"] = profile(activities=[ProfilerActivity.CPU] + (
                [ProfilerActivity.CUDA] if torch.cuda.is_available() else []))
            state["profiler"].__enter__()
            ranges.active = True
            state["t0"] = time.perf_counter()
        ranges.end("between steps")
        ranges.begin("step")
        return step_begin(self, args, st, control)

    def on_step_end(self, args, st, control):
        out = step_end(self, args, st, control)
        ranges.end("step")
        if state["profiler"] is not None and st.global_step == start + steps:
            sync()
            wall = time.perf_counter() - state["t0"]
            ranges.active = False
            for name in list(ranges.open):
                ranges.end(name)
            prof = state["profiler"]
            prof.__exit__(None, None, None)
            state["profiler"] = None
            prof.export_chrome_trace(str(trace_path))
            print(f"\n## {steps} profiled steps: {1000 * wall / steps:.0f} ms per step (wall, profiler on)\n")
            with open(trace_path) as f:
                print(gap_report(json.load(f), steps))
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
            sys.stdout.flush()
        else:
            ranges.begin("between steps")
        return out

    trainer_callback.CallbackHandler.on_step_begin = on_step_begin
    trainer_callback.CallbackHandler.on_step_end = on_step_end


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vb"))
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--max_length", type=int, default=4096)
    parser.add_argument("--start", type=int, default=8, help="first profiled step (after warm-up and compilation)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="the built-in tiny Qwen3-VL (CPU check of the script)")
    parser.add_argument("sft_args", nargs="*", help="after --: more `vlft sft` arguments")
    args = parser.parse_args()
    if args.tiny:
        from vlft.model.tiny import build_tiny_model

        model = args.workdir / "tiny-qwen3-vl"
        if not (model / "config.json").is_file():
            build_tiny_model("qwen3_vl", model)
    else:
        model = args.workdir / "qwen3-vl-4b-random"
        build_model(model)
    data = write_data(args.workdir / "data", args.samples)
    install(Ranges(), args.start, args.steps, args.workdir / "trace.json")
    from vlft.cli.main import main as vlft_main

    argv = ["sft", "--model", str(model), "--dataset", str(data), "--train_type", "lora", "--lora_rank", "8",
            "--lora_alpha", "32", "--lora_dropout", "0", "--target_modules", "all-linear", "--torch_dtype",
            "bfloat16", "--packing", "true", "--max_length", str(args.max_length), "--gradient_checkpointing",
            "true", "--max_steps", str(args.start + args.steps + 1), "--learning_rate", "1e-4", "--logging_steps",
            "5", "--save_steps", "100000", "--dataset_num_proc", "1", "--dataloader_num_workers", "4",
            "--report_to", "none", "--output_dir", str(args.workdir / "runs_gaps"), *args.sft_args]
    return vlft_main(argv) or 0


if __name__ == "__main__":
    sys.exit(main())
