"""GPU only (skipped elsewhere): `--gradient_checkpointing auto`'s estimate against the peak a real step reaches,
within 15%. The Qwen3-VL-4B shape (random bf16 weights, the real tokenizer and processor: bench/sft_qwen3_vl_4b.py),
LoRA r8 all-linear, the vision tower frozen, packed rows of 8192 tokens of the benchmark's data (one 448x448 image
per sample), the chunked loss and the training step's autocast, as `vlft sft` runs them; three AdamW steps for each
plan (no layer recomputed, half of them, all), the peak read from torch's allocator."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

REPO = Path(__file__).resolve().parents[2]
MAX_LENGTH = 8192


def measured_peak(model, batch: dict, chunked, lora_layers, steps: int = 3) -> tuple[int, int, int]:
    """(peak of the steps, the last step's peak up to its loss, the last step's peak in its backward)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    torch.cuda.reset_peak_memory_stats()
    peak = 0
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16), lora_layers.input_casting_off():
            loss = chunked(model, batch)
        torch.cuda.synchronize()
        forward, peak = torch.cuda.max_memory_allocated(), max(peak, torch.cuda.max_memory_allocated())
        torch.cuda.reset_peak_memory_stats()
        loss.backward()
        optimizer.step()
        torch.cuda.synchronize()
        backward, peak = torch.cuda.max_memory_allocated(), max(peak, torch.cuda.max_memory_allocated())
        torch.cuda.reset_peak_memory_stats()
    optimizer.zero_grad(set_to_none=True)
    del optimizer
    torch.cuda.empty_cache()
    return peak, forward, backward


@pytest.mark.parametrize("compiled", [False, True])
def test_the_estimate_is_within_15_percent_of_the_measured_peak(compiled, tmp_path):
    """`compiled`: the decoder layers compiled (vlft sft's default fast path; torch.compile's default mode here),
    the probe counting what their graphs keep (compile.layers_compiled_for_probing)."""
    sys.path.insert(0, str(REPO / "bench"))
    from sft_qwen3_vl_4b import build_model, write_data

    from vlft.arguments import SftArguments
    from vlft.data.collator import PaddingFreeCollator, VisionTokens
    from vlft.data.dataset import PixelsOnFetch
    from vlft.data.pipeline import build_encoder
    from vlft.train.attention import ATTENTION_NAME
    from vlft.train.chunked_loss import ChunkedLoss
    from vlft.train.compile import compile_decoder_layers, decoder_layers
    from vlft.train.memory_plan import apply_plan, measure_run_memory
    from vlft.train.model import enable_gradient_checkpointing, load_model
    from vlft.train.sft import encoded_samples, pack
    from vlft.train.trainer import LoraLayers
    from vlft.train.tuners import prepare_trainable

    model_dir = tmp_path / "qwen3-vl-4b-random"
    build_model(model_dir)
    data = write_data(tmp_path / "data", 40)
    args = SftArguments(model=str(model_dir), dataset=[str(data)], train_type="lora", lora_dropout=0.0,
                        packing=True, max_length=MAX_LENGTH, dataset_num_proc=1, load_from_cache_file=False)
    encoder, _, family = build_encoder(args)
    samples, _ = encoded_samples(args, encoder, model_dir, args.dataset)
    rows = pack(samples, MAX_LENGTH, 0)
    longest = max(rows, key=lambda row: sum(s.length for s in row))
    tokens = VisionTokens(encoder.image_pad_id, encoder.video_pad_id, encoder.tokenizer.pad_token_id)
    batch = PaddingFreeCollator(family, tokens, None)(PixelsOnFetch([longest], encoder)[0])
    assert batch["input_ids"].numel() > 0.9 * MAX_LENGTH

    model = load_model(model_dir, torch.bfloat16, ATTENTION_NAME)
    enable_gradient_checkpointing(model, llm=True, vit=False)
    model = prepare_trainable(model, family, args)
    layers = decoder_layers(model)
    memory = measure_run_memory(model, layers, batch, batch["input_ids"].numel(), True, torch.bfloat16,
                                torch.device("cuda"), compiled=compiled)
    if compiled:
        compile_decoder_layers(model)
    cuda_batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    chunked, lora_layers = ChunkedLoss(model), LoraLayers(model)
    model.train()
    results = []
    for recomputed in (frozenset(), frozenset(range(0, len(layers), 2)), frozenset(range(len(layers)))):
        apply_plan(layers, recomputed)
        estimate = memory.estimate(recomputed)
        peak, forward, backward = measured_peak(model, cuda_batch, chunked, lora_layers)
        results.append((len(recomputed), estimate.total / 2**30, peak / 2**30))
        gib = {name: value / 2**30 for name, value in [
            ("estimate", estimate.total), ("static", estimate.static), ("kept", estimate.kept),
            ("working", estimate.transient), ("loss", memory.loss_transient),
            ("layer backward", memory.probe.backward_working), ("measured", peak), ("to the loss", forward),
            ("in the backward", backward)]}
        print(f"compiled {compiled}, {len(recomputed)} recomputed (layer backward measured "
              f"{memory.probe.layer_backward is not None}):", ", ".join(f"{k} {v:.2f}" for k, v in gib.items()))
    for count, estimate, peak in results:
        assert abs(estimate - peak) <= 0.15 * peak, (count, estimate, peak)
    plan = memory.plan()
    print(plan.line())
    assert plan.fits and plan.estimate.total <= memory.usable
