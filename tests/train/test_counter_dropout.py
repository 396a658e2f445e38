"""CounterDropout (vlft/train/counter_dropout.py): LoRA dropout from an integer hash, so that layers with dropout
compile whole. Its masks keep 1 - p of the elements, independently across modules and steps; a gradient
checkpoint's recomputation draws the same mask (gradients equal the unchecked layer's); a layer compiled whole
with it gives eager's output and gradients; in the tiny Qwen3-VL every LoRA dropout is swapped, the adapters'
state dict is unchanged, and each training forward draws a new mask."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tests.train.test_packing_parity import encoded_batch, lora_args
from vlft.data.collator import PaddingFreeCollator, VisionTokens
from vlft.train.attention import ATTENTION_NAME
from vlft.train.compile import decoder_layers, whole_layer_compiles
from vlft.train.counter_dropout import CounterDropout, forwards_done, keep_mask, replace_lora_dropouts
from vlft.train.model import enable_gradient_checkpointing, load_model
from vlft.train.tuners import prepare_trainable


def mask(counter: int, salt: int, shape=(1024, 1024), p: float = 0.05) -> torch.Tensor:
    return keep_mask(torch.tensor(counter), torch.tensor(salt), torch.empty(shape), p)


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_masks_keep_one_minus_p(p):
    n = 1024 * 1024
    kept = mask(3, 7, p=p).float().mean().item()
    assert abs(kept - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n), kept


def test_masks_of_other_modules_and_steps_are_independent():
    p, n = 0.05, 1024 * 1024
    base = ~mask(0, 0)
    for other in (~mask(0, 1), ~mask(1, 0), ~mask(1, 1), ~mask(2**20, 5)):
        both = (base & other).float().mean().item()  # both dropped: p^2 when independent
        assert abs(both - p * p) < 5 * math.sqrt(p * p / n), both
    rows = ~mask(0, 0)
    neighbours = (rows[:, 1:] & rows[:, :-1]).float().mean().item()  # next elements independent too
    assert abs(neighbours - p * p) < 5 * math.sqrt(p * p / n), neighbours
    assert torch.equal(mask(4, 2), mask(4, 2))  # a function of (counter, salt, index) only


def test_train_scales_kept_elements_and_eval_is_identity():
    dropout = CounterDropout(0.25, torch.tensor(9), salt=3)
    x = torch.randn(64, 32, dtype=torch.float64)
    expected = x * mask(9, 3, shape=(64, 32), p=0.25).double() / 0.75
    torch.testing.assert_close(dropout.train()(x), expected, rtol=1e-15, atol=0)
    assert dropout.eval()(x) is x


class Block(nn.Module):
    def __init__(self, checkpointed: bool):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(32, 8, bias=False), nn.Linear(8, 32, bias=False)
        self.drop = CounterDropout(0.3, torch.tensor(5), salt=1)
        self.checkpointed = checkpointed

    def inner(self, x):
        return x + torch.tanh(self.b(self.a(self.drop(x))))

    def forward(self, x):
        return checkpoint(self.inner, x, use_reentrant=False) if self.checkpointed else self.inner(x)


def grads(block: nn.Module, x: torch.Tensor):
    block.zero_grad()
    out = block(x)
    out.pow(2).sum().backward()
    return out.detach(), [p.grad.clone() for p in block.parameters()]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_checkpoint_recomputes_the_same_mask(compiled):
    """A recomputed mask that differed would give other gradients than the layer without a checkpoint."""
    x = torch.randn(16, 32, dtype=torch.float32)
    plain_out, plain_grads = grads(Block(checkpointed=False), x)
    block = Block(checkpointed=True)
    if compiled:
        torch._dynamo.reset()
        block.compile(backend="aot_eager", fullgraph=True)  # the random-op-free mask: one graph, no break
    out, got = grads(block, x)
    torch.testing.assert_close(out, plain_out, rtol=1e-6, atol=1e-6)
    for a, b in zip(got, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_lora_dropouts_swapped_in_the_tiny_model(tiny_model_dir, processor_of, media_dir):
    encoder, family, samples = encoded_batch("qwen3_vl", tiny_model_dir, processor_of, media_dir)
    tokens = VisionTokens(encoder.image_pad_id, encoder.video_pad_id, encoder.tokenizer.pad_token_id)
    model = load_model(tiny_model_dir("qwen3_vl"), torch.float32, ATTENTION_NAME)
    enable_gradient_checkpointing(model, llm=True, vit=False)
    args = lora_args()
    args.lora_dropout = 0.05
    model = prepare_trainable(model, family, args).train()
    for name, param in model.named_parameters():  # LoRA B starts at zero: give it values so the mask shows
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    kinds = family.decoder_kinds(model.config.get_text_config())
    layers = decoder_layers(model)
    assert not any(whole_layer_compiles(layer, kind) for layer, kind in zip(layers, kinds))
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout) and m.p > 0]
    state = set(model.state_dict())
    advance = replace_lora_dropouts(model, stream=1)
    assert len(advance.modules) == len(dropouts) > 0
    assert set(model.state_dict()) == state  # adapter files unchanged: the counter and salts are not saved
    assert not any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
    assert all(whole_layer_compiles(layer, kind) for layer, kind in zip(layers, kinds))
    swapped = [m for m in model.modules() if isinstance(m, CounterDropout)]
    assert sorted(int(m.salt) for m in swapped) == list(range(len(swapped), 2 * len(swapped)))  # rank 1's

    model._apply(lambda t: t.clone())  # what moving to a device does: every buffer its own copy
    batch = PaddingFreeCollator(family, tokens, None)(samples)
    first = model(**batch).loss.item()
    assert all(m.counter is swapped[0].counter for m in swapped)  # shared again by the hook
    assert int(swapped[0].counter) == 1
    second = model(**batch).loss.item()
    assert int(swapped[0].counter) == 2 and first != second  # a new mask each training forward
    model.eval()
    with torch.no_grad():
        model(**batch)
    assert int(swapped[0].counter) == 2  # evaluation draws none
    model.train()
    advance.start_at(0)  # as a run resumed at step 0: the first forward's mask again
    assert model(**batch).loss.item() == first
    assert replace_lora_dropouts(model) is None  # nothing left to swap
    advance.restore()  # a run that does not compile after all: PEFT's dropouts back, the counter stops
    assert not any(isinstance(m, CounterDropout) for m in model.modules())
    assert len([m for m in model.modules() if isinstance(m, nn.Dropout) and m.p > 0]) == len(dropouts)
    model(**batch)
    assert int(swapped[0].counter) == 1


def trainer_forwards(steps: int, accumulation: int, batches_per_epoch: int) -> int:
    """Ground truth by enumeration: the Trainer's optimizer steps over epochs of `batches_per_epoch` batches, a step
    every `accumulation` batches and at each epoch's end; the batches (forwards) of the first `steps` steps."""
    forwards = done = 0
    while True:
        pending = 0
        for batch in range(batches_per_epoch):
            pending += 1
            if pending == accumulation or batch == batches_per_epoch - 1:
                if done == steps:
                    return forwards
                forwards, done, pending = forwards + pending, done + 1, 0


@pytest.mark.parametrize("accumulation, batches", [(1, 5), (2, 5), (2, 6), (3, 7), (4, 3), (8, 1)])
def test_a_resumed_run_counts_the_forwards_of_short_epoch_end_steps(accumulation, batches):
    for steps in range(12):
        assert forwards_done(steps, accumulation, batches) == trainer_forwards(steps, accumulation, batches), steps
    assert forwards_done(3, 2, None) == 6  # a data loader without a length: every step a full accumulation
