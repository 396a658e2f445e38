"""Does flash-attn-4 (installed by install_swift.sh from .whl_fa4_*) run on this GPU? One varlen causal
GQA forward + backward at the 4B model's head shape against torch's sdpa per sequence, with the
first-call (JIT compile) and second-call times. GPU machine, in ms-swift's environment:

    PYTHONPATH=/tmp/swift_site:/tmp/swift_site/nvidia_cutlass_dsl/dsl_packages python3 bench/peers/fa4_check.py
"""

from __future__ import annotations

import itertools
import time

import torch
import torch.nn.functional as F


def reference(q, k, v, bounds):
    """Causal attention of each packed sequence on its own (sdpa, GQA heads repeated)."""
    outs = []
    for start, end in itertools.pairwise(bounds):
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))
        ks, vs = (t.repeat_interleave(q.shape[1] // k.shape[1], 0) for t in (ks, vs))
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True).transpose(0, 1))
    return torch.cat(outs)


def main() -> None:
    from flash_attn.cute import flash_attn_varlen_func

    torch.manual_seed(0)
    lengths = [700, 1500, 1896]
    bounds = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    cu = torch.tensor(bounds, dtype=torch.int32, device="cuda")
    q, k, v = (torch.randn(bounds[-1], heads, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for heads in (32, 8, 8))
    for attempt in ("first call (compiles)", "second call"):
        start = time.perf_counter()
        out = flash_attn_varlen_func(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max(lengths),
                                     max_seqlen_k=max(lengths), causal=True)
        out = out[0] if isinstance(out, tuple) else out
        grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
        torch.cuda.synchronize()
        print(f"flash-attn-4 {attempt}: forward + backward {time.perf_counter() - start:.2f} s")
    expected = reference(q, k, v, bounds)
    expected_grads = torch.autograd.grad(expected.float().square().sum(), (q, k, v))
    print(f"max |out - sdpa| = {(out - expected).abs().max().item():.3g}; max |grad - sdpa grad| = "
          f"{max((a - b).abs().max().item() for a, b in zip(grads, expected_grads)):.3g} "
          f"(bf16: ~1e-2 is agreement)")


if __name__ == "__main__":
    main()
