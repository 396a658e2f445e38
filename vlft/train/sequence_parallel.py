"""`--sequence_parallel_size N` (ms-swift's flag): Ulysses sequence parallelism. The processes form groups of N
consecutive ranks; the ranks of a group train the same packed row, each the tokens of 1/N of it.

- Data: accelerate deals batches to processes in turn; here it deals them to groups (`deal_batches_to_groups`), so
  every rank of a group gets the same row, and the groups different rows (data parallelism over world / N).
- Model: every rank runs the embeddings and the vision tower over the whole row (all its images and frames: the
  tower is small beside the LLM, and splitting it would cut images apart), then a forward pre-hook on the language
  model (`SequenceParallel.split_language_model_inputs`) pads the row to a multiple of N (the padding a sample of its
  own), gives attention the whole row's sample boundaries, and keeps this rank's slice of the embeddings, of the
  (4, 1, L) position ids the collator made for the whole row (so mRoPE is the whole row's) and of the family's
  visual-token inputs (Qwen3-VL's deepstack features). The language model's attention runs through ulysses.py's
  all-to-all; so do a hybrid family's linear-attention layers (Qwen3.5's Gated DeltaNet: the convolution and the
  delta rule on the whole row of the rank's heads, linear_attention.PackedGatedDeltaNet.split_heads_over).
- Loss: the targets are the whole row's labels shifted left first (`shard_targets`: no target is lost at a shard's
  edge), then sliced; the summed loss of a shard is divided by the group's count of targets and multiplied by N,
  because DDP (and DeepSpeed, FSDP) average gradients over all world ranks while the group's ranks each hold a part
  of one row's gradient: the average is then one process's gradient of the row's mean loss (and the mean of the
  logged losses the row's loss).
- DeepSpeed (ZeRO-2, ZeRO-3): its data-parallel group is the whole world (accelerate gives it no `mpu`, so its own
  sequence-parallel size stays 1 and ZeRO divides the reduced gradients by the world size, as DDP does), and
  accelerate prepares the loaders with BatchSamplerShard under DeepSpeed too. Under ZeRO-3 the pre-hook only slices
  the language model's inputs (no parameter is read), and every rank runs the same modules in the same order (the
  ranks of a group the same row; the vision tower once per modality on every rank, zero3.BalancedVisionCalls), so
  the parameter gathers stay in step. Tested against one process (tests/train/test_sequence_parallel.py).
- torch.compile (--torch_compile true, and the fast path's default on CUDA): the all-to-alls are torch.distributed's
  functional collectives, which dynamo traces, so a decoder layer still compiles whole into one graph, its gradient
  checkpoint included (compile.py; its recomputation repeats the all-to-alls, as in eager mode). Tested against one
  process eager (aot_eager on CPU). Not with CUDA graphs (--torch_compile_mode reduce-overhead): refused in
  sequence_parallel_problems, off in the fast path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vlft.data.encode import IGNORE_INDEX
from vlft.families import family_of, module_at
from vlft.families.base import Family
from vlft.train.attention import row_boundary_kwargs
from vlft.train.chunked_loss import next_token_targets


@dataclass(frozen=True)
class SequenceGroup:
    """This process's place: rank `rank` of a sequence group of `size`, in data-parallel group `data_rank` of
    `data_size` (world = size x data_size)."""

    size: int
    rank: int
    data_rank: int
    data_size: int
    group: dist.ProcessGroup | None = None


def new_sequence_group(size: int) -> SequenceGroup:
    """The sequence groups of the initialised world (ranks [0, size), [size, 2 size), ...): every rank creates every
    group, as torch.distributed requires; returns this rank's."""
    world, rank = dist.get_world_size(), dist.get_rank()
    mine = None
    for first in range(0, world, size):
        group = dist.new_group(list(range(first, first + size)))
        if first <= rank < first + size:
            mine = group
    return SequenceGroup(size=size, rank=rank % size, data_rank=rank // size, data_size=world // size, group=mine)


def padded_length(length: int, size: int) -> int:
    """The row length rounded up to a multiple of the group size."""
    return -(-length // size) * size


def shard_range(length: int, size: int, rank: int) -> tuple[int, int]:
    """[start, end) of rank's tokens in a row of `length` (a multiple of size)."""
    shard = length // size
    return rank * shard, (rank + 1) * shard


def shard_targets(labels: torch.Tensor, size: int, rank: int) -> torch.Tensor:
    """(1, S) next-token targets of rank's shard: the whole row's labels shifted left, padded, then sliced."""
    targets = next_token_targets(labels)
    padding = padded_length(targets.shape[1], size) - targets.shape[1]
    targets = F.pad(targets, (0, padding), value=IGNORE_INDEX)
    start, end = shard_range(targets.shape[1], size, rank)
    return targets[:, start:end]


def padded_positions(position_ids: torch.Tensor, padding: int) -> torch.Tensor:
    """(4, 1, L) position ids with `padding` more tokens, numbered from 0: a sample of their own."""
    extra = torch.arange(padding, device=position_ids.device, dtype=position_ids.dtype)
    return torch.cat([position_ids, extra.expand(position_ids.shape[0], 1, padding)], dim=-1)


def sequence_parallel_problems(args) -> list[str]:
    """What `--sequence_parallel_size` above 1 does not run with, from the arguments alone."""
    size = args.sequence_parallel_size
    if size <= 1:
        return []
    flag, problems = f"--sequence_parallel_size {size}", []
    if not args.padding_free:
        problems.append(f"{flag} splits packed rows along the sequence: it needs --packing true or --padding_free true")
    if args.fsdp:
        problems.append(f"{flag} with --fsdp: not tried yet; use --deepspeed zero2 / zero3, or neither (DDP over the "
                        "sequence groups)")
    if args.torch_compile_mode == "reduce-overhead":
        problems.append(f"{flag} with --torch_compile_mode reduce-overhead: CUDA graphs around the all-to-alls "
                        "inside attention are not tried (NCCL collectives captured in graphs; the whole row's "
                        "boundaries, recomputed for each row, vary in shape); use --torch_compile true")
    if args.router_aux_loss_coef:
        problems.append(f"{flag} with --router_aux_loss_coef: the MoE load-balancing loss over a shard is not the "
                        "row's; leave it unset or 0")
    if args.attn_impl in ("sdpa", "eager"):
        problems.append(f"{flag} with --attn_impl {args.attn_impl}: the sequence-parallel attention runs vlft's varlen "
                        "attention on whole samples (block-diagonal sdpa on CPU); leave --attn_impl unset")
    return problems


def sequence_parallel_model_problems(size: int, world_size: int, family: Family, text_config) -> list[str]:
    """What `--sequence_parallel_size` does not run with on this launch and model (before the model loads)."""
    if size <= 1:
        return []
    flag, problems = f"--sequence_parallel_size {size}", []
    if world_size % size:
        problems.append(f"{flag} needs a number of processes that it divides (NPROC_PER_NODE x NNODES), got "
                        f"{world_size}")
    heads = text_config.num_attention_heads
    if heads % size:
        problems.append(f"{flag}: the model's {heads} attention heads do not divide among {size} ranks")
    if family.hybrid:  # each rank runs the linear attention of whole key heads and their value heads
        k_heads, v_heads = text_config.linear_num_key_heads, text_config.linear_num_value_heads
        if k_heads % size or v_heads % size:
            problems.append(f"{flag}: the model's linear attention has {k_heads} key and {v_heads} value heads; "
                            f"both must divide among {size} ranks")
    return problems


class SequenceParallel:
    """This rank's share of each packed row (see the module docstring)."""

    def __init__(self, shard: SequenceGroup, visual_token_inputs: tuple[str, str] | None = None):
        self.shard = shard
        self.visual_token_inputs = visual_token_inputs  # Family.visual_token_inputs

    def attach(self, model: nn.Module) -> None:
        """The language model's attention (and a hybrid family's linear attention) through Ulysses' all-to-all, and
        its inputs split by a forward pre-hook (registered after attention.RowBoundaries' own, so the whole row's
        boundaries given here win)."""
        from vlft.train.ulysses import register_ulysses_attention

        name = register_ulysses_attention(self.shard.group, self.shard.size)
        family = family_of(model)
        language_model = module_at(model, family.modules.language_model)
        language_model.config._attn_implementation = name  # the text config only: the vision tower keeps its own
        language_model.register_forward_pre_hook(self.split_language_model_inputs, with_kwargs=True)
        if family.hybrid:
            self.split_linear_attention_heads(module_at(model, family.modules.decoder_layers),
                                              family.modules.linear_attention)

    def split_linear_attention_heads(self, layers: nn.ModuleList, attribute: str) -> None:
        """Each layer's linear-attention mixer (`layer.<attribute>`, the family's) splits its heads over the group."""
        from vlft.train.linear_attention import PackedGatedDeltaNet

        for layer in layers:
            mixer = getattr(layer, attribute, None)
            if mixer is None:
                continue
            if not isinstance(mixer, PackedGatedDeltaNet):
                raise ValueError(f"sequence parallelism: {type(mixer).__name__} at layers[...].{attribute} is not "
                                 "vlft's PackedGatedDeltaNet (train.model.load_model swaps it in)")
            mixer.split_heads_over(self.shard.group, self.shard.size, self.shard.rank)

    def split_language_model_inputs(self, module: nn.Module, args: tuple, kwargs: dict):
        """The language model's inputs for the whole (padded) row -> this rank's slice, with the row's boundaries."""
        embeds, positions = kwargs.get("inputs_embeds"), kwargs.get("position_ids")
        if embeds is None or positions is None or positions.ndim != 3 or embeds.shape[0] != 1:
            raise ValueError("sequence parallelism takes one packed row with (4, 1, L) position ids (the "
                             "padding-free collator's)")
        if kwargs.get("attention_mask") is not None:
            raise ValueError("sequence parallelism takes packed rows without an attention mask")
        length = embeds.shape[1]
        total = padded_length(length, self.shard.size)
        if total > length:
            embeds = F.pad(embeds, (0, 0, 0, total - length))
            positions = padded_positions(positions, total - length)
        start, end = shard_range(total, self.shard.size, self.shard.rank)
        kwargs.update(row_boundary_kwargs(positions[0], total))  # the whole row's samples (and padding)
        kwargs["inputs_embeds"], kwargs["position_ids"] = embeds[:, start:end], positions[..., start:end]
        if self.visual_token_inputs is not None:
            self.split_visual_token_inputs(kwargs, *self.visual_token_inputs, total - length, start, end)
        return args, kwargs

    @staticmethod
    def split_visual_token_inputs(kwargs: dict, mask_name: str, features_name: str, padding: int, start: int,
                                  end: int) -> None:
        """The family's visual-token inputs (Family.visual_token_inputs, e.g. Qwen3-VL's deepstack features added at
        the visual tokens) cut to this rank's [start, end) of the padded row, in place."""
        visual = kwargs.get(mask_name)
        if visual is None:
            return
        visual = F.pad(visual, (0, padding), value=False)
        before, inside = (int(n) for n in (visual[:, :start].sum(), visual[:, start:end].sum()))
        kwargs[mask_name] = visual[:, start:end]
        features = kwargs.get(features_name)
        if features is not None:
            kwargs[features_name] = [f[before:before + inside] for f in features]

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """This rank's next-token targets of the row (see shard_targets)."""
        return shard_targets(labels, self.shard.size, self.shard.rank)

    def loss(self, summed: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """This rank's part of the row's mean loss, times the group size (module docstring: DDP averages)."""
        count = (targets != IGNORE_INDEX).sum().to(summed.device)
        dist.all_reduce(count, group=self.shard.group)
        return summed * self.shard.size / count.clamp(min=1)

    def deal_batches_to_groups(self, dataloader):
        """accelerate's prepared data loader deals batches to processes in turn (BatchSamplerShard); deal them to the
        sequence groups instead, as transformers does for its own rank-aware samplers (trainer._get_dataloader)."""
        from accelerate.data_loader import BatchSamplerShard

        sampler = getattr(dataloader, "batch_sampler", None)
        if not isinstance(sampler, BatchSamplerShard):
            raise ValueError(f"sequence parallelism: expected accelerate's BatchSamplerShard, got {type(sampler)}")
        sampler.num_processes, sampler.process_index = self.shard.data_size, self.shard.data_rank
        return dataloader


def shard_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed float32 cross-entropy of a shard's (1, S, V) logits against its (1, S) targets."""
    return F.cross_entropy(logits[0].float(), targets[0].to(logits.device), ignore_index=IGNORE_INDEX,
                           reduction="sum")


def start_sequence_parallel(size: int, world_size: int, family: Family, model_dir) -> SequenceParallel | None:
    """The run's SequenceParallel (None for size 1), after the checks that need the launch and the model's config
    (a VlftError listing them, before the model loads); makes the sequence groups (every rank calls it)."""
    if size <= 1:
        return None
    from transformers import AutoConfig

    from vlft.train.preflight import raise_problems

    text_config = AutoConfig.from_pretrained(model_dir).get_text_config()
    raise_problems(sequence_parallel_model_problems(size, world_size, family, text_config))
    return SequenceParallel(new_sequence_group(size), family.visual_token_inputs)
