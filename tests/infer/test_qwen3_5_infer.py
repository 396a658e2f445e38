"""Inference on the tiny Qwen3.5 (its linear-attention cache through transformers' generate): thinking on and
off give the chat template's prompts, streaming gives the non-streamed answer, left-padded batches the
one-at-a-time answers, and tools reach the prompt."""

from __future__ import annotations

import pytest

from tests.conftest import REPO

IMAGES = REPO / "examples" / "data" / "images"
MEDIA = {"image_max_token_num": 16, "image_min_token_num": 4}


@pytest.fixture(scope="module")
def engine(vlft_cache):
    from vlft import InferEngine

    return InferEngine("vlft/tiny-qwen3.5", max_batch_size=3, **MEDIA)


def requests(thinking: bool | None):
    from vlft import InferRequest

    switch = None if thinking is None else {"enable_thinking": thinking}
    return [InferRequest(messages=[{"role": "user", "content": "<image>What colour is this image?"}],
                         images=[str(IMAGES / "red.png")], chat_template_kwargs=switch),
            InferRequest(messages=[{"role": "user", "content": "Where is the capital of Zhejiang?"}],
                         chat_template_kwargs=switch),
            InferRequest(messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                                   {"role": "user", "content": "<image>And this?"}],
                         images=[str(IMAGES / "square1.png")], chat_template_kwargs=switch)]


def test_thinking_switches_the_generation_prompt(engine):
    """The tiny model carries Qwen3.5-0.8B's template: thinking off by default, an open <think> when on (the
    engine's --enable_thinking, or a request's chat_template_kwargs as vLLM and SGLang take it)."""
    from vlft.data.formats import to_sample
    from vlft.infer.chat_request import RequestLimits, engine_request
    from vlft.infer.openai_types import ChatCompletionRequest
    from vlft.infer.protocol import RequestConfig
    from vlft.infer.server_media import ImageDecoder, RequestFiles

    sample = to_sample({"messages": [{"role": "user", "content": "Hi"}]}, require_answer=False)
    prompts = {thinking: engine.encoder.tokenizer.decode(
        engine.encoder.encode(sample, add_generation_prompt=True, enable_thinking=thinking).input_ids)
        for thinking in (None, True, False)}
    assert prompts[None] == prompts[False] and prompts[None].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert prompts[True].endswith("<|im_start|>assistant\n<think>\n")
    body = {"messages": [{"role": "user", "content": "Hi"}], "chat_template_kwargs": {"enable_thinking": True}}
    request, _ = engine_request(ChatCompletionRequest.model_validate(body), RequestLimits(), RequestConfig(),
                                ImageDecoder(), RequestFiles())
    assert engine.encoder.tokenizer.decode(engine._inputs(request)["input_ids"][0]) == prompts[True]


@pytest.mark.parametrize("thinking", [None, True])
def test_streaming_and_batches_give_the_one_at_a_time_answers(thinking, engine):
    from vlft import RequestConfig

    config = RequestConfig(max_tokens=8, temperature=0)
    batched = [r.choices[0].message.content for r in engine.infer(requests(thinking), config)]
    single = [engine.infer([r], config)[0].choices[0].message.content for r in requests(thinking)]
    assert batched == single and all(single)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in
                       engine.infer(requests(thinking)[:1], RequestConfig(max_tokens=8, stream=True))[0])
    assert streamed == single[0]


def test_tools_reach_the_prompt(engine):
    from vlft import InferRequest, RequestConfig
    from vlft.data.formats import to_sample

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    request = InferRequest(messages=[{"role": "user", "content": "Weather?"}], tools=tools)
    inputs = engine._inputs(request)
    text = engine.encoder.tokenizer.decode(inputs["input_ids"][0])
    assert text.startswith("<|im_start|>system\n# Tools\n") and '"name": "get_weather"' in text
    assert engine.infer([request], RequestConfig(max_tokens=4))[0].choices[0].message.content is not None
    assert to_sample({"messages": request.messages, "tools": tools}, require_answer=False).tools


def test_a_requests_preserve_thinking_keeps_earlier_thinking_in_the_prompt(engine):
    """chat_template_kwargs.preserve_thinking (as ms-swift's server takes it): an earlier turn's <think> block stays
    in the prompt; without it the prompt is the chat template's, which drops it."""
    from vlft.infer.chat_request import RequestLimits, engine_request
    from vlft.infer.openai_types import ChatCompletionRequest
    from vlft.infer.protocol import RequestConfig
    from vlft.infer.server_media import ImageDecoder, RequestFiles

    messages = [{"role": "user", "content": "1+1?"},
                {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n2"},
                {"role": "user", "content": "times 3?"}]

    def prompt(switches):
        body = {"messages": messages, **({"chat_template_kwargs": switches} if switches else {})}
        request, _ = engine_request(ChatCompletionRequest.model_validate(body), RequestLimits(), RequestConfig(),
                                    ImageDecoder(), RequestFiles())
        return engine.encoder.tokenizer.decode(engine._inputs(request)["input_ids"][0])

    assert "add them" not in prompt(None)
    assert "<think>\nadd them\n</think>\n\n2<|im_end|>" in prompt({"preserve_thinking": True})
