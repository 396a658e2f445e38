"""--loss_scale's weightings (vlft/data/loss_scale.py, ms-swift's tables under templates/loss_scale/): the pieces and
weights of a text as ms-swift's calculate_loss_scale splits them (written out by hand from the tables), the
weights an encoded sample carries, and the collator's aligned tensor."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.data.test_hermes_tools import CASES, make_encoder
from vlft.data.collator import PaddedCollator, PaddingFreeCollator, VisionTokens
from vlft.data.encode import IGNORE_INDEX
from vlft.data.formats import to_sample
from vlft.data.loss_scale import LossScale, parse_loss_scale, weighted_loss_scale
from vlft.families import get_family


def test_hermes_weighs_each_tool_call_block_twice():
    text = ('Let me check.\n<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n'
            '<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call><|im_end|>\n')
    assert parse_loss_scale("hermes").weigh(text) == [
        ("Let me check.\n", 1.0),
        ('<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>', 2.0),
        ("\n", 1.0),
        ('<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>', 2.0),
        ("<|im_end|>\n", 1.0)]
    assert parse_loss_scale("hermes").weigh("No call.<|im_end|>") == [("No call.<|im_end|>", 1.0)]


def test_react_weighs_each_delimiter_and_the_text_after_it():
    text = "Thought: look it up\nAction: search\nAction Input: {\"q\": 1}\nObservation: 42\nFinal Answer: 42"
    assert parse_loss_scale("react").weigh("I will. " + text) == [
        ("I will. ", 1.0),
        ("Thought:", 1.0), (" look it up\n", 1.0),
        ("Action:", 2.0), (" search\n", 2.0),
        ("Action Input:", 2.0), (" {\"q\": 1}\n", 2.0),
        ("Observation:", 2.0), (" 42\n", 0.0),  # the tool's result is the environment's, not trained
        ("Final Answer:", 1.0), (" 42", 1.0)]


def test_weightings_chain_and_multiply():
    """ms-swift's ConcatLossScale: each weighting splits the pieces of the one before; weights multiply."""
    scale = parse_loss_scale("hermes+ignore_think_prefix")
    assert scale == LossScale("default", False, ("hermes", "ignore_think_prefix"))
    assert scale.weigh("<think>\nx</think>\n\n<tool_call>\n{}\n</tool_call>") == [
        ("<think>\n", 0.0), ("x</think>\n\n", 1.0), ("<tool_call>\n{}\n</tool_call>", 2.0)]


def test_which_loss_scales_weigh_tokens():
    assert weighted_loss_scale("hermes") and weighted_loss_scale("last_round+react")
    assert not weighted_loss_scale("default") and not weighted_loss_scale("ignore_think_prefix")
    assert not weighted_loss_scale("nonsense")  # refused by the arguments' check, not here


@pytest.fixture(scope="module")
def hermes_row():
    messages, tools = CASES["system, content and two calls, two results"]
    return to_sample({"messages": messages, "tools": tools})


def weighted_encoder(processor_of, loss_scale: str):
    encoder = make_encoder("qwen3_vl", processor_of)
    encoder.settings = dataclasses.replace(encoder.settings, loss_scale=loss_scale)
    encoder.loss_scale = parse_loss_scale(loss_scale)
    return encoder


def test_a_hermes_sample_keeps_its_tokens_and_weighs_its_calls(processor_of, hermes_row):
    """The same ids and labels as without --loss_scale (the splits fall on <tool_call> / </tool_call>, special
    tokens); weight 2 on exactly the calls' tokens, 1 on the rest of the trained tokens, 0 on the untrained."""
    plain = make_encoder("qwen3_vl", processor_of).encode(hermes_row)
    weighted = weighted_encoder(processor_of, "hermes").encode(hermes_row)
    assert weighted.input_ids == plain.input_ids and weighted.labels == plain.labels
    assert plain.loss_scale is None and len(weighted.loss_scale) == len(weighted.input_ids)
    tokenizer = processor_of("qwen3_vl").tokenizer
    doubled = tokenizer.decode([t for t, w in zip(weighted.input_ids, weighted.loss_scale) if w == 2.0])
    assert doubled == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "杭州"}}\n</tool_call>'
                       '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
    assert set(weighted.loss_scale) == {0.0, 1.0, 2.0}
    assert [w == 0.0 for w in weighted.loss_scale] == [label == IGNORE_INDEX for label in weighted.labels]


def test_a_zero_one_weighting_becomes_labels_only(processor_of):
    """ignore_think_prefix weighs 0 or 1 (ms-swift's binary loss scale): the `<think>\\n` prefix is untrained and
    the sample carries no weights."""
    row = to_sample({"messages": [{"role": "user", "content": "Hi"},
                                  {"role": "assistant", "content": "<think>\nHello?\n</think>\n\nHello!"}]})
    encoded = weighted_encoder(processor_of, "ignore_think_prefix").encode(row)
    plain = make_encoder("qwen3_vl", processor_of).encode(row)
    assert encoded.loss_scale is None and encoded.input_ids == plain.input_ids
    tokenizer = processor_of("qwen3_vl").tokenizer
    trained = tokenizer.decode([t for t in encoded.labels if t != IGNORE_INDEX])
    assert trained == tokenizer.decode([t for t in plain.labels if t != IGNORE_INDEX]).removeprefix("<think>\n")


def test_collators_align_the_weights_with_the_labels(processor_of, hermes_row):
    encoder = weighted_encoder(processor_of, "hermes")
    weighted = encoder.encode(hermes_row)
    plain = make_encoder("qwen3_vl", processor_of).encode(hermes_row)
    tokens = VisionTokens(encoder.image_pad_id, encoder.video_pad_id, encoder.tokenizer.pad_token_id)
    row = PaddingFreeCollator(get_family("qwen3_vl"), tokens)([weighted, plain])
    scale, labels = row["loss_scale"][0].tolist(), row["labels"][0].tolist()
    assert len(scale) == len(labels)
    first, second = scale[:weighted.length], scale[weighted.length:]
    assert first == [0.0, *weighted.loss_scale[1:]]  # a sample's first token is never a target
    assert second == [0.0] + [0.0 if t == IGNORE_INDEX else 1.0 for t in plain.labels[1:]]
    padded = PaddedCollator(tokens)([plain, weighted])
    assert padded["loss_scale"].shape == padded["labels"].shape
    assert padded["loss_scale"][1, :weighted.length].tolist() == weighted.loss_scale
    assert padded["loss_scale"][0, plain.length:].eq(0).all()
    assert "loss_scale" not in PaddingFreeCollator(get_family("qwen3_vl"), tokens)([plain])
    assert torch.equal(row["labels"][0, :weighted.length],
                       torch.tensor([IGNORE_INDEX, *weighted.labels[1:]]))


REACT_ANSWER = ("Thought: look it up\nAction: search\nAction Input: {\"q\": 1}\nObservation: 42\n"
                "Thought: done\nFinal Answer: 42")


def weights_of(encoder, encoded) -> list[tuple[str, float]]:
    """The encoded text in runs of one weight, decoded."""
    runs: list[tuple[list[int], float]] = []
    for token, weight in zip(encoded.input_ids, encoded.loss_scale):
        if runs and runs[-1][1] == weight:
            runs[-1][0].append(token)
        else:
            runs.append(([token], weight))
    return [(encoder.tokenizer.decode(ids), weight) for ids, weight in runs]


def test_the_turn_end_is_weighed_on_its_own(processor_of):
    """ms-swift weighs an answer and the template's suffix apart: the `<|im_end|>` after react's `Observation:`
    text (weight 0) is trained with weight 1, and the pieces of one weight are tokenized together."""
    row = to_sample({"messages": [{"role": "user", "content": "Q"},
                                  {"role": "assistant", "content": "Thought: x\nAction: f\nAction Input: {}\n"
                                                                   "Observation: result"}]})
    encoder = weighted_encoder(processor_of, "react")
    encoded = encoder.encode(row)
    assert weights_of(encoder, encoded)[-3:] == [("Action: f\nAction Input: {}\nObservation:", 2.0),
                                                 (" result", 0.0), ("<|im_end|>\n", 1.0)]


def test_equal_weights_are_tokenized_as_one_text(processor_of):
    """Thought / Final Answer weigh 1 like the text around them: the answer's ids are those of plain encoding."""
    row = to_sample({"messages": [{"role": "user", "content": "Q"},
                                  {"role": "assistant", "content": "Thought: easy\nFinal Answer: 42"}]})
    weighted = weighted_encoder(processor_of, "react").encode(row)
    assert weighted.input_ids == make_encoder("qwen3_vl", processor_of).encode(row).input_ids
    assert weighted.loss_scale is None  # only 0 and 1


def test_under_all_each_turn_is_weighed_on_its_own(processor_of):
    """`all+react`: an answer ending in `Observation:` text does not carry its weight 0 into the next user turn."""
    row = to_sample({"messages": [{"role": "user", "content": "Q"},
                                  {"role": "assistant", "content": "Action: f\nAction Input: {}\nObservation: r"},
                                  {"role": "user", "content": "Thanks"},
                                  {"role": "assistant", "content": REACT_ANSWER}]})
    encoder = weighted_encoder(processor_of, "all+react")
    runs = weights_of(encoder, encoder.encode(row))
    assert runs[2][1] == 0.0 and runs[2][0] == " r"  # the first answer's observation
    assert runs[3][1] == 1.0 and runs[3][0].startswith("<|im_end|>\n<|im_start|>user\nThanks<|im_end|>\n")


def test_a_messages_own_loss_scale_is_refused_by_field():
    from vlft.errors import DataError

    with pytest.raises(DataError, match="loss_scale.*not supported") as error:
        to_sample({"messages": [{"role": "user", "content": "Q"},
                                {"role": "assistant", "content": "A", "loss_scale": 2.0}]})
    assert error.value.field == "messages[1].loss_scale"
