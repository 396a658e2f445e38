"""GPU only (skipped without CUDA or without fla): the fla kernels behind PackedGatedDeltaNet's "fla" set against fp32
torch references run on each sample alone: chunk_gated_delta_rule with cu_seqlens (output and the gradients of
q, k, v, beta, g: fla has had Hopper-only gradient bugs), causal_conv1d with cu_seqlens, and the whole layer
"fla" against "torch". Errors are printed (pytest -s) as max abs, max abs over the reference's largest
magnitude, and RMS error over the reference's RMS (fla's own test metric), which the tolerances bound.

Where fla refuses the gated delta rule's backward (fla 0.6.0 on Hopper with Triton >= 3.4 and < 3.7.1, fla#640:
its compiler gives wrong dg / dbeta there), the tests that need it are expected to fail with that refusal
(strict: they pass again, and must be unmarked, once Triton or tilelang is fixed up); `vlft sft` then stops
before loading (vlft/train/model.py). The rows end with two empty segments, as fixed-shape rows
(`--torch_compile_mode reduce-overhead`) bring them."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from vlft.train.linear_attention import (PackedGatedDeltaNet, delta_rule_per_sample, fla_dtype_refusal, fla_refusal,
                                         packed_causal_conv1d)


def fla_importable() -> bool:
    try:
        import fla.ops.gated_delta_rule  # noqa: F401
    except ImportError:
        return False
    return True


pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and fla_importable()), reason="needs CUDA and fla")
# The tests that run fla's gated backward, where fla refuses it (fla#640).
refused_backward = pytest.mark.xfail(torch.cuda.is_available() and fla_importable() and "#640" in (fla_refusal() or ""),
                                     reason=f"{fla_refusal()}", raises=RuntimeError, strict=True)

LENGTHS = [1, 63, 64, 65, 130, 200, 17, 0, 0]  # below, on and across fla's 64-token chunks; empty tail segments
# RMS error over reference RMS: bf16 rounds fla's operands and outputs; fp32 runs Triton's tf32 dots.
TOLERANCE = {torch.bfloat16: 0.02, torch.float32: 0.005}


def boundaries(device="cuda") -> torch.Tensor:
    return torch.tensor([0, *itertools.accumulate(LENGTHS)], dtype=torch.int32, device=device)


def errors(got: torch.Tensor, want: torch.Tensor) -> dict:
    diff = (got.float() - want.float())
    scale = want.float().abs().max().clamp_min(1e-30)
    rms = want.float().square().mean().sqrt().clamp_min(1e-30)
    return {"max_abs": diff.abs().max().item(), "max_rel": (diff.abs().max() / scale).item(),
            "rms_ratio": (diff.square().mean().sqrt() / rms).item()}


def compare(label: str, pairs: dict, tolerance: float) -> None:
    """Prints every error, then asserts them all (so one run shows each number)."""
    table = {name: errors(got, want) for name, (got, want) in pairs.items()}
    for name, e in table.items():
        print(f"{label:30s} {name:18s} max_abs {e['max_abs']:.3e}  max_rel {e['max_rel']:.3e}  "
              f"rms_ratio {e['rms_ratio']:.3e}")
    bad = {name: e["rms_ratio"] for name, e in table.items() if not e["rms_ratio"] <= tolerance}
    assert not bad, f"{label}: rms_ratio over {tolerance}: {bad}"


def gated_inputs(dtype, heads=16, value_heads=32, dim=128):
    """Packed q, k, v, g, beta as the layer makes them: g in fp32 from A_log ~ log U(0.01, 16), dt_bias 1."""
    generator = torch.Generator("cuda").manual_seed(0)
    total = sum(LENGTHS)

    def randn(*shape, dtype=dtype):
        return torch.randn(*shape, generator=generator, device="cuda", dtype=torch.float32).to(dtype)

    query, key = randn(1, total, heads, dim), randn(1, total, heads, dim)
    value = randn(1, total, value_heads, dim)
    a_log = torch.empty(value_heads, device="cuda").uniform_(0.01, 16, generator=generator).log()
    g = -a_log.exp() * F.softplus(randn(1, total, value_heads, dtype=torch.float32) + 1.0)
    beta = randn(1, total, value_heads).sigmoid()
    return [t.requires_grad_() for t in (query, key, value, g, beta)]


@refused_backward
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_fla_chunk_gated_delta_rule_varlen_matches_per_sample_reference(dtype):
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    inputs = gated_inputs(dtype)
    reference_inputs = [t.detach().float().requires_grad_() for t in inputs]
    upstream = torch.randn(1, sum(LENGTHS), 32, 128, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    query, key, value, g, beta = inputs
    out, _ = chunk_gated_delta_rule(query, key, value, g=g, beta=beta, cu_seqlens=boundaries(),
                                    use_qk_l2norm_in_kernel=True)
    (out.float() * upstream).sum().backward()
    query, key, value, g, beta = reference_inputs
    want = delta_rule_per_sample(query, key, value, g, beta, boundaries().tolist())
    (want * upstream).sum().backward()
    names = ("dq", "dk", "dv", "dg", "dbeta")
    pairs = {"out": (out, want)} | {n: (t.grad, r.grad) for n, t, r in zip(names, inputs, reference_inputs)}
    compare(f"chunk_gated_delta_rule {dtype}".replace("torch.", ""), pairs, TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_fla_causal_conv1d_varlen_matches_boundary_aware_torch_conv(dtype):
    from fla.modules.causal_conv1d import causal_conv1d

    generator = torch.Generator("cuda").manual_seed(2)
    channels = 2 * 16 * 128 + 32 * 128  # Qwen3.5's q, k and v channels
    x = torch.randn(1, sum(LENGTHS), channels, device="cuda", generator=generator).to(dtype).requires_grad_()
    weight = (torch.randn(channels, 4, device="cuda", generator=generator) / 2).to(dtype).requires_grad_()
    x32, weight32 = (t.detach().float().requires_grad_() for t in (x, weight))
    upstream = torch.randn(x.shape, device="cuda", generator=generator)
    out, _ = causal_conv1d(x, weight=weight, activation="silu", cu_seqlens=boundaries())
    (out.float() * upstream).sum().backward()
    want = packed_causal_conv1d(x32, weight32, None, boundaries(), "silu")
    (want * upstream).sum().backward()
    pairs = {"out": (out, want), "dx": (x.grad, x32.grad), "dweight": (weight.grad, weight32.grad)}
    compare(f"causal_conv1d {dtype}".replace("torch.", ""), pairs, TOLERANCE[dtype])


def tiny_stock_layer(dtype):
    from transformers import Qwen3_5TextConfig
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet

    config = Qwen3_5TextConfig(hidden_size=256, num_hidden_layers=1, layer_types=["linear_attention"],
                               linear_num_key_heads=4, linear_num_value_heads=8, linear_key_head_dim=64,
                               linear_value_head_dim=64)
    torch.manual_seed(0)
    layer = Qwen3_5GatedDeltaNet(config, layer_idx=0)
    for linear in (layer.in_proj_qkv, layer.in_proj_z, layer.in_proj_b, layer.in_proj_a, layer.out_proj):
        torch.nn.init.normal_(linear.weight, std=0.05)
    return layer.to("cuda", dtype)


# Measured on an H100 with tilelang (2026-12-06): the float32 layer's gate gradients (A_log, dt_bias, in_proj_a)
# are 0.17-0.26 RMS off the exact path; vlft trains float32 with the torch kernels there (fla_dtype_refusal).
FP32_GATE_GRADIENTS = pytest.param(torch.float32, id="fp32", marks=pytest.mark.xfail(
    torch.cuda.is_available() and fla_dtype_refusal(torch.float32) is not None, raises=AssertionError,
    strict=True, reason="fla's float32 gate gradients on Hopper (fla_dtype_refusal)"))


@refused_backward
@pytest.mark.parametrize("dtype", [pytest.param(torch.bfloat16, id="bf16"), FP32_GATE_GRADIENTS])
def test_packed_layer_fla_matches_torch_kernels(dtype):
    stock = tiny_stock_layer(dtype)
    hidden = torch.randn(1, sum(LENGTHS), 256, device="cuda", dtype=dtype,
                         generator=torch.Generator("cuda").manual_seed(3))
    padded = hidden[:, :150].reshape(2, 75, 256)
    mask = torch.ones(2, 75, dtype=torch.long, device="cuda")
    mask[1, :20] = 0
    for label, row, kwargs in (("packed row", hidden, {"cu_seq_lens_q": boundaries()}),
                               ("padded batch", padded, {"attention_mask": mask})):
        results = {}
        for kernels in ("torch", "fla"):
            layer = PackedGatedDeltaNet(stock, kernels)
            layer.zero_grad()
            x = row.detach().clone().requires_grad_()
            out = layer(x, **kwargs)
            out.float().square().mean().backward()
            results[kernels] = {"out": out.detach(), "dx": x.grad} | {
                name: p.grad.clone() for name, p in layer.named_parameters()}
        pairs = {name: (results["fla"][name], results["torch"][name]) for name in results["torch"]}
        compare(f"layer {label} {dtype}".replace("torch.", ""), pairs, 2 * TOLERANCE[dtype])


def test_stock_layer_with_fla_still_leaks_through_its_convolution():
    """transformers' own layer, handed cu_seq_lens_q with fla installed: the delta rule is kept apart per
    sample, but its convolution is not, so each sample's first tokens differ from the packed layer's."""
    stock = tiny_stock_layer(torch.float32)
    hidden = torch.randn(1, sum(LENGTHS), 256, device="cuda", generator=torch.Generator("cuda").manual_seed(4))
    with torch.no_grad():
        want = PackedGatedDeltaNet(stock, "torch")(hidden, cu_seq_lens_q=boundaries())
        got = stock(hidden, cu_seq_lens_q=boundaries())
    bounds = boundaries().tolist()
    starts = torch.tensor([b for b, e in zip(bounds, bounds[1:]) if e > b], device="cuda")  # non-empty samples
    leak = (got - want)[0, starts].abs().max().item()
    print(f"stock layer + fla, cu_seq_lens_q: max error at sample starts {leak:.3e}, "
          f"over the row {(got - want).abs().max().item():.3e} (outputs up to {want.abs().max().item():.3e})")
    assert leak > 1e-3
