"""Shared fixtures: built-in tiny models in a per-session cache, small images and videos made here.

Nothing is fetched from a hub: HF_HUB_OFFLINE is set before transformers is imported.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist each worker gets its share of the cores. torch takes one thread per core by default; with two
# workers on two cores (and the processes CLI tests start) the spinning OpenMP threads made the heaviest tests run
# several times slower than alone (245 s against 28 s). Processes the tests start inherit the setting.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _THREADS = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
    import torch  # noqa: E402

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

import functools  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from vlft.families import FAMILIES as _REGISTRY  # noqa: E402
from vlft.model.tiny import TINY_PREFIX  # noqa: E402

FAMILIES = list(_REGISTRY)
# Families that encode differently: one per set of official files (template, processor settings, tokenizer);
# Qwen3.5-MoE shares Qwen3.5's.
ENCODING_FAMILIES = list({f.official_files: name for name, f in reversed(_REGISTRY.items())}.values())[::-1]
TINY_NAMES = {name: TINY_PREFIX + family.tiny_name for name, family in _REGISTRY.items()}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def vlft_cache(tmp_path_factory) -> Path:
    """A cache dir shared by the whole session (tiny models are built once into it): under pytest-xdist, by all
    its workers (one builds a tiny model under a file lock while the others wait; encodings are cached by content
    and written atomically), so each tiny model is built once per run rather than once per worker."""
    if os.environ.get("VLFT_TEST_CACHE"):
        path = Path(os.environ["VLFT_TEST_CACHE"])
    elif os.environ.get("PYTEST_XDIST_WORKER"):
        path = tmp_path_factory.getbasetemp().parent / "vlft-cache"  # the run's dir, above the workers' own
        path.mkdir(exist_ok=True)
    else:
        path = tmp_path_factory.mktemp("vlft-cache")
    os.environ["VLFT_CACHE_HOME"] = str(path)  # CLI subprocesses started by tests find it too
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(vlft_cache):
    """family -> the built-in tiny model's dir (built on first use)."""
    from vlft.model.tiny import ensure_tiny_model

    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = ensure_tiny_model(family, vlft_cache)
        return cache[family]

    return get


@pytest.fixture(scope="session")
def processor_of(tiny_model_dir):
    """family -> the HF processor loaded with AutoProcessor from the tiny model dir."""
    from transformers import AutoProcessor

    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = AutoProcessor.from_pretrained(tiny_model_dir(family))
        return cache[family]

    return get


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
PROCESSORS_KEPT = 4


def files_state(directory: Path) -> tuple:
    """Name, size and modification time of each file in `directory` but the weights (a processor reads none)."""
    files = [p for p in directory.iterdir() if p.is_file() and not p.name.endswith(WEIGHT_SUFFIXES)]
    return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))


@pytest.fixture(scope="session", autouse=True)
def processors_loaded_once():
    """`AutoProcessor.from_pretrained(DIR)` (how vlft loads every processor: vlft/model/loading.py) loads a local
    dir's processor once per test process, not at every command a test runs here: transformers parses the real
    vocabularies' tokenizer.json three times a load (2 s for Qwen3-VL's, 4 s for Qwen3.5's on the CI's CPU), and
    a run makes ~130 loads, most of them of the tiny models' dirs. The dir and its files (names, sizes and times,
    weights aside) key the cache, so a test that writes, changes or removes a file there gets a fresh load; a call
    with other arguments, or one that fails, is never cached. One object serves every caller, as `processor_of`'s
    do: vlft reads a processor's parts and saves them, and never changes them. The last PROCESSORS_KEPT loaded
    are kept (130-290 MB each)."""
    from collections import OrderedDict

    from transformers import AutoProcessor

    load = AutoProcessor.from_pretrained.__func__
    loaded: OrderedDict[tuple, object] = OrderedDict()

    def from_pretrained(cls, path, *args, **kwargs):
        directory = Path(path)
        if args or kwargs or not directory.is_dir():
            return load(cls, path, *args, **kwargs)
        key = (str(directory.resolve()), files_state(directory))
        if key not in loaded:
            loaded[key] = load(cls, path)
            while len(loaded) > PROCESSORS_KEPT:
                loaded.popitem(last=False)
        loaded.move_to_end(key)
        return loaded[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AutoProcessor, "from_pretrained", classmethod(from_pretrained))
        yield


def write_video(path: Path, frames: int = 16, fps: int = 8, size=(64, 48)) -> Path:
    """A small H.264 mp4 of a bar moving right, written with PyAV."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            frame = np.full((size[1], size[0], 3), 240, np.uint8)
            frame[:, (i * 3) % size[0]:(i * 3) % size[0] + 8] = (30, 30, 200)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """Images a.png (96x64 gradient), b.png (50x70), c.jpg (120x90) and video v.mp4 (16 frames, 8 fps)."""
    d = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(d / "a.png")
    Image.fromarray(rng.integers(0, 255, (70, 50, 3), dtype=np.uint8)).save(d / "b.png")
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(d / "c.jpg")
    write_video(d / "v.mp4")
    return d


NEW_TOKENS = ("<step>", "<done>")  # the `checkpoint` run's --new_special_tokens (not in the example data)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, vlft_cache) -> Path:
    """A LoRA checkpoint of the tiny Qwen3-VL, trained 2 steps on the example data by `vlft sft` (30% held out, so
    the run writes val_dataset.jsonl), with ms-swift's --new_special_tokens NEW_TOKENS. Under pytest-xdist one worker
    trains it (under a file lock) and every worker gets a copy of the run dir of its own (tests write into and beside
    the checkpoint)."""
    import shutil

    from filelock import FileLock

    from vlft.cli.main import main

    def train(output_dir: Path) -> None:
        assert main(["sft", "--model", "vlft/tiny-qwen3-vl", "--dataset", str(REPO / "examples/data/train.jsonl"),
                     "--split_dataset_ratio", "0.3", "--max_steps", "2", "--learning_rate", "1e-2",
                     "--image_max_token_num", "16", "--image_min_token_num", "4", "--report_to", "none",
                     "--new_special_tokens", *NEW_TOKENS, "--output_dir", str(output_dir)]) == 0

    out = tmp_path_factory.mktemp("run")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = tmp_path_factory.getbasetemp().parent / "checkpoint-run"  # the run's dir, above the workers' own
        with FileLock(f"{shared}.lock"):
            if not (shared / "trained").is_file():
                shutil.rmtree(shared, ignore_errors=True)
                train(shared / "out")
                (shared / "trained").touch()
        shutil.copytree(shared / "out", out, dirs_exist_ok=True)
    else:
        train(out)
    return sorted(next(out.iterdir()).glob("checkpoint-*"))[-1]


@pytest.fixture
def lora_checkpoint(tiny_model_dir, vlft_cache, tmp_path, monkeypatch):
    """(family, freeze_vit, args_json) -> a LoRA checkpoint dir as `vlft sft` writes it (no training run), lora_B
    non-zero (tests/export, tests/megatron)."""
    import json
    from types import SimpleNamespace

    import torch
    from transformers import AutoProcessor

    from vlft.families import detect_family
    from vlft.train.model import load_model
    from vlft.train.tuners import prepare_trainable

    monkeypatch.setenv("VLFT_CACHE_HOME", str(vlft_cache))  # `vlft/tiny-*` in args.json resolves to the fixture

    def build(family="qwen3_vl", freeze_vit=True, args_json=True):
        model_dir = tiny_model_dir(family)
        args = SimpleNamespace(train_type="lora", freeze_vit=freeze_vit, freeze_aligner=True, freeze_llm=False,
                               target_modules=["all-linear"], lora_rank=4, lora_alpha=8, lora_dropout=0.0,
                               use_dora=False, use_rslora=False, modules_to_save=[], freeze_router=True)
        torch.manual_seed(0)
        model = prepare_trainable(load_model(model_dir, torch.float32, "sdpa"), detect_family(model_dir), args)
        for name, param in model.named_parameters():  # LoRA B starts at zero: a merge of it would be a no-op
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.05)
        ckpt = tmp_path / f"{family}-vit{not freeze_vit}" / "v0-20260101-000000" / "checkpoint-1"
        model.save_pretrained(ckpt)
        AutoProcessor.from_pretrained(model_dir).save_pretrained(ckpt)
        if args_json:
            (ckpt / "args.json").write_text(json.dumps({"model": TINY_NAMES[family], "train_type": "lora"}))
        return ckpt

    return build


# Without a GPU a launcher runs in this process through the console script's entry point (its torchrun and workers
# are processes of their own either way), which saves the imports of a launcher process; with one, every command
# is a process of its own (the environments the tests give hide or pick GPUs, which this process already saw).
VLFT = str(Path(sys.executable).with_name("vlft"))
IN_PROCESS = not torch.cuda.is_available()


@pytest.fixture
def vlft_console(capfd, monkeypatch):
    """(ARGV, ENV, CWD) -> (exit code, stdout + stderr) of the console script `VLFT ARGV` (ARGV[0] is VLFT) under
    ENV, run from CWD: in this process when IN_PROCESS (ENV in os.environ and CWD the working dir meanwhile;
    torchrun gets 600 s), else in a process of its own."""
    monkeypatch.setattr(subprocess, "call", functools.partial(subprocess.call, timeout=600))

    def run(argv: list[str], env: dict, cwd: Path) -> tuple[int, str]:
        assert argv[0] == VLFT
        if not IN_PROCESS:
            done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
            return done.returncode, done.stdout + done.stderr
        from vlft.cli.main import main

        with monkeypatch.context() as m:
            for key in set(os.environ) - set(env):
                m.delenv(key)
            for key, value in env.items():
                m.setenv(key, value)
            m.chdir(cwd)
            capfd.readouterr()
            code = main(argv[1:])
            out, err = capfd.readouterr()
        return code, out + err

    return run
