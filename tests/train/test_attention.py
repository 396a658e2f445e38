"""The varlen attention's boundary bookkeeping: computed once per forward by the language model's pre-hook
(no host reads inside the layers), and exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlft.train import attention
from vlft.train.attention import boundaries_from_positions, row_boundary_kwargs, torch_varlen_attention
from vlft.train.model import load_model


def test_boundaries_are_computed_once_per_forward_and_reach_every_layer(monkeypatch, tiny_model_dir):
    model = load_model(tiny_model_dir("qwen3_vl"), torch.float32, attention.ATTENTION_NAME)
    computed, seen = [], []
    real_kwargs = attention.row_boundary_kwargs
    monkeypatch.setattr(attention, "row_boundary_kwargs", lambda p, n: computed.append(n) or real_kwargs(p, n))
    real_attention = attention.torch_varlen_attention

    def spy(*args, **kwargs):
        seen.append(kwargs.get("cu_seq_lens_q"))
        return real_attention(*args, **kwargs)

    from transformers import AttentionInterface

    AttentionInterface.register(attention.ATTENTION_NAME, spy)
    try:
        positions = torch.tensor([0, 1, 2, 0, 1, 0, 1, 2, 3])
        position_ids = torch.stack([positions] * 4)[:, None, :]  # text row + 3 mRoPE rows
        with torch.no_grad():
            model(input_ids=torch.tensor([[100] * 9]), position_ids=position_ids)
    finally:
        attention.register_varlen_attention()
    assert computed == [9]  # once for the whole forward
    assert len(seen) == model.config.text_config.num_hidden_layers
    assert all(s is seen[0] and s.tolist() == [0, 3, 5, 9] for s in seen)


def test_attention_of_a_packed_row_equals_per_sample_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 4, 9, 8) for _ in range(3))
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    module = torch.nn.Module()
    module.is_causal = True
    by_positions, _ = torch_varlen_attention(module, q, k, v, None, position_ids=positions)
    by_kwargs, _ = torch_varlen_attention(module, q, k, v, None, **row_boundary_kwargs(positions, 9))
    for start, end in zip([0, 3, 5], [3, 5, 9]):
        expected = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], is_causal=True)
        torch.testing.assert_close(by_positions[0, start:end], expected[0].transpose(0, 1))
        torch.testing.assert_close(by_kwargs[0, start:end], expected[0].transpose(0, 1))
    assert boundaries_from_positions(positions, 9).tolist() == [0, 3, 5, 9]
    assert row_boundary_kwargs(positions, 9)["max_length_q"] == 4


def test_a_call_without_positions_is_one_sequence():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    module = torch.nn.Module()
    out, _ = torch_varlen_attention(module, q, k, v, None, is_causal=False)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out[0], expected[0].transpose(0, 1))


@pytest.mark.parametrize("family_name", ["qwen3_vl", "qwen2_5_vl", "qwen2_vl"])
def test_vision_tower_attends_all_images_in_one_call_per_block_and_equals_per_image_sdpa(family_name, tiny_model_dir,
                                                                                       processor_of):
    """Under the varlen attention the vision tower gets every image in one call per block (Qwen2.5-VL: its
    windowed blocks too), and its output equals transformers' per-image sdpa path on the same weights; a
    video's frames attend within themselves the same way."""
    from PIL import Image

    model_dir = tiny_model_dir(family_name)
    reference = load_model(model_dir, torch.float32, "sdpa")
    model = load_model(model_dir, torch.float32, attention.ATTENTION_NAME)
    assert model.model.visual.config._attn_implementation == attention.VISION_ATTENTION_NAME
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((64, 96), (32, 32), (96, 64))]
    inputs = processor_of(family_name).image_processor(images=images, return_tensors="pt")
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs.get("cu_seq_lens_q"))
        return attention.torch_varlen_attention(*args, **kwargs)

    from transformers import AttentionInterface

    AttentionInterface.register(attention.VISION_ATTENTION_NAME, spy)
    try:
        with torch.no_grad():
            got = model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
            expected = reference.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    finally:
        attention.register_varlen_attention()
    got, expected = (out.pooler_output if hasattr(out, "pooler_output") else out for out in (got, expected))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert len(calls) == model.config.vision_config.depth

    frames = rng.integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)  # two temporal patches
    video = processor_of(family_name).video_processor(videos=[frames], return_tensors="pt", do_sample_frames=False)
    with torch.no_grad():
        got_video, expected_video = (m.model.visual(video["pixel_values_videos"], grid_thw=video["video_grid_thw"])
                                     for m in (model, reference))
    got_video, expected_video = (out.pooler_output if hasattr(out, "pooler_output") else out
                                 for out in (got_video, expected_video))
    assert video["video_grid_thw"][0, 0] == 2
    torch.testing.assert_close(got_video, expected_video, rtol=1e-5, atol=1e-5)
    patches = inputs["image_grid_thw"].prod(-1)
    full_blocks = [c for c in calls if c.tolist() == [0, *patches.cumsum(0).tolist()]]
    assert full_blocks  # whole images in one call (Qwen2.5-VL's other blocks attend within windows)
    assert all(c[-1] == patches.sum() for c in calls)


def test_flash_attention_inputs_come_in_one_half_precision():
    """FlashAttention (a custom operator autocast does not cast) takes no float32 and no mix: float16 runs whose
    trained parameters are float32 (tuners.upcast_trained_float16) give float32 queries beside float16 values."""
    from vlft.train.attention import in_kernel_dtype

    half, full = torch.ones(2, 2, dtype=torch.float16), torch.ones(2, 2)
    assert [t.dtype for t in in_kernel_dtype(full, full, half, torch.float16)] == [torch.float16] * 3
    assert [t.dtype for t in in_kernel_dtype(full, half, half, None)] == [torch.float16] * 3
    same = (half, half, half)
    assert all(a is b for a, b in zip(in_kernel_dtype(*same, torch.bfloat16), same))  # one half dtype: untouched
