"""`vlft data check`'s report and `vlft data encode`'s per-line JSON (a stable contract)."""

from __future__ import annotations

import hashlib
import json
import statistics
from collections import Counter
from pathlib import Path

import torch

from vlft.data.encode import IGNORE_INDEX, EncodedSample, TooLongError
from vlft.data.loader import escape_controls
from vlft.data.pipeline import EncodeResult

HISTOGRAM_EDGES = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of the float32, C-contiguous bytes of a tensor."""
    return hashlib.sha256(tensor.detach().to(torch.float32).contiguous().numpy().tobytes()).hexdigest()


def printable(text: str) -> str:
    """`text` writable as UTF-8: lone surrogates (a dataset's bad bytes quoted in a message) as \\udcXX."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def one_line(text: str) -> str:
    """`text` printable on one line of a report: a newline in a file name or a quoted value cannot start a line
    that looks like the report's own."""
    return printable(escape_controls(text))


def encoded_line(result: EncodeResult, tokenizer) -> dict:
    """One line of `vlft data encode` output: the encoding, or the error for a bad line."""
    source = printable(result.source)
    if result.sample is None:
        return {"source": source, "line": result.line, "error": printable(str(result.error))}
    s: EncodedSample = result.sample
    out = {"source": source, "line": result.line, "input_ids": s.input_ids, "labels": s.labels,
           "image_grid_thw": s.image_grid_thw.tolist() if s.image_grid_thw is not None else [],
           "video_grid_thw": s.video_grid_thw.tolist() if s.video_grid_thw is not None else [],
           "pixel_values_shape": list(s.pixel_values.shape) if s.pixel_values is not None else None,
           "pixel_values_sha256": tensor_sha256(s.pixel_values) if s.pixel_values is not None else None,
           "pixel_values_videos_shape": (list(s.pixel_values_videos.shape)
                                         if s.pixel_values_videos is not None else None),
           "pixel_values_videos_sha256": (tensor_sha256(s.pixel_values_videos)
                                          if s.pixel_values_videos is not None else None),
           "text": tokenizer.decode(s.input_ids, skip_special_tokens=False)}
    if s.loss_scale is not None:  # --loss_scale's weight of each token
        out["loss_scale"] = s.loss_scale
    if s.second_per_grid_ts is not None:
        out["second_per_grid_ts"] = s.second_per_grid_ts
    if s.truncated:
        out["truncated"] = True
        out["dropped"] = s.dropped
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


def bad_results(results: list[EncodeResult]) -> list[EncodeResult]:
    """The lines that failed to encode, lines only over --max_length (dropped, not bad) left out."""
    return [r for r in results if r.error is not None and not isinstance(r.error, TooLongError)]


def listed_errors(results: list[EncodeResult], max_listed: int, flag: str) -> list[str]:
    """`  file:line: field: problem` for the first `max_listed` results, and a line counting the rest."""
    lines = [f"  {one_line(str(r.error))}" for r in results[:max_listed]]
    if len(results) > max_listed:
        lines.append(f"  ... and {len(results) - max_listed} more ({flag})")
    return lines


def write_skipped_lines(path: Path, skipped: list[EncodeResult]) -> None:
    """One JSON object per skipped line: source, line, field, problem and the whole message."""
    with open(path, "w", encoding="utf-8") as f:
        for r in skipped:
            record = {"source": r.source, "line": r.line, "field": getattr(r.error, "field", None),
                      "problem": getattr(r.error, "problem", str(r.error)), "error": str(r.error)}
            f.write(json.dumps({k: printable(v) if isinstance(v, str) else v for k, v in record.items()},
                               ensure_ascii=False) + "\n")


def skipped_summary(skipped: list[EncodeResult], path: Path, max_listed: int) -> str:
    """The end-of-run note on lines skipped under --strict false."""
    return printable("\n".join([f"--strict false: skipped {len(skipped)} bad line(s), all listed in {path}:",
                                *listed_errors(skipped, max_listed, f"see {path.name}")]))


def check_report(results: list[EncodeResult], max_length: int | None, max_errors: int,
                 strict: bool = True) -> tuple[str, bool]:
    """The report text and whether the data passes: every line good (strict), or at least one line good and
    the bad ones listed as skipped (not strict). Lines dropped for length are reported, not bad."""
    bad = bad_results(results)
    too_long = [r for r in results if isinstance(r.error, TooLongError)]
    good = [r.sample for r in results if r.sample is not None]
    lines = [f"lines: {len(results)} ({len(good)} ok, {len(bad)} bad, {len(too_long)} over --max_length)"]
    if bad and strict:
        lines.append(f"errors ({len(bad)}):")
        lines += listed_errors(bad, max_errors, "--max_errors")
    if too_long:
        lines.append(f"over --max_length {max_length}, dropped ({len(too_long)}):")
        lines += [f"  {one_line(str(r.error))}" for r in too_long[:max_errors]]
    truncated = [s for s in good if s.truncated]
    if truncated:
        lines.append(f"over --max_length {max_length}, truncated ({len(truncated)}):")
        lines += [f"  {one_line(s.source)}:{s.line}: dropped {s.dropped}" for s in truncated[:max_errors]]
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
        weights = Counter(w for s in good if s.loss_scale is not None for w in s.loss_scale if w not in (0.0, 1.0))
        if weights:  # --loss_scale's weightings (loss_scale.py)
            lines.append("weighted tokens (--loss_scale): " + ", ".join(f"{n:,} at {w:g}" for w, n in
                                                                       sorted(weights.items())))
        lines.append("token lengths:")
        lines += _histogram(lengths)
    if bad and not strict:  # last, where the end of the run shows it
        lines.append(f"skipped {len(bad)} bad line(s) (--strict false):")
        lines += listed_errors(bad, max_errors, "--max_errors")
    if not good:
        lines.append("no usable lines")
    return printable("\n".join(lines)), (not bad) if strict else bool(good)
