"""Bin packing of encoded samples into rows of at most max_length tokens."""

from __future__ import annotations

import bisect
import random


def pack_samples(lengths: list[int], max_length: int, seed: int) -> list[list[int]]:
    """Indices grouped into rows whose lengths sum to <= max_length (best-fit decreasing).

    Deterministic for a seed: ties in length are broken by a seeded shuffle, and the rows come out in
    a seeded random order (so training does not see rows sorted by length).
    """
    order = list(range(len(lengths)))
    rng = random.Random(seed)
    rng.shuffle(order)
    order.sort(key=lambda i: -lengths[i])  # stable: equal lengths keep the shuffled order
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining capacity, row index), sorted
    for i in order:
        if lengths[i] > max_length:
            raise ValueError(f"sample {i} has {lengths[i]} tokens, over max_length {max_length}")
        slot = bisect.bisect_left(free, (lengths[i], -1))
        if slot == len(free):
            rows.append([i])
            remaining, row = max_length - lengths[i], len(rows) - 1
        else:
            remaining, row = free.pop(slot)
            rows[row].append(i)
            remaining -= lengths[i]
        bisect.insort(free, (remaining, row))
    rng.shuffle(rows)
    return rows
