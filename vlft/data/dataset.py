"""The training dataset: encoded samples (or packed rows of them) whose pixel values are made when an
item is fetched, so they are made in the data-loader workers and never held for the whole dataset."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, get_worker_info

from vlft.data.encode import EncodedSample, Encoder


class PixelsOnFetch(Dataset):
    """Items are samples or packed rows (lists of samples) from `encode_dataset(..., keep_pixels=False)`."""

    def __init__(self, items: list[EncodedSample] | list[list[EncodedSample]], encoder: Encoder):
        self.items = items
        self.encoder = encoder

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        _one_thread_in_workers()
        item = self.items[index]
        if isinstance(item, list):
            return [self.encoder.with_pixels(sample) for sample in item]
        return self.encoder.with_pixels(item)


def _one_thread_in_workers() -> None:
    """In a data-loader worker, torch's image ops run on one thread. Each worker otherwise starts as many
    threads as the machine has cores, and N workers x cores threads compete for the CPU with the training
    process, whose one thread launches the GPU's kernels (a 4B LoRA step at 4k tokens is bound by that
    thread: BENCHMARKS.md)."""
    if get_worker_info() is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)
