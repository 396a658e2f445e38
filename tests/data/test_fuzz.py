"""`vlft data check` on malformed lines (fuzz_corpus.py): each line either encodes (exactly as its valid line
when the change means nothing) or is reported as `file:line: field: problem` at its own line; never a
traceback, never an exit code but 0 (all good) or 1 (bad lines). And no bad line is ever swapped for another.

The CLI runs in-process (`main([...])`) with the tiny model's processor loaded once for the module; a few
lines also go through the real console script.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data.fuzz_corpus import Variant, build_corpus, good_line, png_header, write_media
from vlft.cli.main import main

TINY = "vlft/tiny-qwen3-vl"
FIELD = re.compile(r"[^\s:]+: ")
CORPUS = build_corpus(seed=0)
BY_NAME = {v.name: v for v in CORPUS}


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """The media the corpus names; the tiny model built; its processor loaded (and its files hashed for the
    cache key) once for every CLI call here, not once per call (2 s and 60 ms)."""
    import vlft.data.cache as cache
    import vlft.data.pipeline as pipeline

    d = tmp_path_factory.mktemp("fuzz")
    write_media(d)
    tiny_model_dir("qwen3_vl")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "load_processor", functools.lru_cache(maxsize=None)(pipeline.load_processor))
        patch.setattr(cache, "processor_digest", functools.lru_cache(maxsize=None)(cache.processor_digest))
        yield d


def line_bytes(variant: Variant, d: Path) -> bytes:
    uri = "data:image/png;base64," + base64.b64encode(png_header(30_000, 30_000)).decode()
    return variant.line.replace(b"@DIR@", str(d).encode()).replace(b"@BOMB_URI@", uri.encode())


def write_dataset(d: Path, name: str, lines: list[bytes]) -> Path:
    path = d / f"{name}.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def placed(variant: Variant, index: int, d: Path) -> tuple[Path, int, int]:
    """The variant's file: good lines (and blank ones) before and after it at seeded places.
    Returns (path, the variant's line number, the number of non-blank lines)."""
    rng = random.Random(index)
    before = [good_line(k) for k in range(rng.randint(0, 3))]
    before = [line for good in before for line in ([good, b""] if rng.random() < 0.3 else [good])]
    after = [good_line(10 + k) for k in range(rng.randint(0, 1))]
    lines = before + [line_bytes(variant, d)] + after
    return write_dataset(d, f"{index:03d}", lines), len(before) + 1, sum(1 for x in lines if x.strip())


def check(path: Path, capsys, *extra: str) -> tuple[int, str]:
    code = main(["data", "check", "--model", TINY, "--dataset", str(path), "--load_from_cache_file", "false",
                 "--max_errors", "1000", *extra])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert code in (0, 1), f"exit {code}: {err}"
    return code, out


def encode(path: Path, out: Path, capsys, *extra: str) -> tuple[int, list[dict]]:
    code = main(["data", "encode", "--model", TINY, "--dataset", str(path), "--output", str(out),
                 "--load_from_cache_file", "false", *extra])
    capsys.readouterr()
    return code, [json.loads(line) for line in open(out, encoding="utf-8")]


def encoding(item: dict) -> dict:
    return {k: v for k, v in item.items() if k not in ("source", "line")}


@pytest.fixture(scope="module")
def base_encodings(fuzz_dir):
    """base name -> its valid line's encoding (filled on first use)."""
    return {}


@pytest.mark.parametrize("index", range(len(CORPUS)), ids=[v.name for v in CORPUS])
def test_variant(index, fuzz_dir, base_encodings, capsys):
    variant = CORPUS[index]
    path, lineno, n_lines = placed(variant, index, fuzz_dir)
    code, out = check(path, capsys)
    errors = [line.strip() for line in out.splitlines() if line.startswith(f"  {path}:")]
    if code == 0:
        assert variant.expect in ("same", "ok", "any"), f"{variant.name} was accepted:\n{out}"
        assert not errors and f"lines: {n_lines} ({n_lines} ok, 0 bad" in out, out
    else:
        assert variant.expect in ("error", "any"), f"{variant.name} was refused:\n{out}"
        assert len(errors) == 1 and f"({n_lines - 1} ok, 1 bad" in out, out
        place = f"{path}:{lineno}: "
        assert errors[0].startswith(place), f"expected {place!r}, got {errors[0]!r}"
        message = errors[0][len(place):]
        if variant.field:
            assert message.startswith(f"{variant.field}: "), message
        elif variant.field == "":  # a line-level problem: no `field: ` (a field path has no spaces) in front
            assert not FIELD.match(message), message
        if variant.problem:
            assert variant.problem in message, message
    if code == 0 and (variant.expect == "same" or variant.text):
        only = write_dataset(fuzz_dir, f"{index:03d}-alone", [line_bytes(variant, fuzz_dir)])
        _, [item] = encode(only, fuzz_dir / f"{index:03d}-alone.out", capsys)
        if variant.text:
            assert variant.text in item["text"]
        if variant.expect == "same":
            if variant.base not in base_encodings:
                from tests.data.fuzz_corpus import BASES, dumps

                valid = write_dataset(fuzz_dir, f"base-{variant.base}", [dumps(BASES[variant.base])])
                _, [base_item] = encode(valid, fuzz_dir / f"base-{variant.base}.out", capsys)
                base_encodings[variant.base] = encoding(base_item)
            assert encoding(item) == base_encodings[variant.base]


def error_variants() -> list[Variant]:
    return [v for v in CORPUS if v.expect == "error"]


def mixed_file(d: Path) -> tuple[Path, dict[int, int], dict[int, Variant]]:
    """Every error variant, each between good lines; returns (path, {line: good k}, {line: variant})."""
    lines, good, bad = [], {}, {}
    for k, variant in enumerate(error_variants()):
        good[len(lines) + 1] = k
        lines.append(good_line(k))
        bad[len(lines) + 1] = variant
        lines.append(line_bytes(variant, d))
    good[len(lines) + 1] = len(bad)
    lines.append(good_line(len(bad)))
    return write_dataset(d, "mixed", lines), good, bad


def test_no_bad_line_is_swapped_for_another(fuzz_dir, capsys):
    path, good, bad = mixed_file(fuzz_dir)
    code, items = encode(path, fuzz_dir / "mixed-strict.out", capsys)
    assert code == 1
    assert [item["line"] for item in items] == sorted([*good, *bad])
    for item in items:
        if item["line"] in bad:
            assert item["error"].startswith(f"{path}:{item['line']}: "), item["error"]
        else:
            assert f"good line #{good[item['line']]}:" in item["text"]

    code, items = encode(path, fuzz_dir / "mixed-lenient.out", capsys, "--strict", "false")
    assert code == 0
    assert [(item["line"], item["text"].count("good line #")) for item in items] == [(n, 1) for n in good]
    assert [item["text"].split("good line #")[1].split(":")[0] for item in items] == [str(k) for k in good.values()]


def test_check_lists_every_skipped_line_when_not_strict(fuzz_dir, capsys):
    path, good, bad = mixed_file(fuzz_dir)
    code, out = check(path, capsys, "--strict", "false")
    assert code == 0
    assert f"lines: {len(good) + len(bad)} ({len(good)} ok, {len(bad)} bad" in out
    listed = out.split(f"skipped {len(bad)} bad line(s) (--strict false):\n")[1].splitlines()
    assert [line.split(": ")[0].rsplit(":", 1)[1] for line in listed] == [str(n) for n in bad]


@pytest.mark.slow
def test_sft_skips_every_bad_variant_and_trains_on_the_good_lines(fuzz_dir, tmp_path, caplog):
    """The whole corpus through `vlft sft --strict false`: each bad line listed in skipped_lines.jsonl at
    its own line, the good lines trained on (one optimizer step), no traceback."""
    from vlft.cli.main import main

    path, good, bad = mixed_file(fuzz_dir)
    assert main(["sft", "--model", TINY, "--dataset", str(path), "--strict", "false", "--max_steps", "1",
                 "--packing", "true", "--max_length", "2048", "--report_to", "none",
                 "--output_dir", str(tmp_path / "out")]) == 0
    [run_dir] = (tmp_path / "out").iterdir()
    skipped = [json.loads(line) for line in open(run_dir / "skipped_lines.jsonl")]
    assert [r["line"] for r in skipped] == sorted(bad)
    assert all(r["error"].startswith(f"{path}:{r['line']}: ") for r in skipped)
    assert (run_dir / "checkpoint-1" / "adapter_model.safetensors").is_file()


NASTY = ["nested-10k-lists", "text-not-utf8", "image-bomb-png", "video-random-bytes", "box-nan",
         "unicode-lone-surrogate-high", "control-token-image_pad", "unicode-surrogate-in-key", "image-very-long-path"]


@pytest.mark.slow
def test_a_handful_through_the_console_script(fuzz_dir):
    lines, expected = [], {}
    for name in NASTY:
        lines.append(good_line(len(lines)))
        expected[len(lines) + 1] = BY_NAME[name]
        lines.append(line_bytes(BY_NAME[name], fuzz_dir))
    path = write_dataset(fuzz_dir, "nasty", lines)
    exe = Path(sys.executable).with_name("vlft")
    result = subprocess.run([str(exe), "data", "check", "--model", TINY, "--dataset", str(path)], capture_output=True,
                            text=True, env=os.environ.copy(), timeout=300, errors="backslashreplace")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert f"({len(NASTY)} ok, {len(NASTY)} bad" in result.stdout
    for lineno, variant in expected.items():
        place = f"  {path}:{lineno}: " + (f"{variant.field}: " if variant.field else "")
        assert place in result.stdout, f"{place!r} not in\n{result.stdout}"


def test_a_million_character_text_has_a_clear_outcome(fuzz_dir, capsys):
    words = random.Random(0).choices(["alpha", "beta", "gamma", "δέλτα", "数据", "🙂"], k=200_000)
    huge = json.dumps({"messages": [{"role": "user", "content": " ".join(words)[:1_000_000]},
                                    {"role": "assistant", "content": "Done."}]}, ensure_ascii=False).encode()
    path = write_dataset(fuzz_dir, "huge", [good_line(0), huge])
    code, out = check(path, capsys)  # no --max_length: it encodes
    assert code == 0 and "lines: 2 (2 ok, 0 bad, 0 over --max_length)" in out
    code, out = check(path, capsys, "--max_length", "512")  # the default strategy drops it, and says so
    assert code == 0 and "lines: 2 (1 ok, 0 bad, 1 over --max_length)" in out
    assert f"over --max_length 512, dropped (1):\n  {path}:2: sample is " in out
    # left would cut into the (only) question, right would keep none of the answer: both refuse
    code, out = check(path, capsys, "--max_length", "512", "--truncation_strategy", "left")
    assert code == 1 and f"  {path}:2: sample is " in out and "would cut into the question" in out
    code, out = check(path, capsys, "--max_length", "512", "--truncation_strategy", "right")
    assert code == 1 and f"  {path}:2: sample is " in out and "no trained tokens left" in out
    code, out = check(path, capsys, "--max_length", "512", "--truncation_strategy", "error")
    assert code == 1 and f"  {path}:2: sample is " in out and "over --max_length 512" in out
