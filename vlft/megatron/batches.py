"""What one Megatron-Core training step reads: the rows (packed or single samples) in a seeded order, each step's
micro-batches for this data-parallel rank, and each micro-batch as GPTModel's inputs.

The order is `vlft sft`'s: epoch e visits the rows in `torch.randperm(rows, seed + e)` (accelerate's seedable
sampler, which transformers' Trainer uses). Step s takes the next `global_batch_size` rows of that stream; its
micro-batch m on data-parallel rank r is rows `s * G + m * (micro * dp) + r * micro` onwards (Megatron's
pretraining sampler), so a resumed run at step s reads exactly what the uninterrupted run would have."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Iterator

import torch

from vlft.data.collator import IGNORE_INDEX
from vlft.train.chunked_loss import next_token_scales


class RowOrder:
    """Row indices in training order, over as many epochs as asked for."""

    def __init__(self, rows: int, seed: int):
        self.rows, self.seed = rows, seed
        self._epochs: dict[int, list[int]] = {}

    def __getitem__(self, position: int) -> int:
        epoch, offset = divmod(position, self.rows)
        if epoch not in self._epochs:
            self._epochs = {epoch: torch.randperm(self.rows, generator=torch.Generator().manual_seed(
                self.seed + epoch)).tolist()}
        return self._epochs[epoch][offset]


@dataclass(frozen=True)
class StepShape:
    """How rows make a step: micro-batches of `micro` rows on each of `data_parallel` ranks."""

    global_batch: int
    micro: int
    data_parallel: int

    @property
    def micro_batches(self) -> int:
        """Micro-batches per step on each rank."""
        return self.global_batch // (self.micro * self.data_parallel)

    def positions(self, step: int, rank: int) -> Iterator[list[int]]:
        """Stream positions of each of this rank's micro-batches at `step`."""
        for m in range(self.micro_batches):
            start = step * self.global_batch + m * self.micro * self.data_parallel + rank * self.micro
            yield list(range(start, start + self.micro))


class StepBatches(torch.utils.data.Sampler):
    """Batch sampler of a data loader: this rank's micro-batches (lists of row indices), step after step, from
    `first_step` to `last_step` (exclusive)."""

    def __init__(self, order: RowOrder, shape: StepShape, rank: int, first_step: int, last_step: int):
        self.order, self.shape, self.rank = order, shape, rank
        self.first_step, self.last_step = first_step, last_step

    def __len__(self) -> int:
        return (self.last_step - self.first_step) * self.shape.micro_batches

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.first_step, self.last_step):
            for positions in self.shape.positions(step, self.rank):
                yield [self.order[p] for p in positions]


def next_token_labels(labels: torch.Tensor) -> torch.Tensor:
    """The label each position predicts (HF's shift: position t is trained on labels[t + 1]); the last position
    predicts nothing. A packed row's samples each begin with an ignored label, so no sample predicts the next."""
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    return shifted


def sample_boundaries(text_positions: torch.Tensor):
    """PackedSeqParams (thd) of a row whose text positions restart at 0 with each sample."""
    from megatron.core.packed_seq_params import PackedSeqParams

    starts = (text_positions == 0).nonzero().flatten()
    cu = torch.cat([starts, starts.new_tensor([text_positions.numel()])]).to(torch.int32)
    on_host = cu.cpu()  # the one read back of the micro-batch
    longest = int((on_host[1:] - on_host[:-1]).max())
    # The same boundaries on the host as the "padded" ones (a row packs its samples without padding): Megatron-
    # Core's unfused rotary embedding for thd reads only those, and reads them element by element, which on a
    # device tensor would wait for the GPU several times per sample in every layer.
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest,
                           max_seqlen_kv=longest, cu_seqlens_q_padded=on_host, cu_seqlens_kv_padded=on_host)


def token_loss(trained: torch.Tensor, weights: torch.Tensor, per_token: torch.Tensor):
    """The loss function under `calculate_per_token_loss`: (sum, tokens, logged); the schedule sums over
    micro-batches and data-parallel ranks and divides the gradients by the tokens: the mean over every trained
    token of the step. `weights`: each position's (--loss_scale's, else 1 where trained)."""
    loss = (per_token.float() * weights).sum()
    tokens = trained.sum().to(torch.int)
    return loss, tokens, {"lm loss": torch.stack([loss.detach(), tokens.detach().float()])}


def micro_batch_loss(trained: torch.Tensor, weights: torch.Tensor, per_token: torch.Tensor):
    """The loss function without `calculate_per_token_loss`: the micro-batch's mean over its trained tokens; the
    schedule averages micro-batches and data-parallel ranks (transformers' Trainer's mean under gradient
    accumulation and DDP, which `vlft sft` trains with). Logged as (mean, 1): the step's mean of means."""
    loss = (per_token.float() * weights).sum() / trained.sum().clamp(min=1)
    return loss, {"lm loss": torch.stack([loss.detach(), loss.new_tensor(1.0)])}


@dataclass(frozen=True)
class VisionTokenIds:
    image: int
    video: int


def forward_step(tokens: VisionTokenIds, device: torch.device, per_token_loss: bool, data_iterator, model):
    """One micro-batch through the model (Megatron-Core's forward_step_func): the vision tower's tokens placed,
    per-sample attention from the row's boundaries, mRoPE positions, per-token losses."""
    from vlft.megatron.vision import vision_embedded

    batch = {key: value.to(device) if torch.is_tensor(value) else value for key, value in next(data_iterator).items()}
    labels = next_token_labels(batch["labels"])
    trained = labels != IGNORE_INDEX
    positions = batch["position_ids"]  # [4, 1, L]: text positions, then mRoPE's t / h / w
    module = model.module if hasattr(model, "module") else model
    with vision_embedded(module, batch, tokens.image, tokens.video) as embeds:
        if torch.is_grad_enabled() and not embeds.requires_grad:
            # Megatron-Core's recomputation (a reentrant checkpoint) sends gradients only into layers whose input
            # needs one: with the embedding and the tower frozen (LoRA), adapters in recomputed layers got none.
            embeds = embeds.detach().requires_grad_()
        # Megatron-Core's vocab-parallel cross-entropy has no ignore index: ignored labels are read as token 0
        # and masked in the loss.
        per_token = model(input_ids=batch["input_ids"], position_ids=positions[1:], attention_mask=None,
                          decoder_input=embeds, labels=labels.clamp(min=0),
                          packed_seq_params=sample_boundaries(positions[0, 0]), runtime_gather_output=False)
    weights = next_token_scales(batch["loss_scale"]) if "loss_scale" in batch else trained.float()
    return per_token, partial(token_loss if per_token_loss else micro_batch_loss, trained.float(), weights)
