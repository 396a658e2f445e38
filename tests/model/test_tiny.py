"""Built-in tiny models: plain HF model dirs that load with the Auto classes, carry the real Qwen
tokenizer and the family's official chat template, and run on what vlft encodes."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from tests.conftest import FAMILIES
from tests.data.test_encode_parity import SHAPES, make_encoder, to_vlft_row
from vlft.data.formats import to_sample
from vlft.model.tiny import official_file


def test_tokenizer_has_real_qwen_ids(processor_of):
    tokenizer = processor_of("qwen3_vl").tokenizer
    assert tokenizer("Hello world!").input_ids == [9707, 1879, 0]
    expected = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
                "<|vision_end|>": 151653, "<|image_pad|>": 151655, "<|video_pad|>": 151656}
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in expected} == expected
    assert len(tokenizer) == 151669


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_dir_is_a_normal_hf_model(family, tiny_model_dir, processor_of, media_dir):
    model_dir = tiny_model_dir(family)
    processor = AutoProcessor.from_pretrained(model_dir)
    assert processor.chat_template == official_file(family, "chat_template.jinja").read_text()
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    assert model.config.model_type == family
    encoder, _, _ = make_encoder(family, tiny_model_dir, processor_of)
    encoded = encoder.encode(to_sample(to_vlft_row(SHAPES["image_and_video"], media_dir)))
    ids = torch.tensor([encoded.input_ids])
    mm_types = (ids == 151655).long() + 2 * (ids == 151656).long()
    extra = {"second_per_grid_ts": torch.tensor(encoded.second_per_grid_ts)} if encoded.second_per_grid_ts else {}
    out = model(input_ids=ids, labels=torch.tensor([encoded.labels]), pixel_values=encoded.pixel_values,
                image_grid_thw=encoded.image_grid_thw, pixel_values_videos=encoded.pixel_values_videos,
                video_grid_thw=encoded.video_grid_thw, mm_token_type_ids=mm_types, **extra)
    assert torch.isfinite(out.loss)
    # random weights over a 151,936-token vocabulary: logits of std ~1 give a loss near log(vocab) + 1/2
    assert abs(out.loss.item() - (torch.log(torch.tensor(151936.0)).item() + 0.5)) < 1.0


def test_vlft_model_tiny_command(tmp_path):
    from vlft.cli.main import main

    assert main(["model", "tiny", "--family", "qwen2_vl", "--output", str(tmp_path / "m")]) == 0
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "m")
    assert model.config.model_type == "qwen2_vl"


@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_5_moe"])
def test_tiny_qwen3_5_mtp_layer_is_stored_as_a_full_attention_decoder_layer(family, tiny_model_dir):
    """The files carry a whole multi-token-prediction head (what Megatron-Core conversion maps): its decoder layer
    has the names and shapes the files give the model's own full-attention layer (as transformers saved it), as
    real Qwen3.5 checkpoints' have."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    tensors = load_file(str(tiny_model_dir(family) / "model.safetensors"))
    text_config = AutoConfig.from_pretrained(tiny_model_dir(family)).text_config
    full = f"model.language_model.layers.{text_config.layer_types.index('full_attention')}."
    expected = {k[len(full):]: tuple(v.shape) for k, v in tensors.items() if k.startswith(full)}
    mtp = {k[len("mtp.layers.0."):]: tuple(v.shape) for k, v in tensors.items() if k.startswith("mtp.layers.0.")}
    assert mtp == expected and "self_attn.q_proj.weight" in mtp
    hidden = text_config.hidden_size
    assert {k: tuple(v.shape) for k, v in tensors.items() if k.startswith("mtp.") and ".layers." not in k} == {
        "mtp.fc.weight": (hidden, 2 * hidden), "mtp.norm.weight": (hidden,),
        "mtp.pre_fc_norm_embedding.weight": (hidden,), "mtp.pre_fc_norm_hidden.weight": (hidden,)}
