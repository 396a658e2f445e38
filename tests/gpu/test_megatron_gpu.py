"""GPU only (skipped elsewhere): `vlft megatron sft`'s CUDA paths. The MoE experts through torch's grouped GEMM
(bf16) against each expert alone in float64; a tiny Qwen3-VL-MoE trained on packed rows by `vlft megatron sft`
(grouped experts, varlen FlashAttention, the vision tower's varlen attention) against `vlft sft` on the same data,
both bf16 on the GPU: the first step's loss (no update yet) within bf16's rounding, and both curves falling."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("megatron.core")

from tests.megatron.test_grouped_experts import experts  # noqa: E402
from tests.megatron.test_sft import DATA, SMALL_MEDIA, logged  # noqa: E402
from vlft.megatron.grouped_experts import grouped_linear  # noqa: E402
from vlft.model.grouped_gemm import runs_grouped_mm  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm()).item()


def test_grouped_mm_experts_match_float64():
    torch.manual_seed(0)
    linears = experts(8, 64, 48, lora=True, dtype=torch.bfloat16, device="cuda", rank=8)
    reference = [copy.deepcopy(linear).to("cpu", torch.float64) for linear in linears]
    sizes = [5, 0, 17, 3, 1, 40, 0, 9]
    x = torch.randn(sum(sizes), 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    assert runs_grouped_mm(x, torch.stack([linear.weight for linear in linears]).transpose(1, 2))
    ends = torch.cumsum(torch.tensor(sizes), 0).to("cuda", torch.int32)
    out = grouped_linear(x, linears, sizes, ends)
    out.float().pow(2).sum().backward()

    x64 = x.detach().cpu().double().requires_grad_()
    want = torch.cat([linear(rows)[0] for linear, rows in zip(reference, torch.split(x64, sizes))])
    want.pow(2).sum().backward()
    assert relative(out, want) < 1e-2
    assert relative(x.grad, x64.grad) < 2e-2
    for got, expected in zip(linears, reference):
        for (name, param), (_, param64) in zip(got.named_parameters(), expected.named_parameters()):
            if param64.grad is not None and param64.grad.norm() > 0:
                assert relative(param.grad, param64.grad) < 2e-2, name


def test_megatron_sft_on_gpu_matches_vlft_sft(tiny_model_dir, tmp_path):
    model = str(tiny_model_dir("qwen3_vl_moe"))
    same = ["--model", model, "--dataset", str(DATA), "--max_length", "256", "--torch_dtype", "bfloat16", "--seed",
            "7", "--packing", "true", *SMALL_MEDIA]
    env = {**os.environ, "NPROC_PER_NODE": "1"}

    def run(*argv: str) -> None:
        done = subprocess.run([sys.executable, "-m", "vlft.cli.main", *argv], capture_output=True, text=True,
                              timeout=600, env=env)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]

    def megatron(out: str, *argv: str) -> dict[int, float]:
        run("megatron", "sft", *same, "--save", str(tmp_path / out), "--add_version", "false", "--num_workers", "0",
            "--log_interval", "1", "--lr", "1e-3", "--train_iters", "6", "--global_batch_size", "1",
            "--no_save_optim", "true", *argv)
        return logged(tmp_path / out)

    ours = megatron("full", "--recompute_granularity", "none")
    run("sft", *same, "--train_type", "full", "--output_dir", str(tmp_path / "h"), "--add_version", "false",
        "--logging_steps", "1", "--learning_rate", "1e-3", "--report_to", "none", "--save_strategy", "no",
        "--max_steps", "6")
    theirs = logged(tmp_path / "h")
    assert sorted(ours) == sorted(theirs) == list(range(1, 7))
    assert abs(ours[1] - theirs[1]) < 2e-2 * abs(theirs[1]), (ours, theirs)  # bf16 forwards, different kernels
    assert ours[6] < ours[1] - 0.5 and theirs[6] < theirs[1] - 0.5, (ours, theirs)

    # LoRA (the experts too) with every layer recomputed learns as without recomputation: the frozen embedding's
    # output is made to need a gradient, else the recomputed layers' adapters get none
    lora = ["--train_type", "lora", "--lora_rank", "8", "--lora_alpha", "32", "--lora_dropout", "0"]
    recomputed = megatron("lora_full", *lora, "--recompute_granularity", "full")
    kept = megatron("lora_none", *lora, "--recompute_granularity", "none")
    assert kept[6] < kept[1] - 0.3, kept  # more than the tolerance below: a curve that does not learn fails it
    assert all(abs(recomputed[s] - kept[s]) < 1e-2 * abs(kept[s]) for s in kept), (recomputed, kept)
