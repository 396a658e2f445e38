"""Inference on the tiny Qwen3.5 (its linear-attention cache through transformers' generate): thinking on and
off give the chat template's prompts, streaming gives the non-streamed answer, left-padded batches the
one-at-a-time answers, and tools reach the prompt."""

from __future__ import annotations

import pytest

from tests.conftest import REPO

IMAGES = REPO / "examples" / "data" / "images"
MEDIA = {"image_max_token_num": 16, "image_min_token_num": 4}


@pytest.fixture(scope="module")
def engines(vlft_cache):
    from vlft import InferEngine

    return {thinking: InferEngine("vlft/tiny-qwen3.5", enable_thinking=thinking, max_batch_size=3, **MEDIA)
            for thinking in (None, True)}


def requests():
    from vlft import InferRequest

    return [InferRequest(messages=[{"role": "user", "content": "<image>What colour is this image?"}],
                         images=[str(IMAGES / "red.png")]),
            InferRequest(messages=[{"role": "user", "content": "Where is the capital of Zhejiang?"}]),
            InferRequest(messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                                   {"role": "user", "content": "<image>And this?"}],
                         images=[str(IMAGES / "square1.png")])]


def test_thinking_switches_the_generation_prompt(engines):
    """The tiny model carries Qwen3.5-0.8B's template: thinking off by default, an open <think> when on."""
    from vlft.data.formats import to_sample

    prompts = {}
    for thinking, engine in engines.items():
        sample = to_sample({"messages": [{"role": "user", "content": "Hi"}]}, require_answer=False)
        ids = engine.encoder.encode(sample, add_generation_prompt=True).input_ids
        prompts[thinking] = engine.encoder.tokenizer.decode(ids)
    assert prompts[None].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert prompts[True].endswith("<|im_start|>assistant\n<think>\n")


@pytest.mark.parametrize("thinking", [None, True])
def test_streaming_and_batches_give_the_one_at_a_time_answers(thinking, engines):
    from vlft import RequestConfig

    engine = engines[thinking]
    config = RequestConfig(max_tokens=8, temperature=0)
    batched = [r.choices[0].message.content for r in engine.infer(requests(), config)]
    single = [engine.infer([r], config)[0].choices[0].message.content for r in requests()]
    assert batched == single and all(single)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in
                       engine.infer(requests()[:1], RequestConfig(max_tokens=8, temperature=0, stream=True))[0])
    assert streamed == single[0]


def test_a_request_switches_thinking_for_itself(engines):
    """vLLM's and SGLang's `chat_template_kwargs`: {"enable_thinking": true} on one request of a thinking-off
    engine gives that request the thinking engine's prompt and answer."""
    from vlft import InferRequest, RequestConfig
    from vlft.infer.chat_request import RequestLimits, parse_chat_request

    body = {"messages": [{"role": "user", "content": "Hi"}], "chat_template_kwargs": {"enable_thinking": True},
            "max_tokens": 6}
    request, config = parse_chat_request(body, RequestLimits())
    assert request.chat_template_kwargs == {"enable_thinking": True}
    off, on = engines[None], engines[True]
    prompt = off.encoder.tokenizer.decode(off._inputs(request)["input_ids"][0])
    assert prompt.endswith("<|im_start|>assistant\n<think>\n")
    plain = InferRequest(messages=body["messages"])
    config = RequestConfig(max_tokens=6)
    assert off.infer([request], config)[0].choices[0].message.content == \
        on.infer([plain], config)[0].choices[0].message.content


def test_tools_reach_the_prompt(engines):
    from vlft import InferRequest, RequestConfig
    from vlft.data.formats import to_sample

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    request = InferRequest(messages=[{"role": "user", "content": "Weather?"}], tools=tools)
    engine = engines[None]
    inputs = engine._inputs(request)
    text = engine.encoder.tokenizer.decode(inputs["input_ids"][0])
    assert text.startswith("<|im_start|>system\n# Tools\n") and '"name": "get_weather"' in text
    assert engine.infer([request], RequestConfig(max_tokens=4))[0].choices[0].message.content is not None
    assert to_sample({"messages": request.messages, "tools": tools}, require_answer=False).tools
