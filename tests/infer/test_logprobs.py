"""Log probabilities of the generated tokens (ms-swift's `--logprobs` / `--top_logprobs`, OpenAI's `logprobs` /
`top_logprobs`): greedy answers' log probabilities equal log_softmax of a plain teacher-forced forward of the model
loaded by transformers (ground truth), whole, streamed and batched; the stop token's entry is kept; the tokens'
bytes spell the answer; `vlft infer` writes them to the result jsonl, `vlft deploy` returns them in OpenAI's shape
(whole and streamed) and refuses top_logprobs without logprobs."""

from __future__ import annotations

import json

import pytest
import torch

from tests.infer.server_helpers import QUESTION, RED, post
from vlft.cli.main import main
from vlft.errors import DataError, VlftError

openai = pytest.importorskip("openai")
SAY_HELLO = [{"role": "user", "content": "Say hello."}]
MEDIA = {"image_max_token_num": 16, "image_min_token_num": 4}


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from vlft import InferEngine

    return InferEngine(model=str(tiny_model_dir("qwen3_vl")), max_new_tokens=8, max_batch_size=4, **MEDIA)


@pytest.fixture(scope="module")
def hf_model(engine):
    """The checkpoint loaded again by transformers alone: the ground truth's model."""
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(engine.base_model_dir, dtype=torch.float32).eval()


def image_request():
    from vlft import InferRequest

    return InferRequest(messages=[{"role": "user", "content": f"<image>{QUESTION}"}], images=[str(RED)])


def teacher_forced(engine, hf_model, request, max_tokens: int) -> tuple[list[int], torch.Tensor]:
    """(the greedy answer's token ids from transformers' generate, log_softmax of one forward over prompt + answer
    at the answer's positions, [tokens, vocab])."""
    inputs = engine._inputs(request)
    prompt = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = hf_model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False, eos_token_id=engine.stop_ids)
        answer = out[:, prompt:]
        whole = {**inputs, "input_ids": out, "attention_mask": torch.ones_like(out),
                 "mm_token_type_ids": torch.nn.functional.pad(inputs["mm_token_type_ids"], (0, answer.shape[1]))}
        logits = hf_model(**whole).logits[0, prompt - 1:-1].float()
    return answer[0].tolist(), torch.log_softmax(logits, dim=-1)


def check_against(content: list[dict], ids: list[int], expected: torch.Tensor, tokenizer, top: int) -> None:
    """Each entry is the token's decoded text, bytes and teacher-forced log probability, and its top_logprobs are
    the `top` likeliest, most likely first, the greedy token among them first."""
    assert [e["token"] for e in content] == [tokenizer.decode([i]) for i in ids]
    chosen = expected[torch.arange(len(ids)), torch.tensor(ids)]
    assert torch.allclose(torch.tensor([e["logprob"] for e in content]), chosen, atol=1e-4)
    best = expected.topk(top, dim=-1)
    for entry, values, top_ids in zip(content, best.values, best.indices):
        assert [t["token"] for t in entry["top_logprobs"]] == [tokenizer.decode([i]) for i in top_ids.tolist()]
        got = [t["logprob"] for t in entry["top_logprobs"]]
        assert got == sorted(got, reverse=True) and torch.allclose(torch.tensor(got), values, atol=1e-4)
        assert entry["top_logprobs"][0]["token"] == entry["token"]  # greedy: the likeliest
        assert bytes(entry["bytes"]).decode("utf-8", errors="replace") == entry["token"]


def test_greedy_logprobs_are_the_teacher_forced_log_softmax_whole_and_streamed(engine, hf_model):
    from vlft import RequestConfig

    tokenizer = engine.encoder.tokenizer
    ids, expected = teacher_forced(engine, hf_model, image_request(), max_tokens=8)
    [whole] = engine.infer([image_request()], RequestConfig(max_tokens=8, logprobs=True, top_logprobs=3))
    choice = whole.choices[0]
    assert len(choice.logprobs["content"]) == whole.usage.completion_tokens == len(ids)
    check_against(choice.logprobs["content"], ids, expected, tokenizer, top=3)
    # the tokens' own bytes spell the answer (its special tokens, dropped from the text, aside)
    special = set(tokenizer.all_special_ids)
    spelled = b"".join(bytes(e["bytes"]) for e, i in zip(choice.logprobs["content"], ids) if i not in special)
    assert spelled == choice.message.content.encode()

    [chunks] = engine.infer([image_request()], RequestConfig(max_tokens=8, logprobs=True, top_logprobs=3,
                                                               stream=True))
    streamed = [e for c in chunks for e in c.choices[0].logprobs["content"]]
    check_against(streamed, ids, expected, tokenizer, top=3)
    [plain] = engine.infer([image_request()], RequestConfig(max_tokens=8))
    assert plain.choices[0].logprobs is None  # only when asked for


def test_batched_rows_get_their_own_logprobs_up_to_their_stop_token(engine, hf_model, monkeypatch):
    """Two prompts of different lengths generated together (left-padded): each row's logprobs are its own
    teacher-forced ones. The short answer ends at a stop token, whose entry is kept (as ms-swift's)."""
    from vlft import InferRequest, RequestConfig

    tokenizer = engine.encoder.tokenizer
    say = InferRequest(messages=SAY_HELLO)
    ids, _ = teacher_forced(engine, hf_model, say, max_tokens=8)
    monkeypatch.setattr(engine, "stop_ids", [ids[2], *engine.stop_ids])  # its third token now ends the answer
    short, short_expected = teacher_forced(engine, hf_model, say, max_tokens=8)
    long, long_expected = teacher_forced(engine, hf_model, image_request(), max_tokens=8)
    assert len(short) == 3 and len(long) > 3
    answers = engine.infer([say, image_request()], RequestConfig(max_tokens=8, logprobs=True, top_logprobs=2))
    assert answers[0].choices[0].finish_reason == "stop"
    assert answers[0].choices[0].logprobs["content"][-1]["token"] == tokenizer.decode([ids[2]])
    for answer, row_ids, expected in zip(answers, [short, long], [short_expected, long_expected]):
        check_against(answer.choices[0].logprobs["content"], row_ids, expected, tokenizer, top=2)


def test_top_logprobs_unset_or_zero_gives_empty_lists(engine):
    from vlft import InferRequest, RequestConfig

    for top in (None, 0):
        [answer] = engine.infer([InferRequest(messages=SAY_HELLO)], RequestConfig(max_tokens=3, logprobs=True,
                                                                                   top_logprobs=top))
        content = answer.choices[0].logprobs["content"]
        assert len(content) == 3 and all(e["top_logprobs"] == [] for e in content)


def test_vlft_infer_writes_logprobs_to_the_result_jsonl(engine, tmp_path, capsys):
    data = tmp_path / "val.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": text}, {"role": "assistant",
                                                                                         "content": "Hi."}]}) + "\n"
                            for text in ("Say hello.", "Name a colour.")))
    model = str(engine.base_model_dir)
    results = {}
    for name, flags in {"off": [], "whole": ["--logprobs", "true", "--top_logprobs", "2"],
                        "streamed": ["--logprobs", "true", "--top_logprobs", "2", "--stream", "true"]}.items():
        path = tmp_path / f"{name}.jsonl"
        assert main(["infer", "--model", model, "--val_dataset", str(data), "--max_new_tokens", "4",
                     "--result_path", str(path), *flags]) == 0, capsys.readouterr().err
        results[name] = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["logprobs"] for r in results["off"]] == [None, None]  # the key is there, null (ms-swift's)
    from vlft import InferRequest, RequestConfig

    for row, streamed, text in zip(results["whole"], results["streamed"], ("Say hello.", "Name a colour.")):
        [direct] = engine.infer([InferRequest(messages=[{"role": "user", "content": text}])],
                                RequestConfig(max_tokens=4, logprobs=True, top_logprobs=2))
        expected = direct.choices[0].logprobs["content"]
        for got in (row["logprobs"]["content"], streamed["logprobs"]["content"]):
            assert [e["token"] for e in got] == [e["token"] for e in expected]
            assert [len(e["top_logprobs"]) for e in got] == [2] * len(expected)
            assert [e["logprob"] for e in got] == pytest.approx([e["logprob"] for e in expected], abs=1e-5)


def test_stop_words_keep_every_generated_tokens_logprobs_when_streamed(engine):
    """--stop_words holds streamed text back while it may begin a stop word: the held chunks' logprobs come with
    the next chunk shown, so the stream carries those of the whole answer."""
    from vlft import InferRequest, RequestConfig
    from vlft.cli.infer import StopWordsEngine

    request = InferRequest(messages=SAY_HELLO)
    [full] = engine.infer([request], RequestConfig(max_tokens=8, logprobs=True))
    # three tokens' text: generation ends at the token that completes it, the chunk it is in is held back
    word = "".join(e["token"] for e in full.choices[0].logprobs["content"][2:5])
    stopping = StopWordsEngine(engine, [word])
    [whole] = stopping.infer([request], RequestConfig(max_tokens=8, logprobs=True))
    [chunks] = stopping.infer([request], RequestConfig(max_tokens=8, logprobs=True, stream=True))
    streamed = [e["token"] for c in chunks for e in c.choices[0].logprobs["content"]]
    assert streamed == [e["token"] for e in whole.choices[0].logprobs["content"]]
    assert len(streamed) <= 5 and "".join(streamed).endswith(word)
    # batched (left-padded) beside a longer answer, the row the stop word ended is padded after it: the padding
    # (the pad token, a stop token too) is neither an entry nor a completion token of its answer
    alone, beside = stopping.infer([request, image_request()], RequestConfig(max_tokens=8, logprobs=True))
    assert beside.usage.completion_tokens > whole.usage.completion_tokens  # so the short row was padded
    got, expected = alone.choices[0].logprobs["content"], whole.choices[0].logprobs["content"]
    assert [e["token"] for e in got] == [e["token"] for e in expected]
    assert [e["logprob"] for e in got] == pytest.approx([e["logprob"] for e in expected], abs=1e-5)
    assert alone.usage.completion_tokens == whole.usage.completion_tokens == len(expected)


@pytest.mark.timeout(120)  # a stream that never ends would otherwise hang the run
def test_streaming_pieces_split_characters_errors_and_early_close(engine):
    """PieceStreamer (all streaming, logprobs or not): pieces of tokens that split UTF-8 characters spell the
    text without U+FFFD, each counting the tokens that spell it; an error inside generate reaches the consumer;
    closing the stream early ends generation (no hang) and leaves the engine answering."""
    from vlft import InferRequest, RequestConfig
    from vlft.infer.engine_stream import PieceStreamer

    tokenizer = engine.encoder.tokenizer
    text = "Hi 你好, 😀 wörld!\nnext 🇯🇵 line ok"
    ids = tokenizer.encode(text)
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # some token holds part of a character
    streamer = PieceStreamer(tokenizer)
    for value in [torch.tensor([[1, 2]]), *(torch.tensor([i]) for i in ids)]:  # the prompt first, as generate
        streamer.put(value)
    streamer.end()
    pieces = list(streamer)
    assert "".join(p for p, _ in pieces) == text and not any("\ufffd" in p for p, _ in pieces)
    shown = ""
    for piece, tokens in pieces:
        shown += piece
        assert tokenizer.decode(ids[:tokens]).startswith(shown)
    assert pieces[-1][1] == len(ids)

    request = InferRequest(messages=SAY_HELLO)
    calls = []

    def fail_third_step(module, args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory, say")

    hook = engine.model.get_output_embeddings().register_forward_pre_hook(fail_third_step)
    try:
        [chunks] = engine.infer([request], RequestConfig(max_tokens=8, logprobs=True, stream=True))
        with pytest.raises(RuntimeError, match="out of memory, say"):
            list(chunks)
    finally:
        hook.remove()
    [chunks] = engine.infer([request], RequestConfig(max_tokens=500, logprobs=True, stream=True))
    first = next(chunks)
    chunks.close()  # generation ends at its next token: close returns once its thread has finished
    [again] = engine.infer([request], RequestConfig(max_tokens=3, logprobs=True, stream=True))
    assert first.choices[0].logprobs["content"] and sum(len(c.choices[0].logprobs["content"]) for c in again) == 3


@pytest.mark.parametrize("flags, message", [
    (["--top_logprobs", "2"], "--top_logprobs 2 needs --logprobs true"),
    (["--logprobs", "true", "--top_logprobs", "21"], "--top_logprobs must be in [0, 20], got 21"),
    (["--logprobs", "true", "--top_logprobs", "-1"], "--top_logprobs must be in [0, 20], got -1"),
])
def test_bad_top_logprobs_flags_are_refused(flags, message):
    from vlft.arguments import DeployArguments, InferArguments
    from vlft.cli.parsing import parse_args

    for cls in (InferArguments, DeployArguments):
        with pytest.raises(VlftError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_args(cls, ["--model", "m", *flags], "t")


def test_sft_accepts_logprobs_false_and_refuses_true():
    from vlft.arguments import SftArguments
    from vlft.cli.parsing import parse_args

    sft = ["--model", "m", "--dataset", "d"]
    parse_args(SftArguments, [*sft, "--logprobs", "false"], "vlft sft")
    with pytest.raises(VlftError, match="--logprobs true is not supported: vlft sft and export generate nothing"):
        parse_args(SftArguments, [*sft, "--logprobs", "true"], "vlft sft")


def test_request_fields_and_the_servers_defaults():
    from vlft.infer.chat_request import RequestLimits, request_config
    from vlft.infer.openai_types import ChatCompletionRequest
    from vlft.infer.protocol import RequestConfig

    def config(defaults: RequestConfig, **fields) -> RequestConfig:
        return request_config(ChatCompletionRequest(messages=SAY_HELLO, **fields), RequestLimits(), defaults)

    off, on = RequestConfig(), RequestConfig(logprobs=True, top_logprobs=3)  # --logprobs true --top_logprobs 3
    assert (config(off).logprobs, config(off).top_logprobs) == (False, None)
    assert (config(off, logprobs=True, top_logprobs=2).logprobs, config(off, logprobs=True).top_logprobs) == \
        (True, None)
    assert (config(on).logprobs, config(on).top_logprobs, config(on, top_logprobs=1).top_logprobs) == (True, 3, 1)
    assert (config(on, logprobs=False).logprobs, config(on, logprobs=False).top_logprobs) == (False, None)
    with pytest.raises(DataError, match="top_logprobs 2 needs logprobs true") as caught:
        config(off, top_logprobs=2)
    assert caught.value.field == "top_logprobs"


def test_jobs_asking_for_logprobs_are_not_batched_with_others():
    from vlft.infer.protocol import InferRequest, RequestConfig
    from vlft.infer.scheduler import Job

    request = InferRequest(SAY_HELLO)
    keys = {Job(request, config).batch_key() for config in (
        RequestConfig(max_tokens=4), RequestConfig(max_tokens=4, logprobs=True),
        RequestConfig(max_tokens=4, logprobs=True, top_logprobs=2))}
    assert len(keys) == 3


def test_the_server_returns_openai_shaped_logprobs_whole_and_streamed(served):
    from vlft import InferRequest, RequestConfig

    [direct] = served.engine.infer([InferRequest(messages=SAY_HELLO)],
                                   RequestConfig(max_tokens=6, logprobs=True, top_logprobs=2))
    expected = direct.choices[0].logprobs["content"]
    response = served.client.chat.completions.create(model=served.engine.model_name, messages=SAY_HELLO,
                                                     max_tokens=6, temperature=0, logprobs=True, top_logprobs=2)
    content = response.choices[0].logprobs.content
    assert [(e.token, e.bytes) for e in content] == [(e["token"], e["bytes"]) for e in expected]
    assert [e.logprob for e in content] == pytest.approx([e["logprob"] for e in expected], abs=1e-5)
    assert all(len(e.top_logprobs) == 2 and e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob
               for e in content)
    chunks = served.client.chat.completions.create(model=served.engine.model_name, messages=SAY_HELLO,
                                                   max_tokens=6, temperature=0, logprobs=True, stream=True)
    streamed = [e for c in chunks for e in (c.choices[0].logprobs.content if c.choices[0].logprobs else [])]
    assert [e.token for e in streamed] == [e["token"] for e in expected]
    assert all(e.top_logprobs == [] for e in streamed)  # top_logprobs not asked for
    plain = served.client.chat.completions.create(model=served.engine.model_name, messages=SAY_HELLO, max_tokens=2)
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize("fields, param, message", [
    ({"top_logprobs": 2}, "top_logprobs", "top_logprobs 2 needs logprobs true"),
    ({"logprobs": False, "top_logprobs": 2}, "top_logprobs", "top_logprobs 2 needs logprobs true"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "less than or equal to 20"),
    ({"logprobs": True, "top_logprobs": "2"}, "top_logprobs", "valid integer"),
    ({"logprobs": "yes"}, "logprobs", "valid boolean"),
])
def test_bad_logprobs_fields_are_400_naming_the_field(served, fields, param, message):
    status, answer = post(served.url, json.dumps({"messages": SAY_HELLO, "max_tokens": 2, **fields}).encode())
    assert status == 400, answer
    assert answer["error"]["param"] == param and message in answer["error"]["message"], answer
