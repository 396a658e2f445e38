"""What `vlft sft` says before it trains: the data (samples, held out, skipped, rows, tokens, the longest
sample), the optimizer steps it will take, and estimates of its peak memory and its time. Pure functions of
counts; `log_run_summary` gathers the counts from the run and logs the lines."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from vlft.train.chunked_loss import CHUNK
from vlft.train.flops import device_peak_flops, training_flops

logger = logging.getLogger("vlft")

GIB = 1024**3
# The share of the GPU's bf16 peak a step reaches, for the time estimate: a 4B LoRA step on an H200 measured
# about 20% eager and 43% with --torch_compile true (BENCHMARKS.md).
TYPICAL_MFU = 0.3
# Bytes per trained element that DeepSpeed's optimizer keeps beside the gradient: fp32 master weight, AdamW's
# two fp32 moments.
DEEPSPEED_OPTIMIZER_BYTES = 12


@dataclass(frozen=True)
class DataCounts:
    """The training data as it will be trained: samples, rows (packed, or one sample each) and tokens."""

    samples: int
    held_out: int  # eval samples (--val_dataset or --split_dataset_ratio)
    skipped: int  # bad lines left out (--strict false)
    rows: int
    packed: bool
    tokens: int  # per epoch
    labelled: int  # tokens the loss is taken on
    vision_tokens: int  # image and video pads (merged vision tokens)
    square_sum: int  # sum of the samples' lengths squared (causal attention FLOPs)
    longest: int  # tokens of the longest sample
    longest_at: str | None  # its `source:line`
    longest_row: int  # tokens of the longest row


def data_counts(train: list, held_out: int, skipped: int, rows: list, vision_ids: set[int]) -> DataCounts:
    """Counts of the training samples (each with input_ids, labels, source, line) and of their rows: lists of
    samples when packed, else the samples themselves."""
    lengths = [len(s.input_ids) for s in train]
    longest = max(train, key=lambda s: len(s.input_ids))
    packed = bool(rows) and isinstance(rows[0], list)
    row_lengths = [sum(len(s.input_ids) for s in row) for row in rows] if packed else lengths
    return DataCounts(
        samples=len(train), held_out=held_out, skipped=skipped, rows=len(rows), packed=packed, tokens=sum(lengths),
        labelled=sum(len(s.labels) - s.labels.count(-100) for s in train),
        vision_tokens=sum(s.input_ids.count(i) for s in train for i in vision_ids),
        square_sum=sum(n * n for n in lengths), longest=len(longest.input_ids),
        longest_at=f"{longest.source}:{longest.line}" if longest.source else None, longest_row=max(row_lengths))


def steps_per_epoch(rows: int, batch_size: int, grad_accum: int, world_size: int) -> int:
    """Optimizer steps per epoch as transformers' Trainer counts them: each process takes every world_size-th
    batch of batch_size rows (accelerate's even batches), and a step is grad_accum batches, the last one
    shorter (Trainer.set_initial_training_values)."""
    batches = math.ceil(math.ceil(rows / batch_size) / world_size)
    return max(math.ceil(batches / grad_accum), 1)


def optimizer_steps(per_epoch: int, epochs: float, max_steps: int) -> int:
    """The run's optimizer steps: --max_steps when positive, else the epochs' (rounded up, as Trainer does)."""
    return max_steps if max_steps > 0 else math.ceil(epochs * per_epoch)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per process at the peak of a step."""

    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations


def memory_estimate(weight_bytes: int, trained_bytes: int, trained_numel: int, activations: int,
                    zero_stage: int | None = None, world_size: int = 1) -> MemoryEstimate:
    """Weights (every parameter, in the dtype it is loaded in: LoRA adapters in fp32, as PEFT keeps them),
    gradients of the trained parameters (their dtype), AdamW's two moments (torch's AdamW: each the size and
    dtype of its parameter; DeepSpeed's: fp32 moments and an fp32 master copy), and activations. ZeRO stage
    (`zero_stage`, None without DeepSpeed) 1 shards the optimizer over the processes, 2 also the gradients,
    3 also the weights."""
    stage = zero_stage or 0
    optimizer = trained_numel * DEEPSPEED_OPTIMIZER_BYTES if zero_stage is not None else 2 * trained_bytes

    def shard(size: int, from_stage: int) -> int:
        return math.ceil(size / world_size) if stage >= from_stage else size

    return MemoryEstimate(weights=shard(weight_bytes, 3), gradients=shard(trained_bytes, 2),
                          optimizer=shard(optimizer, 1), activations=activations)


# Bytes per logit while transformers' loss runs over a whole row: the logits (bf16), their float32 copy and
# the float32 log-softmax its cross-entropy saves (chunked_loss.py's docstring).
LOSS_BYTES_PER_LOGIT_EXTRA = 8


def loss_transient_bytes(tokens: int, vocab: int, hidden: int, chunked_loss: bool, chunk: int,
                         dtype_bytes: int) -> int:
    """Working memory of the loss: the logits of every position (their dtype, a float32 copy, the float32
    log-softmax), or with the chunked loss one chunk of them (float32 logits, their softmax in place, its dtype
    copy) beside the hidden states' gradient, which it computes in the forward."""
    if chunked_loss:
        return min(tokens, chunk) * vocab * (4 + dtype_bytes) + tokens * hidden * dtype_bytes
    return tokens * vocab * (dtype_bytes + LOSS_BYTES_PER_LOGIT_EXTRA)


def activation_bytes(tokens: int, hidden: int, intermediate: int, layers: int, vocab: int, dtype_bytes: int,
                     checkpointing: bool, chunked_loss: bool, chunk: int = CHUNK) -> int:
    """The LLM's activations kept for the backward of a batch of `tokens` tokens, roughly. A decoder layer
    keeps about 8 x hidden + 4 x intermediate elements per token (its norms' and projections' inputs, q, k, v
    and the attention output; the SwiGLU MLP's gate, up, activation and product); with gradient checkpointing
    only each layer's input is kept and one layer's activations exist at a time (its recompute). The loss
    keeps the logits (dtype), their fp32 copy and its log-softmax (fp32) unless --chunked_loss scores them in
    chunks (loss_transient_bytes). The vision tower's (frozen by default, run without gradients) are left out."""
    layer = tokens * (8 * hidden + 4 * intermediate) * dtype_bytes
    kept = tokens * hidden * dtype_bytes * layers + layer if checkpointing else layer * layers
    return kept + loss_transient_bytes(tokens, vocab, hidden, chunked_loss, chunk, dtype_bytes)


def training_seconds(flops: float, world_size: int, peak_flops: float | None, mfu: float = TYPICAL_MFU
                     ) -> float | None:
    """Seconds for `flops` spread over world_size GPUs at `mfu` of a GPU's peak; None when the peak is unknown."""
    return flops / (world_size * peak_flops * mfu) if peak_flops else None


def format_duration(seconds: float) -> str:
    """`45 s`, `12 min`, `3 h 05 min`."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def summary_lines(counts: DataCounts, max_length: int | None, batch_size: int, grad_accum: int, world_size: int,
                  per_epoch: int, steps: int, max_steps: int, memory: MemoryEstimate, device: str | None,
                  device_memory: int | None, seconds: float | None, flops: float) -> list[str]:
    """The summary's lines: data, steps, memory, time. `device` is the GPU's name, None on CPU."""
    held = f", {counts.held_out:,} held out for eval" if counts.held_out else ""
    skipped = f", {counts.skipped:,} bad line(s) skipped" if counts.skipped else ""
    if counts.packed:
        fill = f" ({100 * counts.tokens / (counts.rows * max_length):.0f}% full)" if max_length else ""
        rows = f"{counts.rows:,} packed rows of at most {max_length:,} tokens{fill}"
    else:
        rows = f"{counts.rows:,} rows (one sample each)"
    where = f" ({counts.longest_at})" if counts.longest_at else ""
    data = (f"data: {counts.samples:,} training samples{held}{skipped}; {rows}; {counts.tokens:,} tokens per epoch, "
            f"{counts.labelled:,} of them trained (labelled); longest sample {counts.longest:,} tokens{where}")
    per_step = (f"{per_epoch:,} per epoch = {counts.rows:,} rows / ({batch_size} per device x {world_size} "
                f"process(es) or sequence-parallel group(s)) / {grad_accum} accumulated")
    plan = (f"steps: {steps:,} optimizer steps (--max_steps; {per_step}, {steps / per_epoch:.3g} epochs)"
            if max_steps > 0 else f"steps: {steps:,} optimizer steps ({steps / per_epoch:.3g} epochs x {per_step})")
    of = f" of {device_memory / GIB:.1f} GiB on {device}" if device and device_memory else ""
    peak = (f"peak memory: about {memory.total / GIB:.2f} GiB per process{of} (estimate: weights "
            f"{memory.weights / GIB:.2f}, gradients {memory.gradients / GIB:.2f}, optimizer states "
            f"{memory.optimizer / GIB:.2f}, activations of the longest batch {memory.activations / GIB:.2f} GiB; "
            "framework overhead not counted)")
    if device is None:
        time = "time: unknown on CPU"
    elif seconds is None:
        time = f"time: unknown (no bf16 peak known for {device})"
    else:
        time = (f"time: about {format_duration(seconds)} ({flops:.3g} FLOPs at {100 * TYPICAL_MFU:.0f}% of the "
                f"{device}'s bf16 peak; an estimate)")
    return [data, plan, peak, time]


def log_run_summary(args, training_args, model, family, encoder, train: list, val: list, skipped: list,
                    train_rows: list, ds_config: dict | None, chunked_loss: bool) -> None:
    """Log the data, steps, memory and time summary of a run about to train (on the main process only);
    `chunked_loss`: whether the run computes its loss in chunks (the flag, or the fast path's default). The
    activations assume every decoder layer recomputes unless --gradient_checkpointing false (the memory plan
    of --gradient_checkpointing auto logs its own estimate)."""
    import torch

    if training_args.process_index != 0:
        return
    counts = data_counts(train, len(val), len(skipped), train_rows,
                         {i for i in (encoder.image_pad_id, encoder.video_pad_id) if i is not None})
    world = training_args.world_size
    groups = world // args.sequence_parallel_size  # the ranks of a sequence group share each row
    per_epoch = steps_per_epoch(counts.rows, args.per_device_train_batch_size, args.gradient_accumulation_steps,
                                groups)
    steps = optimizer_steps(per_epoch, args.num_train_epochs, args.max_steps)

    def size(p) -> int:
        return getattr(p, "ds_numel", p.numel())  # ZeRO-3 partitions parameters: ds_numel is the full size

    parameters = list(model.parameters())
    trained = [p for p in parameters if p.requires_grad]
    text = model.config.text_config
    # MoE layers: each token goes through its top-k experts (and a shared expert, where there is one).
    intermediate = (text.moe_intermediate_size * text.num_experts_per_tok
                    + (getattr(text, "shared_expert_intermediate_size", 0) or 0)
                    if getattr(text, "num_experts_per_tok", None) else text.intermediate_size)
    activations = activation_bytes(counts.longest_row * args.per_device_train_batch_size // args.sequence_parallel_size,
                                   text.hidden_size,
                                   intermediate, text.num_hidden_layers, text.vocab_size, model.dtype.itemsize,
                                   args.gradient_checkpointing is not False, chunked_loss)
    zero_stage = int(ds_config.get("zero_optimization", {}).get("stage", 0)) if ds_config is not None else None
    memory = memory_estimate(sum(size(p) * p.element_size() for p in parameters),
                             sum(size(p) * p.element_size() for p in trained), sum(size(p) for p in trained),
                             activations, zero_stage, world)
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else None
    device_memory = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory if cuda else None
    flops = training_flops(family, model.config, counts.tokens, counts.vision_tokens, counts.square_sum) * (
        steps / per_epoch)
    seconds = training_seconds(flops, world, device_peak_flops(device) if device else None)
    for line in summary_lines(counts, args.row_length if args.packing else None, args.per_device_train_batch_size,
                              args.gradient_accumulation_steps, groups, per_epoch, steps, args.max_steps, memory,
                              device, device_memory, seconds, flops):
        logger.warning(line)
