"""Grids from image sizes equal the HF image processor's own grids (ground truth: the processor run on
real images of those sizes), for every family's processor settings and with --max_pixels/--min_pixels
style overrides."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vlft.data.image_grid import grid_from_size

SIZES = [(448, 448), (1, 1), (4, 700), (700, 4), (28, 28), (29, 57), (640, 480), (1201, 703), (60, 3000),
         (17, 3300), (100, 101), (56, 56), (2, 399)]  # with the small override bounds: every branch of the rule


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl"])  # qwen3_vl_moe and qwen2_vl: the same settings
@pytest.mark.parametrize("override", [None, {"shortest_edge": 64 * 64, "longest_edge": 256 * 256}])
def test_grids_equal_the_processors(family, override, processor_of):
    image_processor = processor_of(family).image_processor
    rng = np.random.default_rng(0)
    for width, height in SIZES:
        image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        kwargs = {"size": {**dict(image_processor.size), **override}} if override else {}
        expected = image_processor(images=[image], return_tensors="pt", **kwargs)["image_grid_thw"][0].tolist()
        assert list(grid_from_size(image_processor, width, height, override)) == expected, (width, height)


def test_a_bad_aspect_ratio_is_refused_like_the_processor(processor_of):
    with pytest.raises(ValueError, match="aspect ratio"):
        grid_from_size(processor_of("qwen3_vl").image_processor, 1, 201)


def test_an_unknown_processor_gives_none():
    class Other:
        pass

    assert grid_from_size(Other(), 10, 10) is None
