"""GPU only (skipped elsewhere): --torch_compile's inductor kernels keep the plain path's losses. Twenty bf16
LoRA steps of the tiny Qwen3-VL and Qwen3-VL-MoE (LoRA on the experts too: grouped_expert_lora.py's grouped
GEMMs, routing inside the layer's graph) on one packed row through the varlen attention, with gradient
checkpointing: the decoder layers and the frozen vision blocks compiled (compile.py), as `vlft sft
--torch_compile true` does, against the same model eager, every step's loss within 1e-2 relative; and the
same with the layers replayed as CUDA graphs over fixed-shape rows (`--torch_compile_mode reduce-overhead`), also
with two micro-steps accumulated per optimizer step (graph_gradients.py copies the first gradients out of graph
memory, as `vlft sft` does)."""

from __future__ import annotations

import pytest
import torch

from tests.train.test_packing_parity import encoded_batch, lora_args
from vlft.data.collator import FixedRowShape, PaddingFreeCollator, VisionTokens
from vlft.train.attention import ATTENTION_NAME
from vlft.train.compile import compile_decoder_layers, compile_frozen_vision_blocks, decoder_layers
from vlft.train.counter_dropout import replace_lora_dropouts
from vlft.train.graph_gradients import copy_first_gradients
from vlft.train.model import enable_gradient_checkpointing, load_model
from vlft.train.tuners import prepare_trainable

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def train_losses(compiled: bool, tiny_model_dir, processor_of, media_dir, steps: int = 20,
                 mode: str | None = None, family_name: str = "qwen3_vl", lora_dropout: float = 0.0,
                 accumulate: int = 1, first_gradients: list | None = None, fixed_rows: bool | None = None) -> list[float]:
    """Every micro-step's loss; `accumulate` micro-steps per optimizer step; the trained parameters' gradients of the
    first optimizer step appended to `first_gradients` when given. Rows of one fixed shape under CUDA graphs, or when
    `fixed_rows` says so."""
    encoder, family, samples = encoded_batch(family_name, tiny_model_dir, processor_of, media_dir)
    tokens = VisionTokens(encoder.image_pad_id, encoder.video_pad_id, encoder.tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = load_model(tiny_model_dir(family_name), torch.bfloat16, ATTENTION_NAME)
    enable_gradient_checkpointing(model, llm=True, vit=False)
    args = lora_args()
    args.lora_dropout = lora_dropout
    model = prepare_trainable(model, family, args).cuda().train()
    if lora_dropout:  # as `vlft sft` does when it compiles; the eager run draws the same masks from the same counter
        assert replace_lora_dropouts(model) is not None
    if compiled:
        layers, whole = compile_decoder_layers(model, mode=mode)
        assert whole == layers  # every layer one graph, its checkpoint (and any LoRA dropout) included
        assert compile_frozen_vision_blocks(model) > 0  # the ViT is frozen (lora_args)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    graphs = mode == "reduce-overhead"
    if graphs and accumulate > 1:  # as `vlft sft` does
        copy_first_gradients(decoder_layers(model))
    fixed_rows = graphs if fixed_rows is None else fixed_rows
    # The attention launched for exactly the longest sample (vlft sft rounds it up): the padding in segments no longer.
    length, longest = sum(s.length for s in samples) + 16, max(s.length for s in samples)
    fixed = FixedRowShape(length, len(samples) + 1 + -(-length // longest), longest) if fixed_rows else None
    collator = PaddingFreeCollator(family, tokens, None, fixed)
    losses = []
    for step in range(steps):
        row = samples if step % 2 == 0 else samples[1:]  # two row lengths: dynamic shapes too
        batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in collator(row).items()}
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()  # as SftTrainer.training_step
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        (loss / accumulate).backward()
        losses.append(loss.item())
        if (step + 1) % accumulate == 0:
            if first_gradients is not None and step + 1 == accumulate:
                first_gradients += [p.grad.float().clone() for p in model.parameters() if p.requires_grad]
            optimizer.step()
            optimizer.zero_grad()
    return losses


@pytest.mark.parametrize("family_name", ["qwen3_vl", "qwen3_vl_moe"])
def test_compiled_layers_keep_the_eager_losses(family_name, tiny_model_dir, processor_of, media_dir):
    compiled = train_losses(True, tiny_model_dir, processor_of, media_dir, family_name=family_name)
    eager = train_losses(False, tiny_model_dir, processor_of, media_dir, family_name=family_name)
    assert compiled[-1] < compiled[0]  # it trains
    for step, (a, b) in enumerate(zip(compiled, eager)):
        assert abs(a - b) <= 1e-2 * abs(b), (step, a, b)


@pytest.mark.parametrize("family_name, lora_dropout, accumulate", [
    ("qwen3_vl", 0.0, 1), ("qwen3_vl_moe", 0.0, 1), ("qwen3_vl", 0.05, 1), ("qwen3_vl", 0.05, 2),
    ("qwen3_vl_moe", 0.0, 2)])
def test_cuda_graph_layers_keep_the_eager_losses(family_name, lora_dropout, accumulate, tiny_model_dir, processor_of,
                                                 media_dir):
    """With LoRA dropout: counter_dropout.py's masks, compiled whole and replayed, against the same masks eager
    (torch's nn.Dropout inside a compiled checkpoint failed on torch 2.11 / CUDA on an H200). With 2 micro-steps
    per optimizer step: without copy_first_gradients the second replay overwrites the first gradients (torch
    raises; bench/compile_obstacles.py)."""
    from torch._dynamo.utils import counters

    counters.clear()
    graphed_gradients, compiled_gradients, eager_gradients = [], [], []
    graphed = train_losses(True, tiny_model_dir, processor_of, media_dir, mode="reduce-overhead",
                           family_name=family_name, lora_dropout=lora_dropout, accumulate=accumulate,
                           first_gradients=graphed_gradients)
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])  # they ran as CUDA graphs
    torch._dynamo.reset()
    train_losses(True, tiny_model_dir, processor_of, media_dir, family_name=family_name, lora_dropout=lora_dropout,
                 accumulate=accumulate, first_gradients=compiled_gradients, fixed_rows=True, steps=accumulate)
    eager = train_losses(False, tiny_model_dir, processor_of, media_dir, family_name=family_name,
                         lora_dropout=lora_dropout, accumulate=accumulate, first_gradients=eager_gradients)
    assert graphed[-1] < graphed[0]
    for step, (a, b) in enumerate(zip(graphed, eager)):
        assert abs(a - b) <= 1e-2 * abs(b), (step, a, b)
    # The first optimizer step's accumulated gradients themselves (a micro-step's gradients lost or counted twice
    # would barely move AdamW's first updates, so the losses alone would not show it; it would move the gradients by
    # about half their size, the two micro-steps' rows differing). Against the same inductor kernels run without
    # CUDA graphs on the same fixed-shape rows: replaying them as graphs must not change the arithmetic (bf16
    # compiled vs eager differs by ~2-3% here, a different fusion order, so eager is not the reference for this).
    # LoRA B starts at zero, so only the parameters with a gradient of some size are compared.
    assert len(graphed_gradients) == len(compiled_gradients) == len(eager_gradients) > 0
    worst = 0.0
    for got, expected, eager_gradient in zip(graphed_gradients, compiled_gradients, eager_gradients):
        if expected.norm() > 1e-6:
            worst = max(worst, ((got - expected).norm() / expected.norm()).item())
            assert (expected - eager_gradient).norm() <= 5e-2 * eager_gradient.norm()  # compiled still computes it
    print(f"worst relative gradient difference, graphed vs compiled: {worst:.2e}")
    assert worst <= 5e-3
