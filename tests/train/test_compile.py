"""--torch_compile: the decoder layers compiled one by one give the eager model's losses and LoRA gradients
(CPU, fp32, gradient checkpointing on, vlft's varlen attention function), and a dense layer compiles
into one graph with no break (else its checkpoint would run it eager). The graphs are captured by
torch's dynamo and run through its aot_eager backend: the same graph capture and autograd split as
inductor, without generating kernels (inductor on this CPU takes over a minute; tests/gpu runs it)."""

from __future__ import annotations

import pytest
import torch

from tests.train.test_packing_parity import MIXED, encoded_batch, lora_args
from vlft.data.collator import PaddingFreeCollator, VisionTokens
from vlft.errors import VlftError
from vlft.train.attention import ATTENTION_NAME
from vlft.train.compile import compile_decoder_layers, compile_frozen_vision_blocks, decoder_layers
from vlft.train.model import enable_gradient_checkpointing, load_model
from vlft.train.tuners import prepare_trainable


def lora_model(tiny_model_dir, family, family_name: str):
    torch.manual_seed(0)
    model = load_model(tiny_model_dir(family_name), torch.float32, ATTENTION_NAME)
    enable_gradient_checkpointing(model, llm=True, vit=False)
    model = prepare_trainable(model, family, lora_args()).train()
    for name, param in model.named_parameters():  # LoRA B starts at zero: give it values so A has gradients
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    return model


@pytest.mark.parametrize("family_name", ["qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen2_5_vl", "qwen2_vl"])
def test_compiled_layers_match_eager(family_name, tiny_model_dir, processor_of, media_dir):
    encoder, family, samples = encoded_batch(family_name, tiny_model_dir, processor_of, media_dir)
    tokens = VisionTokens(encoder.image_pad_id, encoder.video_pad_id, encoder.tokenizer.pad_token_id)
    collator = PaddingFreeCollator(family, tokens, None)
    # Two row lengths (static, then dynamic shapes) on the dense model; one on the others.
    rows = [samples] if family_name != "qwen3_vl" else [samples, samples[:3]]
    results = {}
    for compiled in (False, True):
        model = lora_model(tiny_model_dir, family, family_name)
        if compiled:
            torch._dynamo.reset()
            torch._dynamo.utils.counters.clear()
            layers, whole = compile_decoder_layers(model, backend="aot_eager")
            assert layers == model.config.text_config.num_hidden_layers
            # Qwen3.5: its one softmax-attention layer whole; the DeltaNet layers part by part, their mixer eager
            assert whole == {"qwen3_5": 1}.get(family_name, layers)
        losses, grads = [], []
        for row in rows:
            model.zero_grad()
            loss = model(**collator(row)).loss
            loss.backward()
            losses.append(loss.item())
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
        results[compiled] = losses, grads
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] > 0  # the layers did run compiled
    if family_name in ("qwen3_vl", "qwen3_vl_moe"):  # a layer is one graph, its checkpoint (and routing) included
        assert not counters["graph_break"], dict(counters["graph_break"])
    assert len(MIXED) == len(samples)
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-6)
    for compiled_grad, eager_grad in zip(results[True][1], results[False][1]):
        assert eager_grad.abs().sum() > 0
        # fp32 sums reassociated by the compiled graphs, measured against the gradient's own scale (an element-wise
        # rtol fails on near-zero elements: 2.1e-3 relative, 1.9e-7 absolute, on one of 19,296 Qwen3.5 elements on an
        # AMD EPYC host; 1.3e-4 on an Intel Xeon one). A wrong graph moves them by far more.
        error, scale = (compiled_grad - eager_grad).abs().max().item(), eager_grad.abs().max().item()
        print(family_name, "largest gradient difference over the largest gradient:", error / scale)
        assert error <= 1e-4 * scale
        assert (compiled_grad - eager_grad).norm() <= 1e-5 * eager_grad.norm()


def test_layers_are_found_under_peft_and_missing_ones_are_named(tiny_model_dir, processor_of, media_dir):
    _, family, _ = encoded_batch("qwen3_vl", tiny_model_dir, processor_of, media_dir)
    model = lora_model(tiny_model_dir, family, "qwen3_vl")
    assert decoder_layers(model) is model.get_base_model().model.language_model.layers
    with pytest.raises(VlftError, match="not a Hugging Face model"):
        decoder_layers(torch.nn.Linear(2, 2))



@pytest.mark.parametrize("family_name", ["qwen3_vl", "qwen2_5_vl"])
def test_frozen_vision_blocks_compile_whole_and_match_eager(family_name, tiny_model_dir, processor_of):
    """A frozen ViT's blocks compile into forward graphs with no break (Qwen2.5-VL: its windowed blocks too),
    over two image batches of different sizes, and give the eager tower's output; a trained ViT stays eager."""
    import numpy as np
    from PIL import Image

    from vlft.families import get_family

    family = get_family(family_name)
    model = load_model(tiny_model_dir(family_name), torch.float32, ATTENTION_NAME)
    enable_gradient_checkpointing(model, llm=True, vit=True)
    model = prepare_trainable(model, family, lora_args()).train()
    visual = model.get_base_model().model.visual
    rng = np.random.default_rng(0)
    batches = []
    for sizes in (((64, 96), (32, 32)), ((96, 64), (64, 64), (32, 64))):
        images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
        inputs = processor_of(family_name).image_processor(images=images, return_tensors="pt")
        batches.append((inputs["pixel_values"], inputs["image_grid_thw"]))

    def outputs():
        out = [visual(pixels, grid_thw=grid) for pixels, grid in batches]
        return [o.pooler_output if hasattr(o, "pooler_output") else o for o in out]

    expected = outputs()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    assert compile_frozen_vision_blocks(model, backend="aot_eager") == model.config.vision_config.depth
    assert not any(block.gradient_checkpointing for block in visual.blocks)
    got = outputs()
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] > 0 and not counters["graph_break"], dict(counters["graph_break"])
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)

    trained_vit = prepare_trainable(load_model(tiny_model_dir(family_name), torch.float32, ATTENTION_NAME), family,
                                    lora_args(freeze_vit=False))
    assert compile_frozen_vision_blocks(trained_vit, backend="aot_eager") == 0
