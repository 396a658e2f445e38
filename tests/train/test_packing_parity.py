"""Packed, padding-free rows against unpacked forwards (CPU, fp32): per-sample losses within 1e-5, LoRA
gradients cosine >= 0.9999 and, with the ViT trained, ViT gradients cosine >= 0.999. Both sdpa (the
block mask transformers builds from the restarting positions) and vlft's varlen attention function
(its exact per-sample CPU path) are checked."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tests.data.test_encode_parity import SHAPES, make_encoder, to_vlft_row
from vlft.data.collator import FixedRowShape, PaddingFreeCollator, VisionTokens
from vlft.data.encode import IGNORE_INDEX
from vlft.data.formats import to_sample
from vlft.train import attention as attention_module
from vlft.train.attention import ATTENTION_NAME
from vlft.train.model import load_model
from vlft.train.tuners import prepare_trainable

MIXED = ["one_image", "text_only", "several_images", "one_video", "image_and_video", "multi_turn_system"]


def encoded_batch(family_name, tiny_model_dir, processor_of, media_dir):
    encoder, family, _ = make_encoder(family_name, tiny_model_dir, processor_of)
    samples = [encoder.encode(to_sample(to_vlft_row(SHAPES[s], media_dir))) for s in MIXED]
    return encoder, family, samples


def lora_args(freeze_vit=True):
    return SimpleNamespace(train_type="lora", freeze_vit=freeze_vit, freeze_aligner=True, freeze_llm=False,
                           target_modules=["all-linear"], lora_rank=4, lora_alpha=8, lora_dropout=0.0,
                           use_dora=False, use_rslora=False, modules_to_save=[], freeze_router=True)


def token_losses(logits, labels):
    """Summed next-token loss and the count of trained targets of one sample's logits/labels."""
    targets = labels[1:].to(logits.device)
    # The last position predicts nothing: scored against an ignored target it adds nothing to the sum, where
    # logits[:-1] would cost its backward a zero fill of the whole vocabulary-wide logits.
    loss = F.cross_entropy(logits.float(), F.pad(targets, (0, 1), value=IGNORE_INDEX), ignore_index=IGNORE_INDEX,
                           reduction="sum")
    return loss, int((targets != IGNORE_INDEX).sum())


def unpacked_forward(model, sample, tokens):
    ids = torch.tensor([sample.input_ids])
    types = (ids == tokens.image_pad_id).long() + 2 * (ids == tokens.video_pad_id).long()
    extra = {k: v for k, v in (("pixel_values", sample.pixel_values), ("image_grid_thw", sample.image_grid_thw),
                               ("pixel_values_videos", sample.pixel_values_videos),
                               ("video_grid_thw", sample.video_grid_thw)) if v is not None}
    if sample.second_per_grid_ts:
        extra["second_per_grid_ts"] = torch.tensor(sample.second_per_grid_ts)
    return model(input_ids=ids, mm_token_type_ids=types, use_cache=False, **extra).logits.squeeze(0)


def per_sample_losses(model, samples, tokens, packed: bool, collator=None, use_cache=False):
    """[(summed loss, count)] per sample, from one packed row or separate forwards."""
    if not packed:
        return [token_losses(unpacked_forward(model, s, tokens), torch.tensor(s.labels)) for s in samples]
    batch = collator(samples)
    batch["use_cache"] = use_cache
    labels = batch.pop("labels")[0]
    logits = model(**batch).logits.squeeze(0)
    # The samples' slices logits[start:start + length] (and the row's padding, if any) taken by one split: its
    # backward writes the row's gradient once, where a slice's backward fills a zero tensor of the whole row's
    # vocabulary-wide logits per sample (the same values; most of the test's time on CPU).
    lengths = [s.length for s in samples]
    sizes = [*lengths, logits.shape[0] - sum(lengths)]
    return [token_losses(*piece) for piece in list(zip(logits.split(sizes), labels.split(sizes)))[:len(samples)]]


def cosine(a, b):
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


@pytest.mark.parametrize("family_name, attention, fixed", [
    ("qwen3_vl", "sdpa", False), ("qwen3_vl", ATTENTION_NAME, False), ("qwen2_5_vl", "sdpa", False),
    ("qwen2_5_vl", ATTENTION_NAME, False),
    ("qwen3_vl_moe", ATTENTION_NAME, False),  # the MoE's LoRA includes its experts' fused weights
    # Qwen3.5: Gated DeltaNet layers with vlft's exact per-sample CPU kernels (linear_attention.py)
    ("qwen3_5", "sdpa", False), ("qwen3_5_moe", ATTENTION_NAME, False),
    # fixed-shape rows bring empty boundary slots and a padding segment to the DeltaNet layers too
    ("qwen3_5", ATTENTION_NAME, True),
    # fixed-shape rows (--torch_compile_mode reduce-overhead): a padding segment and empty boundary slots
    # (sdpa with fixed rows: tests/cli's reduce-overhead run on CPU)
    ("qwen3_vl", ATTENTION_NAME, True)])
def test_packed_losses_and_lora_gradients_match_unpacked(family_name, attention, fixed, tiny_model_dir,
                                                         processor_of, media_dir, monkeypatch):
    encoder, family, samples = encoded_batch(family_name, tiny_model_dir, processor_of, media_dir)
    tokens = VisionTokens(encoder.image_pad_id, encoder.video_pad_id, encoder.tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = prepare_trainable(load_model(tiny_model_dir(family_name), torch.float32, attention), family,
                              lora_args())
    for name, param in model.named_parameters():  # LoRA B starts at zero: give it values so grads of A exist
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    shape = FixedRowShape(length=sum(s.length for s in samples) + 37, boundaries=len(samples) + 5) if fixed else None
    collator = PaddingFreeCollator(family, tokens, getattr(model.config.vision_config, "tokens_per_second", None),
                                   shape)
    from_positions = []  # calls that find boundaries from positions: none for a fixed-shape row (its own are used)
    real = attention_module.row_boundary_kwargs
    monkeypatch.setattr(attention_module, "row_boundary_kwargs", lambda *a: from_positions.append(a) or real(*a))

    grads = {}
    losses = {}
    for packed in (False, True):
        model.zero_grad()
        from_positions.clear()
        pairs = per_sample_losses(model, samples, tokens, packed, collator)
        if packed and attention == ATTENTION_NAME:
            assert bool(from_positions) != fixed
        losses[packed] = [(loss / count).item() for loss, count in pairs]
        total = sum(loss for loss, _ in pairs) / sum(count for _, count in pairs)
        total.backward()
        grads[packed] = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    assert losses[True] == pytest.approx(losses[False], abs=1e-5)
    assert grads[True].keys() == grads[False].keys() and grads[True]
    flat = [torch.cat([g.flatten() for g in grads[p].values()]) for p in (True, False)]
    assert cosine(*flat) >= 0.9999
    for name in grads[True]:
        if grads[False][name].abs().sum() > 0:
            assert cosine(grads[True][name], grads[False][name]) >= 0.9999, name


@pytest.mark.parametrize("family_name", ["qwen3_vl", "qwen2_5_vl", "qwen3_5"])
def test_vit_gradients_match_when_the_vit_trains(family_name, tiny_model_dir, processor_of, media_dir):
    encoder, family, samples = encoded_batch(family_name, tiny_model_dir, processor_of, media_dir)
    tokens = VisionTokens(encoder.image_pad_id, encoder.video_pad_id, encoder.tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = prepare_trainable(load_model(tiny_model_dir(family_name), torch.float32, "sdpa"), family,
                              lora_args(freeze_vit=False))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    collator = PaddingFreeCollator(family, tokens, getattr(model.config.vision_config, "tokens_per_second", None))
    vit_grads = {}
    for packed in (False, True):
        model.zero_grad()
        pairs = per_sample_losses(model, samples, tokens, packed, collator)
        (sum(loss for loss, _ in pairs) / sum(count for _, count in pairs)).backward()
        vit_grads[packed] = torch.cat([p.grad.flatten() for n, p in model.named_parameters()
                                       if p.requires_grad and ".visual.blocks." in n])
    assert vit_grads[True].abs().sum() > 0
    assert cosine(vit_grads[True], vit_grads[False]) >= 0.999


def test_the_cache_must_be_off_for_packing(tiny_model_dir, processor_of, media_dir):
    """The check above can fail: with the KV cache on, packed samples attend to each other."""
    encoder, family, samples = encoded_batch("qwen3_vl", tiny_model_dir, processor_of, media_dir)
    tokens = VisionTokens(encoder.image_pad_id, encoder.video_pad_id, encoder.tokenizer.pad_token_id)
    model = load_model(tiny_model_dir("qwen3_vl"), torch.float32, "sdpa")
    assert model.config.text_config.use_cache is False
    collator = PaddingFreeCollator(family, tokens)
    with torch.no_grad():
        separate = [(l / c).item() for l, c in per_sample_losses(model, samples, tokens, False)]
        leaking = [(l / c).item() for l, c in per_sample_losses(model, samples, tokens, True, collator,
                                                                use_cache=True)]
    assert max(abs(a - b) for a, b in zip(separate[1:], leaking[1:])) > 1e-3


def _sample_losses_and_grads(model, samples, tokens, collator, index: int):
    """Sample `index`'s loss in a packed row, and the gradient of that loss for every trained parameter."""
    model.zero_grad()
    loss, count = per_sample_losses(model, samples, tokens, True, collator)[index]
    (loss / count).backward()
    return (loss / count).item(), {n: p.grad.detach().clone() for n, p in model.named_parameters()
                                   if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("family_name", ["qwen3_5", "qwen3_5_moe"])
def test_changing_one_packed_sample_leaves_the_next_one_alone(family_name, tiny_model_dir, processor_of, media_dir):
    """Sample B's loss and gradients do not move when sample A before it in the row changes. The same check on
    transformers' stock layers fails: their short convolution and delta rule carry A into B."""
    from transformers import AutoModelForImageTextToText

    encoder, family, samples = encoded_batch(family_name, tiny_model_dir, processor_of, media_dir)
    tokens = VisionTokens(encoder.image_pad_id, encoder.video_pad_id, encoder.tokenizer.pad_token_id)
    a, b = samples[1], samples[0]  # text only, then an image sample
    changed = dataclasses.replace(a, input_ids=[t if i < 3 else (t + 7) % 1000 for i, t in enumerate(a.input_ids)])
    collator = PaddingFreeCollator(family, tokens)
    torch.manual_seed(0)
    ours = prepare_trainable(load_model(tiny_model_dir(family_name), torch.float32, "sdpa"), family, lora_args())
    for name, param in ours.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    before = _sample_losses_and_grads(ours, [a, b], tokens, collator, 1)
    after = _sample_losses_and_grads(ours, [changed, b], tokens, collator, 1)
    assert after[0] == pytest.approx(before[0], abs=1e-6)
    for name, grad in before[1].items():
        torch.testing.assert_close(after[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)

    stock = AutoModelForImageTextToText.from_pretrained(tiny_model_dir(family_name), dtype=torch.float32,
                                                        attn_implementation="sdpa")
    stock.config.text_config.use_cache = False
    with torch.no_grad():
        leaked = [per_sample_losses(stock, row, tokens, True, collator)[1] for row in ([a, b], [changed, b])]
    assert abs((leaked[0][0] - leaked[1][0]).item()) > 1e-4
