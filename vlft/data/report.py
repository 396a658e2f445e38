"""`vlft data check`'s report and `vlft data encode`'s per-line JSON (a stable contract)."""

from __future__ import annotations

import hashlib
import statistics
from collections import Counter

import torch

from vlft.data.encode import IGNORE_INDEX, EncodedSample, TooLongError
from vlft.data.pipeline import EncodeResult

HISTOGRAM_EDGES = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of the float32, C-contiguous bytes of a tensor."""
    return hashlib.sha256(tensor.detach().to(torch.float32).contiguous().numpy().tobytes()).hexdigest()


def encoded_line(result: EncodeResult, tokenizer) -> dict:
    """One line of `vlft data encode` output: the encoding, or the error for a bad line."""
    if result.sample is None:
        return {"source": result.source, "line": result.line, "error": str(result.error)}
    s: EncodedSample = result.sample
    out = {"source": result.source, "line": result.line, "input_ids": s.input_ids, "labels": s.labels,
           "image_grid_thw": s.image_grid_thw.tolist() if s.image_grid_thw is not None else [],
           "video_grid_thw": s.video_grid_thw.tolist() if s.video_grid_thw is not None else [],
           "pixel_values_shape": list(s.pixel_values.shape) if s.pixel_values is not None else None,
           "pixel_values_sha256": tensor_sha256(s.pixel_values) if s.pixel_values is not None else None,
           "pixel_values_videos_shape": list(s.pixel_values_videos.shape) if s.pixel_values_videos is not None else None,
           "pixel_values_videos_sha256": (tensor_sha256(s.pixel_values_videos)
                                          if s.pixel_values_videos is not None else None),
           "text": tokenizer.decode(s.input_ids, skip_special_tokens=False)}
    if s.second_per_grid_ts is not None:
        out["second_per_grid_ts"] = s.second_per_grid_ts
    if s.truncated:
        out["truncated"] = True
    return out


def modality(sample: EncodedSample) -> str:
    """text, image, video or image+video."""
    kinds = [k for k, grid in (("image", sample.image_grid_thw), ("video", sample.video_grid_thw))
             if grid is not None and len(grid)]
    return "+".join(kinds) or "text"


def _histogram(lengths: list[int]) -> list[str]:
    buckets = Counter()
    for n in lengths:
        upper = next((edge for edge in HISTOGRAM_EDGES if n <= edge), None)
        buckets[upper] += 1
    rows, lower, widest = [], 0, max(buckets.values())
    for edge in (*HISTOGRAM_EDGES, None):
        if buckets[edge]:
            label = f"{lower + 1:>6}-{edge:<6}" if edge else f"{lower + 1:>6}+      "
            bar = "#" * max(1, round(40 * buckets[edge] / widest))
            rows.append(f"  {label} {bar} {buckets[edge]}")
        lower = edge or lower
    return rows


def check_report(results: list[EncodeResult], max_length: int | None, max_errors: int) -> tuple[str, bool]:
    """The report text and whether every line is good (lines dropped for length are reported, not bad)."""
    bad = [r for r in results if r.error is not None and not isinstance(r.error, TooLongError)]
    too_long = [r for r in results if isinstance(r.error, TooLongError)]
    good = [r.sample for r in results if r.sample is not None]
    lines = [f"lines: {len(results)} ({len(good)} ok, {len(bad)} bad, {len(too_long)} over --max_length)"]
    if bad:
        lines.append(f"errors ({len(bad)}):")
        lines += [f"  {r.error}" for r in bad[:max_errors]]
        if len(bad) > max_errors:
            lines.append(f"  ... and {len(bad) - max_errors} more (--max_errors)")
    if too_long:
        lines.append(f"over --max_length {max_length}, dropped ({len(too_long)}):")
        lines += [f"  {r.error}" for r in too_long[:max_errors]]
    truncated = [s for s in good if s.truncated]
    if truncated:
        lines.append(f"over --max_length {max_length}, truncated ({len(truncated)}):")
        lines += [f"  {s.source}:{s.line}" for s in truncated[:max_errors]]
    if good:
        counts = Counter(modality(s) for s in good)
        n_images = sum(len(s.image_grid_thw) for s in good if s.image_grid_thw is not None)
        n_videos = sum(len(s.video_grid_thw) for s in good if s.video_grid_thw is not None)
        lines.append("modalities: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                     + f" ({n_images} images, {n_videos} videos)")
        lengths = [s.length for s in good]
        trained = sum(sum(1 for t in s.labels if t != IGNORE_INDEX) for s in good)
        lines.append(f"tokens: {sum(lengths):,} in all, {trained:,} trained; per sample min {min(lengths)}, "
                     f"median {statistics.median(lengths):g}, max {max(lengths)}")
        lines.append("token lengths:")
        lines += _histogram(lengths)
    return "\n".join(lines), not bad
