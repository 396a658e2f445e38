"""The bf16 matmul peak this GPU actually reaches (issue 5 defines MFU over it, not over the datasheet):
the best of several timed (M x K) @ (K x N) products at sizes a 4B model's projections use, and a large
square one. GPU machine; one command:

    python bench/matmul_peak.py
"""

from __future__ import annotations

import sys

import torch

SHAPES = [(8192, 8192, 8192), (4096, 2560, 9728), (4096, 9728, 2560), (4096, 2560, 4096), (16384, 4096, 16384)]


def timed_tflops(m: int, k: int, n: int, repeats: int = 50) -> float:
    """TFLOP/s of a bf16 (m x k) @ (k x n) product, timed over `repeats` runs after a warm-up."""
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * m * k * n * repeats / (start.elapsed_time(end) / 1000) / 1e12


def measured_bf16_peak() -> float:
    """FLOP/s: the fastest of SHAPES."""
    return max(timed_tflops(*shape) for shape in SHAPES) * 1e12


def main() -> int:
    if not torch.cuda.is_available():
        sys.exit("needs a GPU")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}\n\n| M x K x N | TFLOP/s |\n| --- | --- |")
    for shape in SHAPES:
        print(f"| {' x '.join(map(str, shape))} | {timed_tflops(*shape):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
