"""--chunked_loss: the chunked cross-entropy equals transformers' loss from the full logits, and so do its
gradients (of the hidden states, of the head's weight, and of the LoRA weights through a real model)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.train.test_packing_parity import encoded_batch, lora_args
from vlft.data.collator import PaddingFreeCollator, VisionTokens
from vlft.data.encode import IGNORE_INDEX
from vlft.errors import VlftError
from vlft.train.attention import ATTENTION_NAME
from vlft.train.chunked_loss import ChunkedLoss, chunked_cross_entropy
from vlft.train.model import load_model
from vlft.train.tuners import prepare_trainable
from vlft.train.weighted_loss import scaled_cross_entropy


def reference_loss(hidden, weight, labels):
    """transformers' ForCausalLMLoss on the full logits (float32 upcast, shift by one, mean)."""
    logits = (hidden @ weight.t()).float()
    targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


def test_loss_and_gradients_equal_the_full_logits_path():
    dtype, tolerance = torch.float32, 1e-5  # the logits are float32 in both paths, as transformers makes them
    torch.manual_seed(0)
    hidden = torch.randn(2, 37, 16, dtype=dtype, requires_grad=True)  # two rows: padded batches too
    weight = torch.randn(50, 16, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, 50, (2, 37))
    labels[0, :9] = IGNORE_INDEX  # a prompt
    labels[0, 20:24] = IGNORE_INDEX  # the next sample's prompt
    labels[1, 30:] = IGNORE_INDEX  # padding
    expected = reference_loss(hidden, weight, labels)
    expected_grads = torch.autograd.grad(expected, (hidden, weight))
    loss = chunked_cross_entropy(hidden, weight, labels, chunk=5)  # several chunks and a ragged last one
    grads = torch.autograd.grad(loss * 3.0, (hidden, weight))  # the upstream gradient is applied
    torch.testing.assert_close(loss, expected.to(loss.dtype), rtol=tolerance, atol=tolerance)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, 3.0 * want, rtol=tolerance, atol=tolerance)


def test_bf16_matches_the_bf16_logits_path():
    torch.manual_seed(0)
    hidden = torch.randn(1, 64, 32, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(300, 32, dtype=torch.bfloat16)
    labels = torch.randint(0, 300, (1, 64))
    expected = reference_loss(hidden, weight, labels)
    (expected_grad,) = torch.autograd.grad(expected, hidden)
    loss = chunked_cross_entropy(hidden, weight, labels, chunk=16)
    (grad,) = torch.autograd.grad(loss, hidden)
    assert abs(loss.item() - expected.item()) <= 1e-3 * expected.item()
    assert F.cosine_similarity(grad.flatten().double(), expected_grad.flatten().double(), dim=0) > 0.999


def test_a_real_packed_row_gives_the_models_loss_and_lora_gradients(tiny_model_dir, processor_of, media_dir):
    encoder, family, samples = encoded_batch("qwen3_vl", tiny_model_dir, processor_of, media_dir)
    tokens = VisionTokens(encoder.image_pad_id, encoder.video_pad_id, encoder.tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = prepare_trainable(load_model(tiny_model_dir("qwen3_vl"), torch.float32, ATTENTION_NAME), family,
                              lora_args())
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    batch = PaddingFreeCollator(family, tokens, None)(samples)
    results = []
    chunked = ChunkedLoss(model)
    for compute in (lambda: model(**batch).loss, lambda: chunked(model, batch)):
        model.zero_grad()
        loss = compute()
        loss.backward()
        results.append((loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])))
    (plain_loss, plain_grad), (chunked_loss, chunked_grad) = results
    assert chunked_loss == pytest.approx(plain_loss, rel=1e-6)
    torch.testing.assert_close(chunked_grad, plain_grad, rtol=1e-4, atol=1e-7)


def test_an_moe_aux_loss_is_refused(tiny_model_dir):
    from vlft.train.model import set_router_aux_loss

    model = load_model(tiny_model_dir("qwen3_vl_moe"), torch.float32, "sdpa")
    set_router_aux_loss(model, 0.01)
    with pytest.raises(VlftError, match="aux loss"):
        ChunkedLoss(model)


def weighted_reference(hidden, weight, labels, loss_scale):
    """--loss_scale's loss in float64 (ms-swift's: each target's cross-entropy times its token's weight, summed,
    over the number of targets)."""
    logits = (hidden.double() @ weight.double().t())
    targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:].flatten()
    scales = F.pad(loss_scale.double(), (0, 1))[:, 1:].flatten()
    losses = F.cross_entropy(logits.flatten(0, 1), targets, ignore_index=IGNORE_INDEX, reduction="none")
    return (losses * scales).sum() / (targets != IGNORE_INDEX).sum()


@pytest.mark.parametrize("chunked", [True, False])
def test_weighted_loss_and_gradients_equal_a_float64_reference(chunked):
    torch.manual_seed(0)
    hidden = torch.randn(2, 37, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    labels = torch.randint(0, 50, (2, 37))
    labels[0, :9] = IGNORE_INDEX
    labels[1, 30:] = IGNORE_INDEX
    loss_scale = torch.where(labels == IGNORE_INDEX, 0.0, 1.0)
    loss_scale[0, 12:18] = 2.0  # a tool call
    loss_scale[1, 3:5] = 0.5
    expected = weighted_reference(hidden, weight, labels, loss_scale)
    expected_grads = torch.autograd.grad(expected, (hidden, weight))
    if chunked:
        loss = chunked_cross_entropy(hidden, weight, labels, chunk=5, loss_scale=loss_scale)
    else:
        loss = scaled_cross_entropy(hidden @ weight.t(), labels, loss_scale)
    grads = torch.autograd.grad(loss, (hidden, weight))
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    ones = torch.where(labels == IGNORE_INDEX, 0.0, 1.0)  # weights of one: the unweighted loss
    torch.testing.assert_close(chunked_cross_entropy(hidden, weight, labels, loss_scale=ones),
                               chunked_cross_entropy(hidden, weight, labels))
