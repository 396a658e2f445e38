"""From arguments to encoded samples: resolve the model, build the encoder, read every dataset line,
encode each once (in worker processes if asked), and cache the result."""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from pathlib import Path

from vlft.arguments import DatasetArguments, ModelArguments, TemplateArguments
from vlft.data.cache import EncodingCache, cache_key
from vlft.data.encode import EncodedSample, Encoder, without_pixels
from vlft.data.formats import rename_columns, to_sample
from vlft.data.loader import RawRow, load_dataset_rows
from vlft.data.new_tokens import with_new_special_tokens
from vlft.data.settings import encode_settings
from vlft.data.template import check_agent_template, load_template
from vlft.errors import DataError, VlftError
from vlft.families import detect_family
from vlft.families.base import Family
from vlft.model.hub import resolve_model_dir
from vlft.model.loading import load_processor
from vlft.paths import cache_root


@dataclass
class EncodeResult:
    """The outcome for one dataset line: its encoding, or the error that names what is wrong."""

    source: str
    line: int
    sample: EncodedSample | None = None
    error: DataError | None = None


def build_encoder(args: ModelArguments | TemplateArguments) -> tuple[Encoder, Path, Family]:
    """The encoder for the model the arguments name (downloading a hub id if needed)."""
    root = cache_root(args.cache_dir)
    if getattr(args, "model_dir", None):
        model_dir = Path(args.model_dir)
    else:
        model_dir = resolve_model_dir(args.model, use_hf=args.use_hf, cache_root=root, hub_token=args.hub_token,
                                      revision=args.model_revision)
    family = detect_family(model_dir, args.model_type)
    template = load_template(args.template or family.template)
    check_agent_template(template, args.agent_template)
    processor = load_processor(model_dir)
    settings = encode_settings(args, family)
    processor = with_new_special_tokens(processor, settings.new_special_tokens,  # saved in checkpoints
                                        family.tokenizer.token_names)
    try:
        encoder = Encoder(family, template, processor.tokenizer, processor.image_processor,
                          getattr(processor, "video_processor", None), settings,
                          chat_template=getattr(processor, "chat_template", None), processor=processor)
    except VlftError as e:  # a render hook that does not fit the model dir's own chat template
        raise VlftError(f"{model_dir}: chat template: {e}") from None
    return encoder, model_dir, family


def read_rows(args: DatasetArguments, specs: list[str], root: Path) -> list[RawRow]:
    """Every row of every spec, in order."""
    rows: list[RawRow] = []
    for spec in specs:
        rows += load_dataset_rows(spec, seed=args.seed, use_hf=getattr(args, "use_hf", False), cache_root=root,
                                  dataset_dir=args.dataset_dir, identity=args.identity)
    return rows


def encode_row(encoder: Encoder, raw: RawRow, columns: dict | None, keep_pixels: bool = True) -> EncodeResult:
    """Encode one raw row; every DataError is kept, placed at the row's file and line. Without
    `keep_pixels` the result holds ids and grids only (`without_pixels`)."""
    result = EncodeResult(raw.source, raw.line)
    if raw.error is not None:
        result.error = raw.error.at(raw.source, raw.line)
        return result
    try:
        sample = to_sample(rename_columns(raw.row, columns), source=raw.source, line=raw.line,
                           base_dir=raw.base_dir)
        result.sample = encoder.encode(sample, pixels=keep_pixels)
        if not keep_pixels:
            result.sample = without_pixels(result.sample, sample)
    except DataError as e:
        result.error = e.at(raw.source, raw.line)
    return result


_worker_state: tuple[Encoder, dict | None, bool] | None = None


def _init_worker(encoder: Encoder, columns: dict | None, keep_pixels: bool) -> None:
    global _worker_state
    import torch

    torch.set_num_threads(1)  # one process per core already
    _worker_state = (encoder, columns, keep_pixels)


def _encode_in_worker(raw: RawRow) -> EncodeResult:
    encoder, columns, keep_pixels = _worker_state
    return encode_row(encoder, raw, columns, keep_pixels)


def encode_rows(encoder: Encoder, rows: list[RawRow], columns: dict | None, num_proc: int,
                keep_pixels: bool = True) -> list[EncodeResult]:
    """Encode all rows in order, in `num_proc` processes."""
    if num_proc <= 1 or len(rows) < 2:
        return [encode_row(encoder, raw, columns, keep_pixels) for raw in rows]
    context = multiprocessing.get_context("fork")
    with context.Pool(num_proc, initializer=_init_worker, initargs=(encoder, columns, keep_pixels)) as pool:
        return pool.map(_encode_in_worker, rows, chunksize=max(1, len(rows) // (num_proc * 8)))


def encode_dataset(args, encoder: Encoder, model_dir: Path, specs: list[str],
                   keep_pixels: bool = True) -> list[EncodeResult]:
    """Encode every line of `specs`, reusing a cached encoding when data, model and settings are unchanged.

    `keep_pixels=False` keeps ids, labels and grids only (what training and `vlft data check` need); the
    pixel values are made again when a training batch is fetched (`Encoder.with_pixels`)."""
    root = cache_root(args.cache_dir)
    rows = read_rows(args, specs, root)
    cache = EncodingCache(root / "encoded", cache_key(rows, encoder, model_dir, args.columns, keep_pixels))
    if args.load_from_cache_file:
        cached = cache.load()
        if cached is not None:
            return cached
    results = encode_rows(encoder, rows, args.columns, args.dataset_num_proc, keep_pixels)
    cache.save(results)
    return results
