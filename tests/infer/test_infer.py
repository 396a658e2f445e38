"""`vlft infer` and the Python API on a checkpoint trained here: dataset mode, streaming, the
interactive loop through stdin, bad input, and sft -> infer -> export -> infer giving the same answers."""

from __future__ import annotations

import copy
import json
import shutil
import sys

import pytest
import torch

from tests.conftest import NEW_TOKENS, REPO
from tests.infer.decoding import reference_answer
from vlft.cli.infer import run_val_split
from vlft.cli.main import main
from vlft.errors import VlftError

EXAMPLES = REPO / "examples" / "data"
MEDIA = ["--image_max_token_num", "16", "--image_min_token_num", "4"]


def test_dataset_mode_answers_the_runs_val_split(checkpoint, capsys):
    assert main(["infer", "--adapters", str(checkpoint), "--load_data_args", "true", "--max_new_tokens", "6"]) == 0
    printed = capsys.readouterr().out
    val = (checkpoint.parent / "val_dataset.jsonl").read_text().splitlines()
    assert len(val) == 3  # 30% of the 10 example lines
    assert printed.count("[QUERY]") == printed.count("[LABELS]") == printed.count("[RESPONSE]") == len(val)
    results = [json.loads(line) for line in open(checkpoint / "infer_result.jsonl")]
    assert len(results) == len(val) and all(isinstance(r["response"], str) for r in results)


def test_python_api_and_streaming_agree_with_peft_generate(checkpoint):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from vlft import InferEngine, InferRequest, RequestConfig

    engine = InferEngine(adapters=[str(checkpoint)])
    request = InferRequest(messages=[{"role": "user", "content": "<image>What colour is this image?"}],
                           images=[str(EXAMPLES / "images" / "red.png")])
    resp = engine.infer([request], request_config=RequestConfig(max_tokens=8, temperature=0))[0]
    answer = resp.choices[0].message.content
    chunks = engine.infer([request], request_config=RequestConfig(max_tokens=8, temperature=0, stream=True))[0]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c is not None)
    assert streamed == answer

    # Ground truth by another path: the base model with the adapter unmerged, HF generate.
    base = AutoModelForImageTextToText.from_pretrained(engine.base_model_dir)
    model = PeftModel.from_pretrained(base, str(checkpoint)).eval()
    inputs = engine._inputs(request)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False, eos_token_id=engine.stop_ids)
    expected = reference_answer(engine.encoder.tokenizer, out[0, inputs["input_ids"].shape[1]:], engine.stop_ids)
    assert answer == expected


def test_interactive_loop_through_stdin(checkpoint, capfd, monkeypatch):
    """Through the console script's entry point in this process, stdin holding the user's lines."""
    import io

    script = "\n".join(["<image>What colour is this image?", "missing.png", str(EXAMPLES / "images" / "blue.png"),
                        "clear", "Hello", ""])
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    capfd.readouterr()
    code = main(["infer", "--adapters", str(checkpoint), "--max_new_tokens", "4", "--stream", "true"])
    out, err = capfd.readouterr()
    assert code == 0, err[-2000:]
    assert "Input an image path or URL <<< " in out
    assert "not found: missing.png" in out
    assert "history cleared" in out
    assert out.count("<<< ") >= 4 and "Traceback" not in err


def test_checkpoint_without_args_json_needs_model(tmp_path, capsys):
    (tmp_path / "adapter_config.json").write_text("{}")
    assert main(["infer", "--adapters", str(tmp_path)]) == 2
    assert "args.json" in capsys.readouterr().err


def test_adapter_from_another_base_is_refused(checkpoint, capsys):
    assert main(["infer", "--model", "vlft/tiny-qwen2-vl", "--adapters", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "trained on Qwen3VLForConditionalGeneration" in err and "(Qwen2VLForConditionalGeneration)" in err


def test_sft_infer_export_infer_gives_the_same_answers(checkpoint, tmp_path, capsys):
    first = tmp_path / "adapter.jsonl"
    assert main(["infer", "--adapters", str(checkpoint), "--load_data_args", "true", "--max_new_tokens", "6",
                 "--result_path", str(first), "--max_batch_size", "2"]) == 0
    # The ms-swift page's last steps: merge beside the checkpoints (the default CKPT-merged), then answer the run's
    # val split with the merged model (--load_data_args finds the run from the merged dir).
    run = tmp_path / checkpoint.parent.name
    shutil.copytree(checkpoint.parent, run)
    assert main(["export", "--adapters", str(run / checkpoint.name), "--merge_lora", "true"]) == 0
    merged = run / f"{checkpoint.name}-merged"
    second = tmp_path / "merged.jsonl"
    assert main(["infer", "--model", str(merged), "--load_data_args", "true", *MEDIA, "--max_new_tokens", "6",
                 "--result_path", str(second)]) == 0
    answers = [[json.loads(line)["response"] for line in open(p)] for p in (first, second)]
    assert answers[0] == answers[1] and len(answers[0]) == 3
    # The run's --new_special_tokens: in the checkpoint's tokenizer as special tokens at the ids the base tokenizer
    # gives them once added, read back by infer from args.json, and kept by the merged model.
    from transformers import AutoTokenizer

    from vlft.arguments import InferArguments
    from vlft.data.pipeline import build_encoder
    from vlft.infer.engine import with_training_settings

    base = copy.deepcopy(AutoTokenizer.from_pretrained(build_encoder(InferArguments(model="vlft/tiny-qwen3-vl"))[1]))
    base.add_special_tokens({"additional_special_tokens": list(NEW_TOKENS)})
    ids = base.convert_tokens_to_ids(list(NEW_TOKENS))
    saved = AutoTokenizer.from_pretrained(checkpoint)
    assert saved.convert_tokens_to_ids(list(NEW_TOKENS)) == ids and saved.added_tokens_decoder[ids[0]].special
    read_back = build_encoder(with_training_settings(InferArguments(adapters=[str(checkpoint)])))[0].tokenizer
    assert read_back.convert_tokens_to_ids(list(NEW_TOKENS)) == ids
    assert AutoTokenizer.from_pretrained(merged).convert_tokens_to_ids(list(NEW_TOKENS)) == ids
    # the merged model's tokenizer has them (no args.json read): a query may write them, they are not control tokens
    from vlft.data.sample import Message, Sample

    merged_encoder = build_encoder(InferArguments(model=str(merged)))[0]
    query = Sample(messages=[Message("user", f"one{NEW_TOKENS[0]}two")])
    assert ids[0] in merged_encoder.encode(query, add_generation_prompt=True).input_ids
    with pytest.raises(VlftError, match="--load_data_args: no val_dataset.jsonl in"):
        run_val_split(tmp_path)


def test_batched_generation_equals_one_at_a_time(checkpoint):
    from vlft import InferEngine, InferRequest, RequestConfig

    images = EXAMPLES / "images"
    requests = [InferRequest(messages=[{"role": "user", "content": "<image>What colour is this image?"}],
                             images=[str(images / f"{c}.png")]) for c in ("red", "blue")]
    requests.append(InferRequest(messages=[{"role": "user", "content": "Where is the capital of Zhejiang?"}]))
    requests.append(InferRequest(messages=[{"role": "user", "content": "<image><image>Compare them."}],
                                 images=[str(images / "green.png"), str(images / "square1.png")]))
    config = RequestConfig(max_tokens=6, temperature=0)
    single = InferEngine(adapters=[str(checkpoint)])
    batched = InferEngine(adapters=[str(checkpoint)], max_batch_size=4)
    one = [r.choices[0].message.content for r in single.infer(requests, config)]
    together = [r.choices[0].message.content for r in batched.infer(requests, config)]
    assert together == one


def test_ms_swift_ptengine_snippet_runs_as_written(capsys):
    """The ms-swift Qwen3-VL page's PtEngine snippet with `swift.llm` -> `vlft` (a tiny local model in place of
    the hub id): the name, the attn_impl argument, and a streamed print that does not end with a stray None."""
    from vlft import InferRequest, PtEngine, RequestConfig

    engine = PtEngine("vlft/tiny-qwen3-vl", attn_impl="sdpa")
    infer_request = InferRequest(messages=[{"role": "user", "content": "<image>Describe this image."}],
                                 images=[str(EXAMPLES / "images" / "red.png")])
    resp_list = engine.infer([infer_request], request_config=RequestConfig(max_tokens=8, temperature=0))
    response = resp_list[0].choices[0].message.content
    gen_list = engine.infer([infer_request], request_config=RequestConfig(max_tokens=8, temperature=0, stream=True))
    for chunk in gen_list[0]:
        if chunk is None:
            continue
        print(chunk.choices[0].delta.content, end="", flush=True)
    print()
    assert capsys.readouterr().out == response + "\n"


def test_dataset_mode_answers_a_grounding_row_whose_boxes_are_in_the_answer(checkpoint, tmp_path, capsys):
    """The example grounding row: `<ref-object>` in the question, `<bbox>` and a second ref in the answer. The
    prompt keeps the objects its own placeholders take; the answer's go with the labels."""
    row = next(line for line in (EXAMPLES / "train.jsonl").read_text().splitlines() if "<bbox>" in line)
    data = tmp_path / "grounding.jsonl"
    data.write_text(row.replace('"images/', f'"{EXAMPLES}/images/') + "\n")
    result = tmp_path / "result.jsonl"
    assert main(["infer", "--adapters", str(checkpoint), "--val_dataset", str(data), *MEDIA, "--max_new_tokens", "4",
                 "--result_path", str(result)]) == 0
    assert "error" not in capsys.readouterr().err
    [answer] = [json.loads(line) for line in open(result)]
    assert isinstance(answer["response"], str) and answer["labels"].startswith('[\n\t{"bbox_2d": [')


def test_dataset_mode_takes_every_grounding_line_sft_takes_and_shows_the_boxes(served, tmp_path, capsys):
    """Grounding lines in each form `vlft sft` reads (messages, OpenAI content parts, sharegpt, alpaca,
    query/response, a system column, image_id, several turns, the box in the question): each is answered, and
    [LABELS] shows the answer as sft trains it, the box in Qwen3-VL's 0-1000 convention (worked out here from the
    image's size) instead of the placeholder. (The shared tiny Qwen3-VL engine of tests/infer/conftest.py answers.)"""
    from PIL import Image

    from vlft.arguments import InferArguments
    from vlft.cli.infer import answer_dataset
    from vlft.infer.protocol import RequestConfig

    image = str(EXAMPLES / "images" / "square0.png")
    width, height = Image.open(image).size
    box = [8, 8, 30, 30]
    written = "[" + ", ".join(str(round(v * 1000 / (width if i % 2 == 0 else height))) for i, v in enumerate(box)) + "]"
    objects = {"ref": ["square"], "bbox": [box]}
    ask, answer = "<image>Locate the <ref-object>", "<bbox>"
    rows = [
        {"messages": [{"role": "user", "content": ask}, {"role": "assistant", "content": answer}], "images": [image],
         "objects": objects},
        {"messages": [{"role": "user", "content": [{"type": "image", "image": image},
                                                   {"type": "text", "text": "Locate the <ref-object>"}]},
                      {"role": "assistant", "content": answer}], "objects": objects},
        {"conversations": [{"from": "human", "value": ask}, {"from": "gpt", "value": answer}], "images": [image],
         "objects": objects},
        {"instruction": ask, "output": answer, "images": [image], "objects": objects},
        {"query": ask, "response": answer, "images": [image], "objects": objects},
        {"system": "You find things.", "query": ask, "response": answer, "images": [image], "objects": objects},
        {"query": ask, "response": answer, "images": [image], "objects": {**objects, "image_id": [0]}},
        {"messages": [{"role": "user", "content": ask}, {"role": "assistant", "content": answer},
                      {"role": "user", "content": "And the <ref-object>?"}, {"role": "assistant", "content": answer}],
         "images": [image], "objects": {"ref": ["square", "square"], "bbox": [[1, 1, 5, 5], box]}},
        {"messages": [{"role": "user", "content": "<image>What is in <bbox>?"},
                      {"role": "assistant", "content": f"A {'<ref-object>'} at {answer}"}], "images": [image],
         "objects": {"ref": ["square"], "bbox": [[1, 1, 5, 5], box]}},
    ]
    data = tmp_path / "grounding.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = tmp_path / "result.jsonl"
    args = InferArguments(model="vlft/tiny-qwen3-vl", val_dataset=[str(data)], max_batch_size=4,
                          result_path=str(result))
    engine = served.engine
    assert answer_dataset(engine, args, RequestConfig(max_tokens=2), engine.encoder) == 0
    printed = capsys.readouterr()
    assert "error" not in printed.err
    labels = [json.loads(line)["labels"] for line in open(result)]
    assert labels[:-1] == [written] * (len(rows) - 1) and labels[-1] == f"A square at {written}"
    shown = [line for line in printed.out.splitlines() if line.startswith("[LABELS]")]
    assert shown == [f"[LABELS] {label}" for label in labels]


class RefusingEngine:
    """Answers "ok" to each request, and refuses with a DataError every call that holds one saying "refuse"."""

    def __init__(self):
        self.calls = []

    def infer(self, requests, config):
        from vlft.errors import DataError
        from vlft.infer.protocol import ChatCompletionResponse, ChatMessage, Choice, Usage

        self.calls.append(len(requests))
        if any(r.messages[-1]["content"] == "refuse" for r in requests):
            raise DataError("refused by the engine", field="messages")
        return [ChatCompletionResponse("m", [Choice(0, ChatMessage("assistant", "ok"), "stop")], Usage(1, 1))
                for _ in requests]


def test_dataset_mode_places_the_engines_errors_at_their_line(served, tmp_path, capsys):
    """A line the engine refuses is reported at its file:line; the lines batched with it are still answered."""
    from vlft.arguments import InferArguments
    from vlft.cli.infer import answer_dataset
    from vlft.infer.protocol import RequestConfig

    rows = [{"query": text, "response": "Hello."} for text in ("Say hello.", "refuse", "Say hi.")]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = InferArguments(model="vlft/tiny-qwen3-vl", val_dataset=[str(data)], max_batch_size=3,
                          result_path=str(tmp_path / "result.jsonl"))
    engine = RefusingEngine()
    assert answer_dataset(engine, args, RequestConfig(), served.engine.encoder) == 1
    assert engine.calls == [3, 1, 1, 1]  # the batch failed, then each line alone
    assert f"error: {data}:2: messages: refused by the engine" in capsys.readouterr().err
    assert [json.loads(line)["line"] for line in open(tmp_path / "result.jsonl")] == [1, 3]


def test_beam_search_answers_are_peft_generates_beams(checkpoint, tmp_path, capsys):
    """`vlft infer --num_beams 4` (ms-swift's flag) on a dataset: the answers of HF generate's beam search over the
    unmerged adapter, which differ from the greedy ones here."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from vlft import InferEngine, InferRequest

    rows = [{"messages": [{"role": "user", "content": f"Where is the capital of {place}?"},
                          {"role": "assistant", "content": "I do not know."}]}
            for place in ("Zhejiang", "Jiangsu", "Hunan")]
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = tmp_path / "beams.jsonl"
    assert main(["infer", "--adapters", str(checkpoint), "--val_dataset", str(data), "--num_beams", "4",
                 "--max_new_tokens", "12", "--max_batch_size", "2", "--result_path", str(result)]) == 0
    answers = [json.loads(line)["response"] for line in open(result)]

    engine = InferEngine(adapters=[str(checkpoint)])
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(engine.base_model_dir),
                                      str(checkpoint)).eval()
    expected, greedy = [], []
    for row in rows:
        inputs = engine._inputs(InferRequest(messages=row["messages"][:1]))
        start = inputs["input_ids"].shape[1]
        with torch.no_grad():
            for out, beams in ((expected, 4), (greedy, 1)):
                ids = model.generate(**inputs, max_new_tokens=12, do_sample=False, num_beams=beams,
                                     eos_token_id=engine.stop_ids)
                out.append(reference_answer(engine.encoder.tokenizer, ids[0, start:], engine.stop_ids))
    assert answers == expected
    assert expected != greedy  # the beams change something here: the flag is not a no-op


@pytest.mark.parametrize("extra, message", [
    (["--stream", "true"], "--num_beams 2 answers when the search ends: it cannot stream (--stream false)"),
    (["--logprobs", "true"], "--num_beams 2: beam search gives no per-token logprobs (--logprobs false)"),
    (["--num_beams", "0"], "--num_beams must be positive"),
])
def test_beam_search_refuses_what_it_cannot_give(extra, message, capsys):
    assert main(["infer", "--model", "some/model", "--num_beams", "2", *extra]) == 2
    assert message in capsys.readouterr().err
