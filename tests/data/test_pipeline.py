"""The data pipeline from arguments: env variables as typed arguments, loss options, worker processes
and the encoding cache."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import REPO
from tests.data.test_encode_parity import make_encoder
from vlft.arguments import DataCheckArguments
from vlft.cli.parsing import parse_args
from vlft.data.encode import IGNORE_INDEX
from vlft.data.formats import to_sample
import vlft.data.pipeline as pipeline
from vlft.data.pipeline import build_encoder, encode_dataset
from vlft.data.settings import encode_settings
from vlft.families import get_family

EXAMPLES = REPO / "examples" / "data"


def test_env_variables_become_typed_arguments_and_flags_win():
    env = {"IMAGE_MAX_TOKEN_NUM": "1024", "VIDEO_MAX_TOKEN_NUM": "128", "FPS_MAX_FRAMES": "16", "USE_HF": "1",
           "MAX_PIXELS": ""}
    args = parse_args(DataCheckArguments, ["--model", "m", "--dataset", "d", "--fps_max_frames", "8"], "t", env)
    assert (args.image_max_token_num, args.video_max_token_num, args.fps_max_frames, args.use_hf) == (1024, 128, 8,
                                                                                                        True)
    assert args.max_pixels is None
    qwen3 = encode_settings(args, get_family("qwen3_vl"))
    assert qwen3.image_max_pixels == 1024 * 32 * 32 and qwen3.video.max_pixels == 128 * 32 * 32
    assert qwen3.video.max_frames == 8
    qwen25 = encode_settings(args, get_family("qwen2_5_vl"))
    assert qwen25.image_max_pixels == 1024 * 28 * 28
    explicit = parse_args(DataCheckArguments, ["--model", "m", "--dataset", "d", "--max_pixels", "5000"], "t", env)
    assert encode_settings(explicit, get_family("qwen3_vl")).image_max_pixels == 5000


def test_image_token_limit_changes_the_grid(tiny_model_dir, processor_of, media_dir):
    row = {"messages": [{"role": "user", "content": "<image>x"}, {"role": "assistant", "content": "y"}],
           "images": [str(media_dir / "c.jpg")]}
    small, _, _ = make_encoder("qwen3_vl", tiny_model_dir, processor_of, image_min_pixels=4 * 32 * 32,
                               image_max_pixels=4 * 32 * 32)
    grid = small.encode(to_sample(row)).image_grid_thw[0].tolist()
    assert grid[1] * grid[2] // 4 <= 4


MULTI_TURN = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"},
                           {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
                           {"role": "assistant", "content": "a2", "loss": True},
                           {"role": "user", "content": "q3"}, {"role": "assistant", "content": "a3"}]}


@pytest.mark.parametrize("loss_scale, expected", [
    ("default", ["a1<|im_end|>\n", "a2<|im_end|>\n", "a3<|im_end|>\n"]),
    ("last_round", ["a2<|im_end|>\n", "a3<|im_end|>\n"]),  # a2 has "loss": true
])
def test_loss_scale_and_per_message_loss(loss_scale, expected, tiny_model_dir, processor_of):
    encoder, _, processor = make_encoder("qwen3_vl", tiny_model_dir, processor_of, loss_scale=loss_scale)
    encoded = encoder.encode(to_sample(MULTI_TURN))
    runs, current = [], []
    for label in encoded.labels + [IGNORE_INDEX]:
        if label == IGNORE_INDEX:
            if current:
                runs.append(processor.tokenizer.decode(current))
            current = []
        else:
            current.append(label)
    assert runs == expected


def test_loss_false_and_loss_scale_all(tiny_model_dir, processor_of):
    row = json.loads(json.dumps(MULTI_TURN))
    row["messages"][2]["loss"] = False
    encoder, _, processor = make_encoder("qwen3_vl", tiny_model_dir, processor_of)
    labels = encoder.encode(to_sample(row)).labels
    assert "a1" not in processor.tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
    everything, _, _ = make_encoder("qwen3_vl", tiny_model_dir, processor_of, loss_scale="all")
    encoded = everything.encode(to_sample(MULTI_TURN))
    assert encoded.labels == encoded.input_ids


def _args(tmp_path, dataset, **extra):
    argv = ["--model", "vlft/tiny-qwen3-vl", "--dataset", str(dataset)]
    for key, value in extra.items():
        argv += [f"--{key}", str(value)]
    return parse_args(DataCheckArguments, argv, "t")


def test_worker_processes_give_the_same_encodings(tmp_path, vlft_cache):
    serial = _args(tmp_path, EXAMPLES / "train.jsonl", load_from_cache_file="false")
    parallel = _args(tmp_path, EXAMPLES / "train.jsonl", load_from_cache_file="false", dataset_num_proc=2)
    encoder, model_dir, _ = build_encoder(serial)
    one = encode_dataset(serial, encoder, model_dir, serial.dataset)
    two = encode_dataset(parallel, encoder, model_dir, parallel.dataset)
    assert [r.line for r in one] == [r.line for r in two]
    for a, b in zip(one, two):
        assert a.sample.input_ids == b.sample.input_ids and a.sample.labels == b.sample.labels
        if a.sample.pixel_values is not None:
            assert (a.sample.pixel_values == b.sample.pixel_values).all()


def test_cache_skips_encoding_until_something_changes(tmp_path, vlft_cache):
    data = tmp_path / "data"
    shutil.copytree(EXAMPLES, data)
    args = _args(tmp_path, data / "train.jsonl")
    encoder, model_dir, _ = build_encoder(args)
    first = encode_dataset(args, encoder, model_dir, args.dataset)
    assert all(r.error is None for r in first)
    # Nothing changed: a cached run encodes nothing.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "encode_rows", lambda *a, **k: pytest.fail("encoded again"))
        cached = encode_dataset(args, encoder, model_dir, args.dataset)
    assert [r.sample.input_ids for r in cached] == [r.sample.input_ids for r in first]
    # With the media gone, the cache no longer answers: the key holds each media file's state.
    shutil.rmtree(data / "images")
    for again in (args, _args(tmp_path, data / "train.jsonl", load_from_cache_file="false")):
        assert any(r.error is not None and "file not found" in str(r.error)
                   for r in encode_dataset(again, encoder, model_dir, again.dataset))
    # A changed row changes the key.
    lines = (data / "train.jsonl").read_text().splitlines()
    (data / "train.jsonl").write_text("\n".join(lines[:1]) + "\n")
    assert len(encode_dataset(args, encoder, model_dir, args.dataset)) == 1
