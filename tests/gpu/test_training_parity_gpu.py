"""GPU only (skipped elsewhere): vlft's training speed-ups keep the losses of the plain path. Twenty bf16
LoRA steps of the tiny Qwen3-VL: vlft's setup (one packed row through the varlen attention, its sample
boundaries computed once per forward) against the plain one (sdpa on each sample's own row): every
step's loss within 1e-2 relative; the same with `--chunked_loss`'s loss (chunked_loss.py) on the packed row."""

from __future__ import annotations

import pytest
import torch

from tests.train.test_packing_parity import MIXED, encoded_batch, lora_args
from vlft.data.collator import PaddingFreeCollator, VisionTokens
from vlft.train.attention import ATTENTION_NAME
from vlft.train.chunked_loss import ChunkedLoss
from vlft.train.model import load_model
from vlft.train.tuners import prepare_trainable

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def train_losses(fast: bool, tiny_model_dir, processor_of, media_dir, steps: int = 20, chunked: bool = False,
                 device: str = "cuda") -> list[float]:
    """Per-step mean next-token loss; `chunked` (with `fast`): the loss of ChunkedLoss instead of the logits'.
    `device`: "cpu" runs the same steps without a GPU (a check of this test's own code)."""
    encoder, family, samples = encoded_batch("qwen3_vl", tiny_model_dir, processor_of, media_dir)
    tokens = VisionTokens(encoder.image_pad_id, encoder.video_pad_id, encoder.tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = load_model(tiny_model_dir("qwen3_vl"), torch.bfloat16, ATTENTION_NAME if fast else "sdpa")
    model = prepare_trainable(model, family, lora_args()).to(device).train()
    chunked_loss = ChunkedLoss(model) if chunked else None
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    collator = PaddingFreeCollator(family, tokens, None)
    losses = []
    for _ in range(steps):
        if fast:  # one packed row
            batches = [collator(samples)]
        else:  # each sample alone: no packing at all
            batches = [collator([s]) for s in samples]
        total = 0.0
        optimizer.zero_grad()
        for batch in batches:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            labels = batch["labels"]
            with torch.autocast(device, dtype=torch.bfloat16):
                if chunked_loss is not None:  # its mean over the row's targets, made a sum as below
                    loss = chunked_loss(model, batch) * int((labels[0, 1:] != -100).sum())
                else:
                    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
            if chunked_loss is None:
                loss = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100,
                                                         reduction="sum")
            loss.backward()
            total += loss.item()
        optimizer.step()
        losses.append(total / sum(int((b["labels"][0, 1:] != -100).sum()) for b in batches))
    return losses


def test_fast_path_keeps_the_plain_paths_losses(tiny_model_dir, processor_of, media_dir):
    assert len(MIXED) >= 4
    fast = train_losses(True, tiny_model_dir, processor_of, media_dir)
    plain = train_losses(False, tiny_model_dir, processor_of, media_dir)
    assert fast[-1] < fast[0]  # it trains
    for step, (a, b) in enumerate(zip(fast, plain)):
        assert abs(a - b) <= 1e-2 * abs(b), (step, a, b)


def test_chunked_loss_keeps_the_plain_paths_losses(tiny_model_dir, processor_of, media_dir):
    chunked = train_losses(True, tiny_model_dir, processor_of, media_dir, chunked=True)
    plain = train_losses(False, tiny_model_dir, processor_of, media_dir)
    assert chunked[-1] < chunked[0]  # it trains
    for step, (a, b) in enumerate(zip(chunked, plain)):
        assert abs(a - b) <= 1e-2 * abs(b), (step, a, b)
