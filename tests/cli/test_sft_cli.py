"""`vlft sft` end to end on CPU through the real console script: the ms-swift Qwen3-VL guide's dense
command (swift -> vlft, a built-in tiny model and local data), two processes with ZeRO-2 and ZeRO-3,
a task a tiny model can learn, kill-and-resume, and bad arguments failing before any model loads.
Without a GPU the console script's entry point runs in this process (tests/conftest.py: vlft_console), bar the run
that kills itself."""

from __future__ import annotations

import json
import os
import logging
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import REPO, VLFT
from vlft.cli.main import main

EXAMPLES = REPO / "examples" / "data"


def seed_command(output_dir: Path, deepspeed: str) -> list[str]:
    """Seed 001's dense `swift sft` command with swift -> vlft, the tiny model and 8 rows of the example data (one
    packed row: one optimizer step, one held out for eval)."""
    return [VLFT, "sft",
            "--model", "vlft/tiny-qwen3-vl",
            "--dataset", f"{EXAMPLES / 'train.jsonl'}#6", f"{EXAMPLES / 'val.jsonl'}#2",
            "--load_from_cache_file", "true", "--split_dataset_ratio", "0.01", "--train_type", "lora",
            "--torch_dtype", "bfloat16", "--num_train_epochs", "1", "--per_device_train_batch_size", "1",
            "--per_device_eval_batch_size", "1", "--attn_impl", "flash_attn", "--padding_free", "true",
            "--learning_rate", "1e-4", "--lora_rank", "8", "--lora_alpha", "32", "--target_modules", "all-linear",
            "--freeze_vit", "true", "--freeze_aligner", "true", "--packing", "true",
            "--gradient_checkpointing", "true", "--vit_gradient_checkpointing", "false",
            "--gradient_accumulation_steps", "2", "--eval_steps", "100", "--save_steps", "100",
            "--save_total_limit", "2", "--logging_steps", "5", "--max_length", "4096",
            "--output_dir", str(output_dir), "--warmup_ratio", "0.05", "--deepspeed", deepspeed,
            "--dataset_num_proc", "4", "--dataloader_num_workers", "4"]


def seed_env(port: int) -> dict:
    return {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "IMAGE_MAX_TOKEN_NUM": "1024",
            "VIDEO_MAX_TOKEN_NUM": "128", "FPS_MAX_FRAMES": "16", "NPROC_PER_NODE": "2",
            "CUDA_VISIBLE_DEVICES": "0,1", "MASTER_PORT": str(port)}


def only_run_dir(output_dir: Path) -> Path:
    runs = [p for p in output_dir.iterdir() if p.name.startswith("v")]
    assert len(runs) == 1, runs
    return runs[0]


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in open(run_dir / "logging.jsonl")]


@pytest.mark.slow
@pytest.mark.parametrize("deepspeed, port", [("zero2", 29611)])  # ZeRO-3 in two processes: test_scale_out.py
def test_seed_command_two_processes(deepspeed, port, tmp_path, vlft_cache, vlft_console):
    code, output = vlft_console(seed_command(tmp_path / "output", deepspeed), seed_env(port), tmp_path)
    assert code == 0, output[-3000:]
    run_dir = only_run_dir(tmp_path / "output")
    assert run_dir.name.startswith("v0-")
    args = json.loads((run_dir / "args.json").read_text())
    assert args["deepspeed"] == deepspeed and args["image_max_token_num"] == 1024 and "hub_token" not in args
    log = read_log(run_dir)
    assert any("eval_loss" in entry for entry in log)
    checkpoints = sorted(run_dir.glob("checkpoint-*"))
    assert checkpoints
    last = checkpoints[-1]
    for name in ("adapter_model.safetensors", "adapter_config.json", "args.json", "chat_template.jinja",
                 "tokenizer.json"):
        assert (last / name).is_file(), name
    assert (run_dir / "images" / "eval_loss.png").is_file()


def _train_args(output_dir: Path, *extra: str) -> list[str]:
    """12 samples packed into 3 rows of up to 512 tokens (498, 96 and 500): 6 steps are two epochs, so a resume from
    step 2 finishes one epoch and starts the next (at 1024 tokens a row the steps cost twice as much and prove no
    more: the real vocabulary's logits make a step's cost)."""
    return ["sft", "--model", "vlft/tiny-qwen2.5-vl", "--dataset", f"{EXAMPLES / 'train.jsonl'}#12",
            "--max_steps", "6", "--save_steps", "2", "--logging_steps", "1", "--learning_rate", "1e-3",
            "--packing", "true", "--max_length", "512", "--image_max_token_num", "64", "--report_to", "none",
            "--output_dir", str(output_dir), *extra]


def _losses(run_dir: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in read_log(run_dir) if "loss" in e}


@pytest.mark.slow
def test_kill_and_resume_reproduces_the_losses(tmp_path, vlft_cache):
    """A run SIGKILLed after checkpoint-2, in the middle of writing checkpoint-4 (its weights on disk, its
    optimizer state not): checkpoint-2 stays whole, no checkpoint-4 appears, and the resume from checkpoint-2
    logs the uninterrupted run's losses for steps 3-6 and ends at global step 6. One kill covers the others: whenever
    it comes, a resume finds the checkpoints written whole before it and at most one cut-short save, as here."""
    assert main(_train_args(tmp_path / "whole")) == 0
    whole = _losses(only_run_dir(tmp_path / "whole"))
    assert sorted(whole) == [1, 2, 3, 4, 5, 6]

    killed = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, *_train_args(tmp_path / "killed_in_save")],
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_dir = only_run_dir(tmp_path / "killed_in_save")
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-2"]
    assert (run_dir / "checkpoint-2" / "trainer_state.json").is_file()
    assert (run_dir / ".saving" / "checkpoint-4" / "adapter_model.safetensors").is_file()  # the cut-short save
    assert main(_train_args(run_dir, "--add_version", "false", "--resume_from_checkpoint",
                            str(run_dir / "checkpoint-2"))) == 0
    assert not (run_dir / ".saving").exists()
    resumed = _losses(run_dir)
    for step in (3, 4, 5, 6):
        assert resumed[step] == pytest.approx(whole[step], abs=1e-5), step
    state = json.loads((run_dir / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6


def test_chunked_loss_and_cuda_graph_rows_train_like_plain_packed_rows(tmp_path, vlft_cache):
    """Two steps through the CLI with --chunked_loss true and --torch_compile_mode reduce-overhead together (every
    packed row padded to --max_length; CUDA graphs on a GPU, the compiled layers without them on the CPU) log the
    losses of the plain run. Each alone against transformers' path: test_chunked_loss.py, test_packing_parity.py."""
    runs = {"plain": ("--torch_compile", "false", "--chunked_loss", "false"),
            "fast": ("--chunked_loss", "true", "--torch_compile_mode", "reduce-overhead")}
    for name, extra in runs.items():
        assert main(_train_args(tmp_path / name, "--max_steps", "2", "--save_steps", "100",
                                "--model", "vlft/tiny-qwen3-vl", "--lora_dropout", "0", *extra)) == 0
    plain, fast = (_losses(only_run_dir(tmp_path / name)) for name in runs)
    assert sorted(fast) == [1, 2]
    for step in (1, 2):
        assert fast[step] == pytest.approx(plain[step], rel=1e-4), step


@pytest.mark.slow
def test_compiled_layers_with_lora_dropout_compile_whole_and_resume_their_masks(tmp_path, vlft_cache, caplog):
    """--torch_compile_mode reduce-overhead with the default LoRA dropout (0.05): every decoder layer compiles
    whole (the dropout masks come from counter_dropout.py's hash), and a run resumed from checkpoint-1 logs the
    uninterrupted run's loss for step 2 (its masks continue from the step already trained, as torch's RNG state
    would). Rows of one fixed shape, so each run compiles the layer once (CPU inductor: no CUDA graphs here); text
    rows, so no vision block runs (or compiles), and LoRA on q_proj only: each dropout site's hash adds ~13 s of CPU
    inductor compiling."""
    words = "the quick brown fox jumps over a lazy dog while seven red birds sing".split()
    rng = random.Random(0)
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": " ".join(rng.choices(words, k=20))},
        {"role": "assistant", "content": " ".join(rng.choices(words, k=60))}]}) + "\n" for _ in range(8)))
    compiled = ("--model", "vlft/tiny-qwen3-vl", "--torch_compile_mode", "reduce-overhead", "--lora_dropout", "0.05",
                "--max_steps", "2", "--save_steps", "1", "--dataset", str(data), "--max_length", "256",
                "--target_modules", "q_proj")
    with caplog.at_level(logging.WARNING, logger="vlft"):
        assert main(_train_args(tmp_path / "whole", *compiled)) == 0
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("torch.compile:"))
    compiled_layers, whole_layers = re.search(r"(\d+) decoder layers, (\d+) of them whole", line).groups()
    assert compiled_layers == whole_layers, line
    run_dir = only_run_dir(tmp_path / "whole")
    whole = _losses(run_dir)
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(run_dir / "checkpoint-1", resumed_dir / "checkpoint-1")
    assert main(_train_args(resumed_dir, *compiled, "--add_version", "false", "--resume_from_checkpoint",
                            str(resumed_dir / "checkpoint-1"))) == 0
    assert _losses(resumed_dir)[2] == pytest.approx(whole[2], abs=1e-5)


def test_cuda_graphs_need_the_varlen_attention_on_a_gpu(tmp_path):
    """On CUDA, other attention implementations find the boundaries with host reads inside each layer."""
    from vlft.arguments import SftArguments
    from vlft.cli.parsing import parse_args
    from vlft.errors import VlftError
    from vlft.train.sft import check_run_arguments

    argv = ["--model", "vlft/tiny-qwen3-vl", "--dataset", str(EXAMPLES / "train.jsonl"), "--packing", "true",
            "--max_length", "64", "--output_dir", str(tmp_path), "--torch_compile_mode", "reduce-overhead"]
    with pytest.raises(VlftError, match="needs the varlen attention"):
        check_run_arguments(parse_args(SftArguments, argv + ["--attn_impl", "sdpa"], "sft"), cuda=True)
    assert check_run_arguments(parse_args(SftArguments, argv, "sft"), cuda=True)[0] == "torch_varlen"


# Runs `vlft sft` and SIGKILLs itself when the optimizer state of checkpoint-4 is about to be written: a
# crash in the middle of a save, after the weights are on disk.
KILL_DURING_SAVE = """
import os, signal, sys, torch
save = torch.save
def save_or_die(obj, f, *args, **kwargs):
    if "checkpoint-4" in str(f) and str(f).endswith("optimizer.pt"):
        os.kill(os.getpid(), signal.SIGKILL)
    return save(obj, f, *args, **kwargs)
torch.save = save_or_die
from vlft.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


def colour_rows(directory: Path, n: int, seed: int) -> list[dict]:
    """Solid images of four colours, shade and size jittered, asking for the colour."""
    rng = random.Random(seed)
    (directory / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = rng.choice(list(COLOURS))
        colour = tuple(max(0, min(255, v + rng.randint(-25, 25))) for v in COLOURS[name])
        Image.new("RGB", (rng.randint(32, 96), rng.randint(32, 96)), colour).save(directory / "img" / f"{i}.png")
        rows.append({"messages": [{"role": "user", "content": "<image>What colour is this image?"},
                                  {"role": "assistant", "content": name}],
                     "images": [str(directory / "img" / f"{i}.png")]})
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("tiny", ["vlft/tiny-qwen3-vl", "vlft/tiny-qwen3.5"])
def test_tiny_model_learns_colours_and_answers_held_out_images(tiny, tmp_path, vlft_cache):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from vlft.arguments import SftArguments
    from vlft.data.formats import to_sample
    from vlft.data.pipeline import build_encoder

    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in colour_rows(tmp_path / "train", 200, 0)) + "\n")
    argv = ["--model", tiny, "--image_max_token_num", "16", "--image_min_token_num", "4"]
    # The real vocabularies (151k, 248k entries) make the full logits the cost of a step on CPU: the chunked
    # loss scores only the answers' positions (its loss and gradients equal transformers': test_chunked_loss.py).
    # 4 epochs: held out, after each epoch, Qwen3-VL answered 40/40 from the first, Qwen3.5 12/40 (the commonest
    # colour's share), 39/40, 40/40, 40/40 (6 epochs gave 40/40 from the second on; a model that does not see the
    # colours stays near 1/4).
    assert main(["sft", *argv, "--chunked_loss", "true", "--dataset", str(train), "--train_type", "lora",
                 "--num_train_epochs", "4",
                 "--learning_rate", "5e-3", "--lora_rank", "16", "--lora_alpha", "32", "--packing", "true",
                 "--max_length", "512", "--logging_steps", "10", "--save_steps", "1000", "--report_to", "none",
                 "--gradient_checkpointing", "false", "--output_dir", str(tmp_path / "out")]) == 0
    checkpoint = sorted(only_run_dir(tmp_path / "out").glob("checkpoint-*"))[-1]

    from vlft.cli.parsing import parse_args

    encoder, model_dir, _ = build_encoder(parse_args(SftArguments, [*argv, "--dataset", "unused"], "t"))
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(model_dir), checkpoint).eval()
    held_out = colour_rows(tmp_path / "test", 40, 1)
    correct = 0
    for row in held_out:
        sample = to_sample(row)
        answer = sample.messages.pop()
        encoded = encoder.encode(sample, add_generation_prompt=True)
        ids = torch.tensor([encoded.input_ids])
        with torch.no_grad():
            out = model.generate(input_ids=ids, mm_token_type_ids=(ids == encoder.image_pad_id).long(),
                                 pixel_values=encoded.pixel_values, image_grid_thw=encoded.image_grid_thw,
                                 max_new_tokens=4, do_sample=False)
        correct += encoder.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip() == answer.content
    assert correct / len(held_out) >= 0.9, f"{correct}/{len(held_out)}"


@pytest.mark.parametrize("argv, message", [
    (["--lora_rnak", "8"], "unknown argument --lora_rnak; did you mean --lora_rank?"),
    (["--deepspeed", "zero9"], "zero9"),
    (["--packing", "true"], "--packing true needs --max_length"),
    (["--attn_impl", "flex_attention", "--packing", "true", "--max_length", "64"], "flex_attention"),
    (["--output_dir", "__FILE__/out"], "is not a directory"),
    (["--train_type", "full", "--freeze_llm", "true"], "nothing to train"),
    (["--chunked_loss", "true", "--deepspeed", "zero3"], "--chunked_loss true does not run under ZeRO-3"),
    (["--torch_compile", "true", "--deepspeed", "zero3"], "--torch_compile true does not run under ZeRO-3"),
    (["--torch_compile_mode", "reduce-overhead"], "--torch_compile_mode reduce-overhead needs --packing true"),
    (["--torch_compile_mode", "reduce-overhead", "--packing", "true", "--max_length", "64", "--deepspeed", "zero2"],
     "--torch_compile_mode reduce-overhead does not run under --deepspeed"),
    (["--torch_compile_mode", "reduce-overhead", "--packing", "true", "--max_length", "64",
      "--per_device_eval_batch_size", "2"], "--per_device_eval_batch_size (2) may not exceed"),
])
def test_bad_arguments_fail_before_any_model_loads(argv, message, tmp_path, capsys, monkeypatch):
    import transformers

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", no_loading)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    argv = [a.replace("__FILE__", str(a_file)) for a in argv]
    code = main(["sft", "--model", "vlft/tiny-qwen3-vl", "--dataset", str(EXAMPLES / "train.jsonl"),
                 "--output_dir", str(tmp_path / "out"), *argv])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_full_fine_tuning_trains_the_unfrozen_parts_and_loads_with_plain_transformers(tmp_path, vlft_cache,
                                                                                       tiny_model_dir):
    """`--train_type full --freeze_vit false --vit_lr`: ViT and LLM weights change, the frozen aligner does
    not, and the checkpoint is a full model that plain transformers loads (and vlft infer answers from)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    assert main(["sft", "--model", "vlft/tiny-qwen3-vl", "--dataset", str(EXAMPLES / "train.jsonl"),
                 "--train_type", "full", "--freeze_vit", "false", "--vit_lr", "1e-3", "--learning_rate", "1e-3",
                 "--max_steps", "2", "--packing", "true", "--max_length", "1024", "--image_max_token_num", "64",
                 "--report_to", "none", "--output_dir", str(tmp_path / "out")]) == 0
    checkpoint = only_run_dir(tmp_path / "out") / "checkpoint-2"
    trained, base = load_file(checkpoint / "model.safetensors"), load_file(tiny_model_dir("qwen3_vl") /
                                                                             "model.safetensors")
    changed = {name for name in base if not torch.equal(trained[name], base[name])}
    assert any(n.startswith("model.visual.blocks.") for n in changed)
    assert any(n.startswith("model.language_model.layers.") for n in changed)
    assert not any(n.startswith(("model.visual.merger.", "model.visual.deepstack_merger_list.")) for n in changed)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint)
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert json.loads((checkpoint / "args.json").read_text())["train_type"] == "full"
