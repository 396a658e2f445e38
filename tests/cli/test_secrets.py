"""Hub tokens never leave the process: a real `vlft sft` run (tensorboard on) and a merge of its
checkpoint, given a token as a flag and in HF_TOKEN / MODELSCOPE_API_TOKEN, write none of them to any
file (args.json, logging.jsonl, tensorboard events, checkpoints, plots) or to their output; a run that
fails does not print them either. And a model dir that asks for remote code never gets it run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cli.test_sft_cli import EXAMPLES, VLFT

SECRETS = {"--hub_token": "hf_flagSECRET0123456789abcdefXYZ", "HF_TOKEN": "hf_envSECRET0123456789abcdefXYZ",
           "MODELSCOPE_API_TOKEN": "ms-envSECRET-0123456789abcdef-XYZ"}


def secret_env() -> dict:
    return {**os.environ, "HF_TOKEN": SECRETS["HF_TOKEN"], "MODELSCOPE_API_TOKEN": SECRETS["MODELSCOPE_API_TOKEN"]}


def files_holding_secrets(root: Path) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {name}" for name, value in SECRETS.items() if value.encode() in data]
    return found


@pytest.mark.slow
def test_no_file_or_output_of_a_run_holds_a_token(tmp_path, vlft_cache, vlft_console):
    code, sft_output = vlft_console([VLFT, "sft", "--model", "vlft/tiny-qwen3-vl", "--dataset",
                                     str(EXAMPLES / "train.jsonl"), "--max_steps", "1", "--save_steps", "1",
                                     "--logging_steps", "1", "--packing", "true", "--max_length", "512",
                                     "--report_to", "tensorboard", "--hub_token", SECRETS["--hub_token"],
                                     "--output_dir", str(tmp_path / "output")], secret_env(), tmp_path)
    assert code == 0, sft_output[-3000:]
    run_dir = next((tmp_path / "output").iterdir())
    assert list(run_dir.glob("runs/**/events.out.tfevents.*")), "tensorboard wrote nothing: the grep proves little"
    # one step writes every kind of file a run writes: its log, events, plots and a whole checkpoint (args.json,
    # trainer_state.json, optimizer, scheduler, rng state, adapter, processor files)
    for name in ("args.json", "trainer_state.json", "optimizer.pt", "adapter_model.safetensors"):
        assert (run_dir / "checkpoint-1" / name).is_file(), name
    assert list(run_dir.glob("images/*.png")) and (run_dir / "logging.jsonl").is_file()
    code, merge_output = vlft_console([VLFT, "export", "--adapters", str(run_dir / "checkpoint-1"), "--merge_lora",
                                       "true", "--hub_token", SECRETS["--hub_token"]], secret_env(), tmp_path)
    assert code == 0, merge_output[-3000:]
    assert files_holding_secrets(tmp_path) == []
    for output in (sft_output, merge_output):
        assert not [name for name, value in SECRETS.items() if value in output]


def test_a_failing_run_does_not_print_the_token(tmp_path):
    """A process of its own: the console script as typed, the tokens in its environment from its start."""
    failed = subprocess.run([VLFT, "sft", "--model", str(tmp_path / "no-such-model"), "--dataset",
                             str(EXAMPLES / "train.jsonl"), "--hub_token", SECRETS["--hub_token"],
                             "--output_dir", str(tmp_path / "output")],
                            env=secret_env(), capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0 and "no-such-model" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert not [name for name, value in SECRETS.items() if value in failed.stdout + failed.stderr]


def test_remote_code_named_by_a_model_dir_is_never_run(tiny_model_dir, tmp_path, vlft_cache):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir("qwen3_vl"), model_dir)
    marker = tmp_path / "remote-code-ran"
    (model_dir / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                       "from transformers import Qwen3VLForConditionalGeneration as EvilModel\n")
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForImageTextToText": "evil.EvilModel"}
    (model_dir / "config.json").write_text(json.dumps(config))
    result = subprocess.run([VLFT, "infer", "--model", str(model_dir), "--max_new_tokens", "2"],
                            input="Hello\n", capture_output=True, text=True, timeout=300)
    assert not marker.exists(), "the model dir's code was executed"
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
