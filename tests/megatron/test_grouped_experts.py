"""MoE experts run grouped (vlft/megatron/grouped_experts.py) against each expert's own linear and LoRA adapters
(what Megatron-Core's SequentialMLP runs): outputs and every gradient, float64 on CPU. On CUDA the same module
runs torch's grouped GEMM; tests/gpu/test_megatron_gpu.py compares that path with this one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlft.megatron.grouped_experts import grouped_linear
from vlft.megatron.lora import Adapter, LinearAdapters, _hook


class ExpertLinear(nn.Module):
    """A Megatron-Core linear's interface (returns (out, bias)) over an nn.Linear layout weight."""

    def __init__(self, in_features: int, out_features: int, dtype: torch.dtype, device: str):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features, dtype=dtype, device=device)
                                   / in_features ** 0.5)

    def forward(self, x):
        return x @ self.weight.t(), None


def experts(count: int, in_features: int, out_features: int, lora: bool, dtype: torch.dtype = torch.float64,
            device: str = "cpu", rank: int = 4) -> list[ExpertLinear]:
    linears = []
    for _ in range(count):
        linear = ExpertLinear(in_features, out_features, dtype, device)
        if lora:
            adapter = Adapter(in_features, out_features, rank, dtype, device)
            nn.init.normal_(adapter.B)  # PEFT starts B at zero: a zero product would hide a wrong layout
            linear.lora = LinearAdapters({"experts_gate_up": adapter}, scaling=2.0, dropout=0.0)
            linear.register_forward_hook(_hook)
        linears.append(linear)
    return linears


@pytest.mark.parametrize("lora", [False, True])
def test_grouped_experts_equal_each_expert_alone(lora):
    torch.manual_seed(0)
    linears = experts(5, 12, 7, lora)
    sizes = [3, 0, 6, 1, 4]  # an expert that got no token too
    x = torch.randn(sum(sizes), 12, dtype=torch.float64, requires_grad=True)
    ends = torch.cumsum(torch.tensor(sizes), 0).to(torch.int32)

    grouped = grouped_linear(x, linears, sizes, ends)
    grouped.pow(2).sum().backward()
    grads = [p.grad.clone() for p in [x, *(q for linear in linears for q in linear.parameters())]]
    for p in [x, *(q for linear in linears for q in linear.parameters())]:
        p.grad = None

    alone = torch.cat([linear(rows)[0] for linear, rows in zip(linears, torch.split(x, sizes))])
    alone.pow(2).sum().backward()
    expected = [p.grad for p in [x, *(q for linear in linears for q in linear.parameters())]]

    assert torch.allclose(grouped, alone, atol=1e-12)
    assert len(grads) == len(expected) == 1 + len(linears) * (3 if lora else 1)
    for got, want in zip(grads, expected):
        assert torch.allclose(got, want, atol=1e-12)
    if lora:  # the adapters took part (a layout mix-up would still give equal base outputs)
        assert not torch.allclose(grouped, torch.cat([rows @ linear.weight.t() for linear, rows in
                                                      zip(linears, torch.split(x, sizes))]))
