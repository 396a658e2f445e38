"""`vlft infer` and the Python API on a checkpoint trained here: dataset mode, streaming, the
interactive loop through stdin, bad input, and sft -> infer -> export -> infer giving the same answers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
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
    expected = engine.encoder.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer == expected


def test_interactive_loop_through_stdin(checkpoint):
    script = "\n".join(["<image>What colour is this image?", "missing.png", str(EXAMPLES / "images" / "blue.png"),
                        "clear", "Hello", ""])
    result = subprocess.run([str(Path(sys.executable).with_name("vlft")), "infer", "--adapters", str(checkpoint),
                             "--max_new_tokens", "4", "--stream", "true"], input=script, capture_output=True,
                            text=True, timeout=300, env=os.environ.copy())
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "Input an image path or URL <<< " in out
    assert "not found: missing.png" in out
    assert "history cleared" in out
    assert out.count("<<< ") >= 4 and "Traceback" not in result.stderr


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
    assert isinstance(answer["response"], str) and "<bbox>" in answer["labels"]
