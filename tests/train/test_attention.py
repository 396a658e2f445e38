"""The varlen attention's boundary bookkeeping: computed once per forward (no host syncs per layer), exact."""

from __future__ import annotations

import torch

from vlft.train import attention
from vlft.train.attention import _RowBoundaries, boundaries_from_positions, torch_varlen_attention


def test_row_boundaries_are_computed_once_per_position_tensor(monkeypatch):
    calls = []
    real = attention.boundaries_from_positions
    monkeypatch.setattr(attention, "boundaries_from_positions", lambda p, n: calls.append(n) or real(p, n))
    cache = _RowBoundaries()
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    for _ in range(3):  # three layers of one forward
        cu_seqlens, longest = cache(positions, 9)
    assert calls == [9] and cu_seqlens.tolist() == [0, 3, 5, 9] and longest == 4
    cache(positions.clone(), 9)  # the next forward's tensor, equal values: computed again, never stale
    assert calls == [9, 9]


def test_attention_of_a_packed_row_equals_per_sample_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 4, 9, 8) for _ in range(3))
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    module = torch.nn.Module()
    module.is_causal = True
    out, _ = torch_varlen_attention(module, q, k, v, None, position_ids=positions)
    for start, end in zip([0, 3, 5], [3, 5, 9]):
        expected = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], is_causal=True)
        torch.testing.assert_close(out[0, start:end], expected[0].transpose(0, 1))
    assert boundaries_from_positions(positions, 9).tolist() == [0, 3, 5, 9]
