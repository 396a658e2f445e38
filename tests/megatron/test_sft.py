"""`vlft megatron sft` (issue 23) through the real CLI on tiny models: its loss curve is `vlft sft`'s on the same
data, seed and batch (the ground truth: transformers' model and Trainer): Qwen3-VL-MoE with its experts split over
two expert-parallel processes, in full and with LoRA (whose adapter comes out as vlft sft's); Qwen3.5 on packed
rows through its linear attention; a resumed run continues the curve exactly; the result converts to HF and
answers with `vlft infer`; bad arguments are refused together before anything loads.

Tolerance: both sides run in float32 on the CPU. The two models differ only in summation order (fused q/k/v and
gate/up matmuls, Megatron-Core's rotary and norm code: per-token logits within 2e-6 of HF's for Qwen3-VL,
tests/megatron/test_convert.py), and AdamW's normalised update does not amplify that much: measured loss
differences are <= 1.9e-6 over 8 steps (MoE, full; <= 7.6e-6 over 20, 1.4e-6 over the test's 6) and <= 1.9e-6 over
20 steps at lr 1e-3 (MoE, LoRA; 1.4e-6 over the test's 10 at lr 5e-3, the adapters then within 1e-5) on losses
near 12; 1e-4 is 13x the largest and 1e-5 of the loss, while a wrong row order, schedule, weight-decay
group or token position moves a loss by more than 1e-2. Qwen3.5's tiny random model amplifies rounding about
fivefold per linear-attention layer (fp32 logits 2e-5 apart at conversion, docs/megatron.md) and its gradient norms
are near 30: its steps after the first measured 1.05e-4 apart over 6 steps (4.4e-5 over the test's 3); the test
allows 5e-4 after an exact-to-1e-5 first step.

Without a GPU the commands run in this process through the console script's entry point (torchrun's workers and
the converter are processes of their own, bar a one-process run's worker, which runs in this process too:
tests/megatron/conftest.py); with one, each command gets a process of its own on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("megatron.core")

from safetensors.torch import load_file  # noqa: E402

from tests.conftest import REPO  # noqa: E402

DATA = REPO / "examples" / "data" / "train.jsonl"
SMALL_MEDIA = ["--image_max_token_num", "16", "--image_min_token_num", "4", "--video_max_token_num", "8",
               "--fps_max_frames", "4"]
SAME_RUN = ["--dataset", str(DATA), "--max_length", "256", "--torch_dtype", "float32", "--seed", "7", *SMALL_MEDIA]
TOLERANCE = 1e-4
QWEN3_5_TOLERANCE = 5e-4


# Without a GPU every command runs in this process through the console script's entry point (as
# tests/megatron/test_convert.py does): a process of its own would import torch, transformers and vlft again before
# starting torchrun's workers, which are the real ones for two processes (one process's worker runs here as well,
# under the environment torchrun would give it: tests/megatron/conftest.py), and `vlft sft` trains here as in a
# process of its own. With a GPU each command gets a process of its own with CUDA_VISIBLE_DEVICES="", so both sides
# stay on the CPU in float32.
IN_PROCESS = not torch.cuda.is_available()


@pytest.fixture
def vlft(capfd, monkeypatch, launches):
    """ARGV -> `vlft ARGV` with NPROC_PER_NODE=nproc, as a CompletedProcess (stdout, stderr: the command's and its
    processes'); asserting success when ok. torchrun gets 600 s, as the command's own process did (a one-process
    --to_hf conversion, and a one-process `vlft megatron sft`'s worker, run in this process without a GPU:
    tests/megatron/conftest.py)."""
    from vlft.cli.main import main

    launches(600)

    def run(*argv: str, nproc: int = 1, ok: bool = True) -> subprocess.CompletedProcess:
        if IN_PROCESS:
            monkeypatch.setenv("NPROC_PER_NODE", str(nproc))
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
            capfd.readouterr()
            code = main(list(argv))
            out, err = capfd.readouterr()
            done = subprocess.CompletedProcess(argv, code, out, err)
        else:
            env = {**os.environ, "NPROC_PER_NODE": str(nproc), "CUDA_VISIBLE_DEVICES": ""}
            done = subprocess.run([sys.executable, "-m", "vlft.cli.main", *argv], capture_output=True, text=True,
                                  timeout=600, env=env)
        if ok:
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
        return done

    return run


def logged(run_dir: Path, key: str = "loss") -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r[key] for r in records if isinstance(r.get(key), (int, float))}


@pytest.fixture
def megatron_sft(vlft):
    def run(save: Path, *argv: str, nproc: int = 1, lr: str = "1e-3") -> subprocess.CompletedProcess:
        return vlft("megatron", "sft", "--save", str(save), "--add_version", "false", "--num_workers", "0",
                    "--log_interval", "1", "--lr", lr, "--adam_beta2", "0.999", *SAME_RUN, *argv, nproc=nproc)

    return run


@pytest.fixture
def vlft_sft(vlft):
    def run(output: Path, *argv: str, lr: str = "1e-3") -> None:
        vlft("sft", "--train_type", "full", "--output_dir", str(output), "--add_version", "false", "--logging_steps",
             "1", "--learning_rate", lr, "--adam_beta2", "0.999", "--report_to", "none", "--save_strategy", "no",
             *SAME_RUN, *argv)

    return run


def assert_same_curve(megatron: dict[int, float], reference: dict[int, float], steps: int) -> None:
    assert sorted(megatron) == sorted(reference) == list(range(1, steps + 1))
    worst = max(abs(megatron[s] - reference[s]) for s in reference)
    assert worst < TOLERANCE, {s: (megatron[s], reference[s]) for s in reference}
    assert reference[steps] < reference[1] - 0.5  # the curve moves: a frozen model would match trivially


@pytest.mark.slow
def test_qwen3_5_packed_curve_matches_vlft_sft(tiny_model_dir, tmp_path, megatron_sft, vlft_sft):
    """Packed rows of several samples with images and videos through Qwen3.5's Gated DeltaNet and gated softmax
    attention (each sample's convolution, recurrence and attention restart at its boundary), the vision tower and
    aligner training too. Before any update (step 1) the losses agree to 1e-5; later steps to QWEN3_5_TOLERANCE."""
    model = str(tiny_model_dir("qwen3_5"))
    trained = ["--packing", "true", "--freeze_vit", "false", "--freeze_aligner", "false"]
    megatron_sft(tmp_path / "m", "--model", model, *trained, "--train_iters", "3", "--global_batch_size", "1")
    vlft_sft(tmp_path / "h", "--model", model, *trained, "--max_steps", "3")
    ours, theirs = logged(tmp_path / "m"), logged(tmp_path / "h")
    assert sorted(ours) == sorted(theirs) == [1, 2, 3]
    assert abs(ours[1] - theirs[1]) < 1e-5, (ours, theirs)
    assert max(abs(ours[s] - theirs[s]) for s in theirs) < QWEN3_5_TOLERANCE, (ours, theirs)
    assert theirs[3] < theirs[1] - 0.5


@pytest.mark.slow
def test_loss_scale_weights_match_vlft_sft(tiny_model_dir, tmp_path, megatron_sft, vlft_sft):
    """--loss_scale hermes (tool calls weigh 2) on the tools example, its three rows in one step: the weighted first
    loss is vlft sft's (over every trained token of the step on both sides), above the unweighted one."""
    model = str(tiny_model_dir("qwen3_5"))
    tools = ["--dataset", str(REPO / "examples" / "data" / "tools.jsonl"), "--max_length", "2048"]
    weighted = [*tools, "--loss_scale", "hermes"]
    megatron_sft(tmp_path / "m", "--model", model, *weighted, "--train_iters", "1", "--global_batch_size", "3")
    vlft_sft(tmp_path / "h", "--model", model, *weighted, "--max_steps", "1", "--per_device_train_batch_size", "3")
    vlft_sft(tmp_path / "p", "--model", model, *tools, "--max_steps", "1", "--per_device_train_batch_size", "3")
    ours, theirs, plain = logged(tmp_path / "m"), logged(tmp_path / "h"), logged(tmp_path / "p")
    assert abs(ours[1] - theirs[1]) < 1e-5 and theirs[1] > plain[1] + 0.1, (ours, theirs, plain)


@pytest.mark.slow
def test_dense_packed_run_resumes_exactly_converts_and_answers(tiny_model_dir, tmp_path, vlft, megatron_sft):
    """Resume from step 3, picked as the ms-swift guide picks an iteration: by editing the tracker file; a run
    that would read other rows, or lay the optimizer out otherwise, is refused first."""
    model, whole, resumed = str(tiny_model_dir("qwen3_vl")), tmp_path / "whole", tmp_path / "resumed"
    trained = ["--packing", "true", "--freeze_vit", "false", "--freeze_aligner", "false"]
    megatron_sft(whole, "--model", model, *trained, "--train_iters", "6", "--global_batch_size", "1",
                 "--save_interval", "3")
    assert (whole / "latest_checkpointed_iteration.txt").read_text() == "6"
    (whole / "latest_checkpointed_iteration.txt").write_text("3")
    changed = vlft("megatron", "sft", "--load", str(whole), "--save", str(resumed), *SAME_RUN, "--train_iters", "6",
                   "--global_batch_size", "1", "--use_distributed_optimizer", "false", ok=False)
    assert changed.returncode == 2 and not resumed.exists()
    assert "--packing False differs from the run resumed (True)" in changed.stderr, changed.stderr[-2000:]
    assert "--use_distributed_optimizer false: the run resumed saved its optimizer with true" in changed.stderr
    megatron_sft(resumed, "--load", str(whole), *trained, "--train_iters", "6", "--global_batch_size", "1")
    (whole / "latest_checkpointed_iteration.txt").write_text("6")
    assert sorted(logged(resumed)) == [4, 5, 6]
    assert {s: logged(whole)[s] for s in (4, 5, 6)} == logged(resumed)  # exactly: same data, state and order
    assert {s: logged(whole, "grad_norm")[s] for s in (4, 5, 6)} == logged(resumed, "grad_norm")

    hf = tmp_path / "hf"
    vlft("export", "--mcore_model", str(whole), "--to_hf", "true", "--output_dir", str(hf))
    answered = vlft("infer", "--model", str(hf), "--val_dataset", f"{DATA}#2", "--max_new_tokens", "4",
                    "--max_length", "1024", "--result_path", str(tmp_path / "answers.jsonl"), *SMALL_MEDIA)
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 2 and all("response" in a for a in answers), answered.stdout[-2000:]


@pytest.mark.slow
def test_moe_expert_parallel_curve_matches_vlft_sft(tiny_model_dir, tmp_path, megatron_sft, vlft_sft):
    """Two processes, the experts split between them (EP=2), each a data-parallel rank of the rest; against
    vlft sft's gradient accumulation over the same two rows (the mean of each row's mean loss)."""
    model = str(tiny_model_dir("qwen3_vl_moe"))
    megatron_sft(tmp_path / "m", "--model", model, "--expert_model_parallel_size", "2", "--train_iters", "6",
                 "--global_batch_size", "2", "--calculate_per_token_loss", "false", nproc=2)
    vlft_sft(tmp_path / "h", "--model", model, "--padding_free", "true", "--max_steps", "6",
             "--gradient_accumulation_steps", "2")
    assert_same_curve(logged(tmp_path / "m"), logged(tmp_path / "h"), 6)  # falls by ~1.43; steps 5-6: epoch 2


def vlft_sft_initial_adapter(model_dir: Path, output: Path, rank: int, alpha: int) -> Path:
    """The LoRA adapter vlft sft starts from with these settings and SAME_RUN's seed (its own calls, in its order:
    seed, model, adapters), saved as a PEFT adapter dir."""
    from transformers import set_seed

    from vlft.arguments import SftArguments
    from vlft.families import detect_family
    from vlft.train.model import load_model
    from vlft.train.tuners import prepare_trainable

    args = SftArguments(model=str(model_dir), dataset=[str(DATA)], train_type="lora", lora_rank=rank,
                        lora_alpha=alpha, lora_dropout=0.0, seed=7)
    set_seed(args.seed)
    model = prepare_trainable(load_model(model_dir, torch.float32, "sdpa"), detect_family(model_dir), args)
    model.save_pretrained(str(output))
    return output


@pytest.mark.slow
def test_moe_lora_curve_matches_vlft_sft_and_exports_its_adapter(tiny_model_dir, tmp_path, vlft, megatron_sft,
                                                                 vlft_sft):
    """LoRA on every projection and every expert (PEFT's target_parameters layout), the experts over two
    expert-parallel processes; starting from vlft sft's own initial adapter (--adapters), the curve is vlft
    sft's, the adapter written at the end is vlft sft's final one, and vlft infer answers with it as with the
    merged model."""
    model_dir = tiny_model_dir("qwen3_vl_moe")
    lora = ["--train_type", "lora", "--lora_rank", "4", "--lora_alpha", "8", "--lora_dropout", "0"]
    start = vlft_sft_initial_adapter(model_dir, tmp_path / "start", 4, 8)
    megatron_sft(tmp_path / "m", "--model", str(model_dir), *lora, "--adapters", str(start),
                 "--expert_model_parallel_size", "2", "--train_iters", "10", "--global_batch_size", "2",
                 "--calculate_per_token_loss", "false", nproc=2, lr="5e-3")
    vlft_sft(tmp_path / "h", "--model", str(model_dir), *lora, "--padding_free", "true", "--max_steps", "10",
             "--gradient_accumulation_steps", "2", lr="5e-3")
    assert_same_curve(logged(tmp_path / "m"), logged(tmp_path / "h"), 10)

    ours, theirs = (load_file(str(d / "adapter_model.safetensors"))
                    for d in (tmp_path / "m" / "checkpoint-10", tmp_path / "h" / "checkpoint-10"))
    theirs = {key.replace(".default.", "."): value for key, value in theirs.items()}
    assert set(ours) == set(theirs) and any(".mlp.experts.base_layer.lora_B" in key for key in ours)
    for key, value in theirs.items():
        assert ours[key].shape == value.shape, key
        assert (ours[key] - value).abs().max() < 1e-4, key  # 10 steps from the same start: float noise (1e-5)
    assert max((value - start_value).abs().max() for value, start_value in zip(
        (theirs[k] for k in sorted(theirs)), (v for _, v in sorted(load_file(str(start / "adapter_model.safetensors"))
                                                                     .items())))) > 1e-3  # the adapter trained

    adapter, merged = tmp_path / "m" / "checkpoint-10", tmp_path / "merged"
    vlft("export", "--adapters", str(adapter), "--merge_lora", "true", "--output_dir", str(merged))
    answers = {}
    for name, source in (("adapter", ["--adapters", str(adapter)]), ("merged", ["--model", str(merged)])):
        vlft("infer", *source, "--val_dataset", f"{DATA}#3", "--max_new_tokens", "6", "--temperature", "0",
             "--max_length", "1024", "--result_path", str(tmp_path / f"{name}.jsonl"), *SMALL_MEDIA)
        answers[name] = [json.loads(line)["response"] for line in (tmp_path / f"{name}.jsonl").read_text()
                         .splitlines()]
    assert answers["adapter"] == answers["merged"] and len(answers["adapter"]) == 3


def test_unsupported_flags_are_refused_together(tiny_model_dir, tmp_path, vlft):
    done = vlft("megatron", "sft", "--model", str(tiny_model_dir("qwen3_vl_moe")), "--dataset", str(DATA),
                "--save", str(tmp_path / "out"), "--moe_grouped_gemm", "true", "--sequence_parallel", "true",
                "--optimizer_cpu_offload", "true", "--context_parallel_size", "2", "--learning_rate", "1e-4",
                "--lora_rnak", "8", "--new_special_tokens", "<step>", "--packing_length", "64", ok=False)
    assert done.returncode == 2
    assert "--moe_grouped_gemm" not in done.stderr  # the seed guide's flag: vlft runs the experts grouped itself
    for expected in ("--sequence_parallel true needs",
                     "--optimizer_cpu_offload true is not supported", "--context_parallel_size 2 is not supported",
                     "--learning_rate 1e-4 is not supported: vlft megatron sft takes Megatron-SWIFT's --lr",
                     "unknown argument --lora_rnak",
                     "--new_special_tokens: Megatron-Core checkpoints keep the base model's tokenizer files",
                     "--packing_length 64 is the length of packed rows: add --packing true"):
        assert expected in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "out").exists()


def test_parallel_sizes_that_do_not_fit_the_model_or_processes_are_refused(tiny_model_dir, tmp_path, vlft):
    done = vlft("megatron", "sft", "--model", str(tiny_model_dir("qwen3_vl_moe")), "--dataset", str(DATA),
                "--save", str(tmp_path / "out"), "--tensor_model_parallel_size", "2", "--global_batch_size", "3",
                "--expert_model_parallel_size", "3", nproc=4, ok=False)
    assert done.returncode == 2
    for expected in ("MoE layers train with --tensor_model_parallel_size 1", "--expert_model_parallel_size 3 does "
                     "not divide the", "4 processes (NPROC_PER_NODE x NNODES) are not a multiple"):
        assert expected in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "out").exists()
