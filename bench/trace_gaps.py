"""Where the GPU waits, from a torch.profiler chrome trace: GPU busy and idle time inside each labelled host
range (record_function ranges named "phase:..."), and the host syncs (stream / device synchronize, blocking
copies) with the operator that caused each. Used by bench/trainer_step_gaps.py; pure Python, no torch.

    python bench/trace_gaps.py TRACE.json [--steps N]
"""

from __future__ import annotations

import argparse
import bisect
import json
from collections import defaultdict

GPU_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}
SYNC_CALLS = {"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cuStreamSynchronize",
              "cuCtxSynchronize"}
PHASE_PREFIX = "phase:"


class BusyTimeline:
    """The union of GPU activity intervals, queried for the busy time inside any [start, end)."""

    def __init__(self, intervals: list[tuple[float, float]]):
        merged: list[list[float]] = []
        for start, end in sorted(intervals):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self.starts = [s for s, _ in merged]
        self.ends = [e for _, e in merged]
        self.cumulative = [0.0]
        for s, e in merged:
            self.cumulative.append(self.cumulative[-1] + e - s)

    def _busy_before(self, t: float) -> float:
        i = bisect.bisect_right(self.starts, t)  # intervals starting at or before t
        if i == 0:
            return 0.0
        return self.cumulative[i - 1] + min(t, self.ends[i - 1]) - self.starts[i - 1]

    def busy(self, start: float, end: float) -> float:
        return max(0.0, self._busy_before(end) - self._busy_before(start))


def _is_sync(name: str) -> bool:
    """Calls that wait for the GPU: synchronizes, and the blocking (non-Async) copies."""
    return name in SYNC_CALLS or (name.startswith("cudaMemcpy") and "Async" not in name)


def gap_report(trace: dict, steps: int = 1) -> str:
    """Markdown tables: per phase label, host wall ms and GPU busy / idle ms per step; then the syncs."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    gpu = BusyTimeline([(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") in GPU_CATEGORIES])
    phases: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "user_annotation" and e["name"].startswith(PHASE_PREFIX):
            phases[e["name"][len(PHASE_PREFIX):]].append((e["ts"], e["ts"] + e["dur"]))
    lines = ["| phase (host range) | wall ms/step | GPU busy ms/step | GPU idle ms/step | busy |",
             "| --- | --- | --- | --- | --- |"]
    for name, ranges in sorted(phases.items(), key=lambda kv: -sum(b - a for a, b in kv[1])):
        wall = sum(b - a for a, b in ranges) / 1000 / steps
        busy = sum(gpu.busy(a, b) for a, b in ranges) / 1000 / steps
        share = f"{100 * busy / wall:.0f}%" if wall else "-"
        lines.append(f"| {name} | {wall:.1f} | {busy:.1f} | {wall - busy:.1f} | {share} |")

    # Syncs: the runtime call, and the innermost CPU operator around it on the same thread.
    ops_by_thread: dict[tuple, list[dict]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "cpu_op":
            ops_by_thread[(e.get("pid"), e.get("tid"))].append(e)
    for ops in ops_by_thread.values():
        ops.sort(key=lambda e: e["ts"])
    op_starts = {thread: [op["ts"] for op in ops] for thread, ops in ops_by_thread.items()}
    phase_ranges = sorted((a, b, name) for name, ranges in phases.items() for a, b in ranges)
    syncs: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") not in ("cuda_runtime", "cuda_driver") or not _is_sync(e["name"]):
            continue
        ops = ops_by_thread.get((e.get("pid"), e.get("tid")), [])
        if not ops:
            continue
        i = bisect.bisect_right(op_starts[(e.get("pid"), e.get("tid"))], e["ts"])
        enclosing = [op["name"] for op in ops[max(0, i - 400):i] if op["ts"] + op["dur"] >= e["ts"] + e["dur"]]
        owner = " > ".join(enclosing[:3]) or "-"  # outermost first
        phase = next((name for a, b, name in reversed(phase_ranges) if a <= e["ts"] < b), "-")
        syncs[(e["name"], owner, phase)].append(e["dur"] / 1000)
    lines += ["", "| host sync | inside operators (outermost first) | phase | count/step | ms/step |", "| --- | --- | --- | --- | --- |"]
    for (call, owner, phase), durations in sorted(syncs.items(), key=lambda kv: -sum(kv[1])):
        lines.append(f"| {call} | {owner} | {phase} | {len(durations) / steps:.1f} | {sum(durations) / steps:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace")
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args()
    with open(args.trace) as f:
        print(gap_report(json.load(f), args.steps))


if __name__ == "__main__":
    main()
