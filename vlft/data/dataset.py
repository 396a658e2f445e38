"""The training dataset: encoded samples (or packed rows of them) whose pixel values are made when an
item is fetched, so they are made in the data-loader workers and never held for the whole dataset."""

from __future__ import annotations

from torch.utils.data import Dataset

from vlft.data.encode import EncodedSample, Encoder


class PixelsOnFetch(Dataset):
    """Items are samples or packed rows (lists of samples) from `encode_dataset(..., keep_pixels=False)`."""

    def __init__(self, items: list[EncodedSample] | list[list[EncodedSample]], encoder: Encoder):
        self.items = items
        self.encoder = encoder

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        if isinstance(item, list):
            return [self.encoder.with_pixels(sample) for sample in item]
        return self.encoder.with_pixels(item)
