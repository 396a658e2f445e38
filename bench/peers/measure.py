"""The same measurements for every trainer in the side-by-side benchmark (vlft, ms-swift, plain
transformers + PEFT), taken from outside the trainer so that none of them needs to log them itself:

- when each optimizer step ended (transformers' CallbackHandler.on_step_end, which every
  Trainer subclass calls),
- how long the training loop waited for each batch (torch's DataLoader iterator `__next__`: the
  data-loader stall), and what the batch held (real tokens, samples, vision tokens),
- the peak GPU memory at the end (torch.cuda.max_memory_allocated).

`install(records)` hooks these into the training process, `Records.dump` writes them; `summarize` turns the records into the table's
metrics. Batch i (in fetch order) belongs to optimizer step i // gradient_accumulation_steps + 1.
Only this file depends on torch's and transformers' internals (two method wraps, process-local)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

MERGE = 4  # Qwen-VL: 2x2 patches per vision token


def batch_counts(batch) -> dict:
    """Real tokens, samples and vision tokens of one collated batch (padded or packed)."""
    import torch

    if not isinstance(batch, Mapping) or "input_ids" not in batch:  # dict, BatchFeature, ...
        return {"tokens": 0, "samples": 0, "vision_tokens": 0}
    input_ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    # vlft's fixed-length rows end in `row_padding` tokens of padding (in segments of their own): left out
    padding = int(batch.get("row_padding", 0))
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        tokens, samples = int(mask.sum()), int(mask.shape[0])
    else:  # padding-free row: one sequence per position-id restart
        tokens = int(input_ids.numel())
        positions = batch.get("text_position_ids", batch.get("position_ids"))
        if isinstance(positions, torch.Tensor):
            text = positions.reshape(-1, positions.shape[-1])[0]
            samples = int((text[:text.shape[0] - padding] == 0).sum())
        else:
            samples = int(input_ids.shape[0])
    grid = batch.get("image_grid_thw")
    vision = int(grid.prod(-1).sum()) // MERGE if isinstance(grid, torch.Tensor) else 0
    return {"tokens": tokens - padding, "samples": samples, "vision_tokens": vision,
            "square_sum": square_sum(batch, padding)}


def square_sum(batch, padding: int = 0) -> int:
    """Sum of n^2 over the batch's samples (the attention term of the FLOPs): padded rows' mask sums squared,
    or, in a padding-free row, sum(2p + 1) over the text positions p that restart at 0 per sample (the last
    `padding` positions left out)."""
    import torch

    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return int((mask.sum(-1).long() ** 2).sum())
    positions = batch.get("text_position_ids", batch.get("position_ids"))
    if isinstance(positions, torch.Tensor):
        text = positions.reshape(-1, positions.shape[-1])[0].long()
        return int((2 * text[:text.shape[0] - padding] + 1).sum())
    return int(batch["input_ids"].shape[-1]) ** 2 * int(batch["input_ids"].shape[0])


def run_logged(command: list[str], log, what: str, **kwargs) -> None:
    """Run `command` with its output in `log`; RuntimeError with the log's last 25 lines if it fails."""
    import subprocess
    from pathlib import Path

    log = Path(log)
    with open(log, "w") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, check=False, **kwargs)
    if done.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise RuntimeError(f"{what} failed ({done.returncode}); end of {log}:\n{tail}")


class Records:
    """What `install` collects in one training process."""

    def __init__(self):
        self.batches: list[dict] = []  # fetch order: wait_s, tokens, samples, vision_tokens
        self.steps: list[dict] = []  # step, t (perf_counter at on_step_end), loss if known
        self.gradient_accumulation_steps = 1

    def dump(self, path: str, **extra) -> None:
        import torch

        out = {"batches": self.batches, "steps": self.steps,
               "gradient_accumulation_steps": self.gradient_accumulation_steps, "device": "cpu", **extra}
        if torch.cuda.is_available():
            out.update(device=torch.cuda.get_device_name(),
                       peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
                       peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30)
        with open(path, "w") as f:
            json.dump(out, f)


def install(records: Records) -> None:
    """Wrap the DataLoader iterator and the step-end callback dispatch of this process."""
    from torch.utils.data import dataloader
    from transformers import trainer_callback

    next_batch = dataloader._BaseDataLoaderIter.__next__

    def timed_next(self):
        start = time.perf_counter()
        batch = next_batch(self)  # StopIteration passes through unrecorded
        records.batches.append({"wait_s": time.perf_counter() - start, **batch_counts(batch)})
        return batch

    step_end = trainer_callback.CallbackHandler.on_step_end

    def clocked_step_end(self, args, state, control):
        records.gradient_accumulation_steps = args.gradient_accumulation_steps
        records.steps.append({"step": state.global_step, "t": time.perf_counter()})
        return step_end(self, args, state, control)

    dataloader._BaseDataLoaderIter.__next__ = timed_next
    trainer_callback.CallbackHandler.on_step_end = clocked_step_end


def summarize(records: dict, warmup_steps: int, config=None) -> dict:
    """Throughput over the steps after the first `warmup_steps` (>= 1), from one run's dumped records; MFU
    over the datasheet bf16 peak (compare_peers.py adds it over the measured matmul peak)."""
    times = {r["step"]: r["t"] for r in records["steps"]}
    last = max(times)
    if warmup_steps < 1 or last <= warmup_steps:
        raise ValueError(f"{last} steps recorded: need more than warmup_steps={warmup_steps} (>= 1)")
    accumulation = records["gradient_accumulation_steps"]
    batches = records["batches"][warmup_steps * accumulation:last * accumulation]
    seconds = times[last] - times[warmup_steps]
    steps = last - warmup_steps
    total = {k: sum(b.get(k, 0) for b in batches) for k in ("tokens", "samples", "vision_tokens", "square_sum",
                                                             "wait_s")}
    step_ms = [round(1000 * (times[step] - times[step - 1]), 1) for step in range(warmup_steps + 1, last + 1)
               if step in times and step - 1 in times]
    result = {"steps_measured": steps, "seconds": seconds, "step_ms": step_ms,
              "tokens_per_second": total["tokens"] / seconds, "samples_per_second": total["samples"] / seconds,
              "tokens_per_step": total["tokens"] / steps,
              "loader_stall_ms_per_step": 1000 * total["wait_s"] / steps,
              "loader_stall_share": total["wait_s"] / seconds,
              "device": records.get("device"), "peak_memory_gib": records.get("peak_allocated_gib"),
              "peak_reserved_gib": records.get("peak_reserved_gib"), "mfu": None, "flops_per_second": None}
    if config is not None:
        from vlft.families import get_family
        from vlft.train.flops import device_peak_flops, training_flops

        flops_per_second = training_flops(get_family(config.model_type), config, total["tokens"], total["vision_tokens"], total["square_sum"]) / seconds
        result["flops_per_second"] = flops_per_second
        peak = device_peak_flops(records.get("device") or "")
        if peak:
            result["mfu"] = flops_per_second / peak
    return result
