"""--new_special_tokens beyond the embedding's free rows (model/loading.fit_embeddings): the embedding and an untied
head grow to the next multiple of 128 rows, the old rows untouched, the new ones the mean of the old, alike on every
load (so an adapter that did not train them needs none of them saved); the config says the new size."""

from __future__ import annotations

import pytest
import torch

from vlft.model.loading import fit_embeddings, load_pretrained


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_5"])
def test_the_embedding_grows_to_hold_the_tokens(family, tiny_model_dir):
    model = load_pretrained(tiny_model_dir(family), torch.float32)
    rows = model.get_input_embeddings().num_embeddings
    before = {name: module.weight.detach().clone() for name, module in
              (("input", model.get_input_embeddings()), ("output", model.get_output_embeddings()))}
    assert fit_embeddings(model, rows) is None  # enough rows: nothing changes
    grown = fit_embeddings(model, rows + 33)
    assert grown == -(-(rows + 33) // 128) * 128 and grown % 128 == 0
    assert model.config.get_text_config().vocab_size == grown
    for name, module in (("input", model.get_input_embeddings()), ("output", model.get_output_embeddings())):
        weight = module.weight.detach()
        assert weight.shape == (grown, before[name].shape[1]), name
        assert torch.equal(weight[:rows], before[name])
        expected = before[name].double().mean(0).float()
        torch.testing.assert_close(weight[rows:], expected.expand(grown - rows, -1), rtol=1e-5, atol=1e-6)
    again = load_pretrained(tiny_model_dir(family), torch.float32)
    fit_embeddings(again, rows + 33)
    assert torch.equal(again.get_input_embeddings().weight, model.get_input_embeddings().weight)


def test_a_tied_head_grows_with_the_embedding_and_stays_tied(tiny_model_dir):
    """Qwen3-VL-2B/4B tie the head to the embedding (the tiny models do not): one weight, grown once."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(tiny_model_dir("qwen3_vl"))
    config.tie_word_embeddings = config.get_text_config().tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    rows = model.get_input_embeddings().num_embeddings
    old = model.get_input_embeddings().weight.detach().clone()
    grown = fit_embeddings(model, rows + 1)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight.shape[0] == grown
    torch.testing.assert_close(model.get_input_embeddings().weight[rows:].detach(),
                               old.double().mean(0).float().expand(grown - rows, -1))
