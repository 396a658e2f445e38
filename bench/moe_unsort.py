"""How to put the MoE experts' outputs back in token order: the step vlft/train/grouped_expert_lora.py ends with,
whose backward (`IndexCopyBackward0`) took 8.1 ms of host time per call in the Qwen3-VL-30B-A3B LoRA profile
(BENCHMARKS.md, session 15). Times forward + backward of each variant at the profile's shape (4,096 tokens, top-8,
hidden 2,048, bf16), host and GPU, and checks they give the same values and gradients. GPU machine:

    python bench/moe_unsort.py [--tokens 4096 --top_k 8 --hidden 2048 --repeats 50]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def by_index_copy(out: torch.Tensor, order: torch.Tensor, top_k: int) -> torch.Tensor:
    """Today's: scatter the expert-sorted rows into token order, then sum each token's top_k rows."""
    unsorted = torch.empty_like(out).index_copy_(0, order, out)
    return unsorted.view(-1, top_k, out.shape[-1]).sum(dim=1)


def by_index_select(out: torch.Tensor, order: torch.Tensor, top_k: int) -> torch.Tensor:
    """Gather with the inverse permutation (its backward scatters a permutation: index_add_ without collisions)."""
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return out.index_select(0, inverse).view(-1, top_k, out.shape[-1]).sum(dim=1)


def by_index_add(out: torch.Tensor, order: torch.Tensor, top_k: int) -> torch.Tensor:
    """Sum straight into each token's row (float32 accumulator; backward is a gather)."""
    summed = torch.zeros(order.numel() // top_k, out.shape[-1], device=out.device, dtype=torch.float32)
    return summed.index_add_(0, order // top_k, out.float()).to(out.dtype)


VARIANTS = {"index_copy_ (now)": by_index_copy, "index_select of the inverse": by_index_select,
            "index_add_ per token (fp32)": by_index_add}


def timed(variant, out: torch.Tensor, order: torch.Tensor, top_k: int, repeats: int) -> tuple[float, float]:
    """(host ms, stream ms between two events) per forward + backward, after warm-up."""
    grad = torch.randn(order.numel() // top_k, out.shape[-1], device=out.device, dtype=out.dtype)
    for _ in range(5):
        variant(out, order, top_k).backward(grad)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    host = 0.0
    start.record()
    for _ in range(repeats):
        began = time.perf_counter()
        variant(out, order, top_k).backward(grad)
        host += time.perf_counter() - began
    end.record()
    torch.cuda.synchronize()
    return host * 1000 / repeats, start.elapsed_time(end) / repeats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--top_k", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a GPU")
    torch.manual_seed(0)
    experts = torch.randint(0, args.experts, (args.tokens * args.top_k,), device="cuda")
    order = torch.sort(experts).indices
    out = torch.randn(order.numel(), args.hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    reference = by_index_copy(out, order, args.top_k).float()
    print(f"{torch.cuda.get_device_name()}: {args.tokens} tokens x top-{args.top_k}, hidden {args.hidden}, bf16\n")
    print("| variant | host ms (fwd + bwd) | stream ms between events (idle included) | max difference from now |\n| --- | --- | --- | --- |")
    for name, variant in VARIANTS.items():
        difference = (variant(out, order, args.top_k).float() - reference).abs().max().item()
        host, gpu = timed(variant, out, order, args.top_k, args.repeats)
        print(f"| {name} | {host:.3f} | {gpu:.3f} | {difference:.3g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
