"""bench/trace_gaps.py, on a hand-made chrome trace: GPU busy time per host range from overlapping kernels on two
streams, and each host sync named with the operators around it."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from trace_gaps import BusyTimeline, gap_report  # noqa: E402


def test_busy_time_is_the_union_of_overlapping_kernels():
    gpu = BusyTimeline([(30, 40), (0, 10), (5, 20)])  # the second and third overlap (two streams)
    assert gpu.busy(0, 40) == 30
    assert gpu.busy(15, 35) == 10
    assert gpu.busy(20, 30) == 0
    assert gpu.busy(8, 9) == 1


def test_report_gives_idle_time_per_phase_and_the_sync_inside_its_operators():
    def event(cat, name, ts, dur, tid=1):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid}

    trace = {"traceEvents": [
        event("user_annotation", "phase:forward", 0, 2000),
        event("user_annotation", "phase:backward", 2000, 2000),
        event("user_annotation", "not a phase", 0, 4000),
        event("kernel", "gemm", 500, 1000, tid=7),  # forward: 1.0 of 2.0 ms busy
        event("kernel", "gemm", 2000, 2000, tid=7),  # backward: all busy
        event("cpu_op", "aten::item", 1500, 400),
        event("cpu_op", "aten::_local_scalar_dense", 1510, 380),
        event("cuda_runtime", "cudaStreamSynchronize", 1520, 300),
        event("cuda_runtime", "cudaMemcpyAsync", 1510, 5),  # asynchronous: not a sync
    ]}
    report = gap_report(trace, steps=2)
    assert "| forward | 1.0 | 0.5 | 0.5 | 50% |" in report
    assert "| backward | 1.0 | 1.0 | 0.0 | 100% |" in report
    assert "not a phase" not in report
    assert "| cudaStreamSynchronize | aten::item > aten::_local_scalar_dense | forward | 0.5 | 0.15 |" in report
    assert "cudaMemcpyAsync" not in report
