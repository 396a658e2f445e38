"""Packed rows in the Megatron-Core model (what `vlft megatron sft` trains on): one row of three samples with
their boundaries (PackedSeqParams, thd) gives each sample the logits it has alone, and alone they are the HF
model's (fp32), for Qwen3-VL dense at TP=1 and TP=2 and Qwen3-VL-MoE at EP=2; the same row without its
boundaries does not (so the check can fail)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("megatron.core")

PROBE = Path(__file__).with_name("packed_probe.py")


# (family, TP, EP)
CASES = [("qwen3_vl", 1, 1), ("qwen3_vl", 2, 1), ("qwen3_vl_moe", 1, 2)]


@pytest.mark.slow
def test_packed_samples_get_their_own_logits(tiny_model_dir, tmp_path):
    """Every case in one launch of two processes (at TP=1 the second process is a data-parallel replica): one
    torchrun start and one Megatron-Core import per process, rather than one per case."""
    out = tmp_path / "result.json"
    cases = [str(arg) for family, tp, ep in CASES for arg in (tiny_model_dir(family), tp, ep)]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(max(tp * ep for _, tp, ep in CASES)), str(PROBE), str(out), *cases],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text())
    assert len(results) == len(CASES)
    for case, result in zip(CASES, results):
        assert result["packed_vs_alone"] < 1e-5 and result["alone_vs_hf"] < 1e-5, (case, result)
        assert result["unbounded_vs_alone"] > 1e-3 * result["largest_logit"], (case, result)  # boundaries matter
