"""Training keeps ids and grids only and makes pixel values when a batch is fetched: the fetched samples
equal the fully encoded ones, the cache stays small, and media changed after encoding are caught."""

from __future__ import annotations

import shutil

import torch
from PIL import Image

from tests.conftest import REPO
from vlft.arguments import DataCheckArguments
from vlft.cli.parsing import parse_args
from vlft.data.dataset import PixelsOnFetch
from vlft.data.pipeline import build_encoder, encode_dataset
from vlft.errors import DataError

EXAMPLES = REPO / "examples" / "data"


def _encode(tmp_path, keep_pixels: bool):
    args = parse_args(DataCheckArguments, ["--model", "vlft/tiny-qwen3-vl", "--dataset", str(tmp_path / "train.jsonl"),
                                           "--image_max_token_num", "64", "--cache_dir", str(tmp_path / "cache")], "t")
    encoder, model_dir, _ = build_encoder(args)
    return encoder, encode_dataset(args, encoder, model_dir, args.dataset, keep_pixels=keep_pixels)


def test_fetched_samples_equal_full_encodings_and_the_cache_is_small(tmp_path, tiny_model_dir):
    shutil.copytree(EXAMPLES, tmp_path, dirs_exist_ok=True)
    encoder, full = _encode(tmp_path, keep_pixels=True)
    _, lean = _encode(tmp_path, keep_pixels=False)
    assert any(r.sample.pixel_values is not None for r in full)
    assert all(r.sample.pixel_values is None and r.sample.pixel_values_videos is None for r in lean)
    fetched = PixelsOnFetch([r.sample for r in lean], encoder)
    for index, result in enumerate(full):
        got, want = fetched[index], result.sample
        assert got.input_ids == want.input_ids and got.labels == want.labels
        for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
            a, b = getattr(got, key), getattr(want, key)
            assert (a is None and b is None) or torch.equal(a, b), key
    sizes = sorted(p.stat().st_size for p in (tmp_path / "cache" / "encoded").glob("*.pt"))
    assert len(sizes) == 2 and sizes[0] * 20 < sizes[1]  # ids and grids only, against pixel values too

    rows = PixelsOnFetch([[lean[0].sample, lean[1].sample]], encoder)  # a packed row
    assert [s.input_ids for s in rows[0]] == [full[0].sample.input_ids, full[1].sample.input_ids]


def test_media_changed_after_encoding_are_caught_at_fetch(tmp_path, tiny_model_dir):
    shutil.copytree(EXAMPLES, tmp_path, dirs_exist_ok=True)
    encoder, lean = _encode(tmp_path, keep_pixels=False)
    index = next(i for i, r in enumerate(lean) if r.sample.image_grid_thw is not None)
    image = tmp_path / lean[index].sample.sample.images[0]  # relative to the dataset file
    Image.new("RGB", (512, 384), "white").save(image)
    try:
        PixelsOnFetch([r.sample for r in lean], encoder)[index]
    except DataError as e:
        assert f":{lean[index].line}:" in str(e) and "changed since the dataset was encoded" in str(e)
    else:
        raise AssertionError("a changed image was not noticed")


class _ThreadsAtFetch:
    """An encoder stand-in whose 'pixels' are the number of torch threads at fetch time."""

    def with_pixels(self, sample):
        return torch.get_num_threads()


def test_workers_make_pixels_on_one_thread_and_the_main_process_is_untouched():
    from torch.utils.data import DataLoader

    torch.set_num_threads(2)
    dataset = PixelsOnFetch(["a", "b"], _ThreadsAtFetch())
    in_workers = [int(x) for x in DataLoader(dataset, batch_size=None, num_workers=1)]
    assert in_workers == [1, 1]
    assert dataset[0] == 2 and torch.get_num_threads() == 2
