"""Training runs with the objects alive at its start frozen out of the cyclic collector, and only then."""

from __future__ import annotations

import gc

from vlft.train.frozen_gc import long_lived_objects_frozen


def test_objects_are_frozen_inside_and_released_after():
    gc.unfreeze()
    alive = [[] for _ in range(1000)]  # tracked by the collector
    with long_lived_objects_frozen():
        assert gc.get_freeze_count() >= len(alive)
    assert gc.get_freeze_count() == 0


def test_cyclic_garbage_made_during_training_is_still_collected():
    class Node:
        pass

    with long_lived_objects_frozen():
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        assert gc.collect() >= 2
