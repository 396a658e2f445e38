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


@pytest.mark.slow
@pytest.mark.parametrize("family, tp, ep", [("qwen3_vl", 1, 1), ("qwen3_vl", 2, 1), ("qwen3_vl_moe", 1, 2)])
def test_packed_samples_get_their_own_logits(family, tp, ep, tiny_model_dir, tmp_path):
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(tp * ep), str(PROBE), str(tiny_model_dir(family)), str(out), str(tp), str(ep)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["packed_vs_alone"] < 1e-5 and result["alone_vs_hf"] < 1e-5, result
    assert result["unbounded_vs_alone"] > 1e-3 * result["largest_logit"], result  # boundaries matter here
