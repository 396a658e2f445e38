"""GPU only (skipped elsewhere): packed rows through PyTorch's varlen FlashAttention in bf16 against
unpacked sdpa forwards: per-sample losses within 1e-2 relative, LoRA gradients aligned."""

from __future__ import annotations

import pytest
import torch

from tests.train.test_packing_parity import (cosine, encoded_batch, lora_args, per_sample_losses)
from vlft.data.collator import PaddingFreeCollator, VisionTokens
from vlft.train.attention import ATTENTION_NAME
from vlft.train.model import load_model
from vlft.train.tuners import prepare_trainable

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _to_cuda(sample):
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
        value = getattr(sample, key)
        if value is not None:
            setattr(sample, key, value.cuda())
    return sample


class CudaModel(torch.nn.Module):
    """Moves a batch to CUDA before the forward (the helpers build CPU tensors)."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, **batch):
        return self.inner(**{k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()})


@pytest.mark.parametrize("family_name", ["qwen3_vl", "qwen2_5_vl"])
def test_bf16_varlen_packed_matches_unpacked(family_name, tiny_model_dir, processor_of, media_dir):
    encoder, family, samples = encoded_batch(family_name, tiny_model_dir, processor_of, media_dir)
    tokens = VisionTokens(encoder.image_pad_id, encoder.video_pad_id, encoder.tokenizer.pad_token_id)
    results = {}
    for attention, packed in (("sdpa", False), (ATTENTION_NAME, True)):
        torch.manual_seed(0)
        model = prepare_trainable(load_model(tiny_model_dir(family_name), torch.bfloat16, attention), family,
                                  lora_args()).cuda()
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.02, generator=torch.Generator(param.device).manual_seed(1))
        collator = PaddingFreeCollator(family, tokens,
                                       getattr(model.config.vision_config, "tokens_per_second", None))
        wrapped = CudaModel(model)
        pairs = per_sample_losses(wrapped, [_to_cuda(s) for s in samples], tokens, packed, collator)
        total = sum(loss for loss, _ in pairs) / sum(count for _, count in pairs)
        total.backward()
        results[packed] = ([(loss / count).item() for loss, count in pairs],
                           torch.cat([p.grad.float().flatten() for p in model.parameters() if p.requires_grad]))
    (unpacked_losses, unpacked_grads), (packed_losses, packed_grads) = results[False], results[True]
    for a, b in zip(packed_losses, unpacked_losses):
        assert abs(a - b) <= 1e-2 * abs(b), (packed_losses, unpacked_losses)
    assert cosine(packed_grads, unpacked_grads) >= 0.99
