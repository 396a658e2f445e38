"""What every Qwen-VL family shares, and the small set of things a family file fills in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

BoxConvention = Literal["norm1000", "resized_pixels"]


@dataclass(frozen=True)
class Family:
    """One Qwen-VL model family: its template, vision geometry, grounding and module layout."""

    name: str
    model_types: tuple[str, ...]
    template: str  # name of the declarative template in templates/
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    box_convention: BoxConvention
    # How a converted box and its reference phrase are written into the text.
    format_box: Callable[[list[int]], str]
    format_ref: Callable[[str], str]
    # Prefixes (relative to the HF model) of the vision tower, the aligner and the language model.
    vit_prefixes: tuple[str, ...]
    aligner_prefixes: tuple[str, ...]
    llm_prefixes: tuple[str, ...]
    video_timestamps: bool = False  # Qwen3-VL writes `<t seconds>` before each temporal patch group
    video_second_per_grid: bool = False  # Qwen2.5-VL feeds `second_per_grid_ts` to its mRoPE

    @property
    def image_factor(self) -> int:
        """Side of the square one merged vision token covers, in pixels."""
        return self.patch_size * self.merge_size


def frame_timestamps(frame_indices: list[int], video_fps: float, temporal_patch_size: int) -> list[float]:
    """Seconds at the middle of each temporal patch group (Qwen3-VL's `<t seconds>` markers)."""
    indices = list(frame_indices)
    if len(indices) % temporal_patch_size:
        indices += [indices[-1]] * (temporal_patch_size - len(indices) % temporal_patch_size)
    seconds = [i / video_fps for i in indices]
    return [
        (seconds[i] + seconds[i + temporal_patch_size - 1]) / 2 for i in range(0, len(seconds), temporal_patch_size)
    ]
