"""Inputs that must never pass for good data (issue 20): integers too long for Python, media changed behind
the encoding cache, empty dataset files, and file names that would forge a line of the report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO
from vlft.cli.main import main
from vlft.data.cache import media_file_state, media_refs
from vlft.data.loader import escape_controls, parse_json, read_local
from vlft.errors import DataError

MODEL = "vlft/tiny-qwen3-vl"
BIG = "7" * 5000  # over Python's default limit of 4300 digits for int("...")
LONG_INT = "an integer of 5000 digits, over Python's 4300-digit limit"


def text_row(query: str = "Hi") -> dict:
    return {"messages": [{"role": "user", "content": query}, {"role": "assistant", "content": "Hello"}]}


def image_row(image: str) -> dict:
    return {"messages": [{"role": "user", "content": "<image>Hi"}, {"role": "assistant", "content": "Hello"}],
            "images": [image]}


def check(dataset: Path, *extra: str) -> int:
    return main(["data", "check", "--model", MODEL, "--dataset", str(dataset), *extra])


def report_lines(out: str) -> list[str]:
    """The lines of a `vlft data check` report (a library may log a line to stdout before it)."""
    lines = out.splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith("lines: ")):]


# ---------------------------------------------------------------------------------------------------
# 1. An integer over Python's digit limit is an error on its own line; the other lines load


def test_long_integer_in_jsonl_is_an_error_on_its_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([
        json.dumps(text_row("one")),
        json.dumps(text_row("two"))[:-1] + f', "unused": {BIG}}}',
        '{"messages": [{"role": "user", "content": "x", "loss": -' + BIG + "}]}",
        json.dumps(text_row("four")),
    ]) + "\n")
    rows = list(read_local(path))
    assert [r.line for r in rows] == [1, 2, 3, 4]
    assert [str(r.error) if r.error else None for r in rows] == [
        None, f"unused: {LONG_INT}", f"messages[0].loss: {LONG_INT}", None]
    assert rows[1].row is None and rows[3].row == text_row("four")
    assert str(parse_json(BIG)[1]) == LONG_INT


def test_long_integer_in_json_array_and_csv_fails_only_its_row(tmp_path):
    json_path = tmp_path / "d.json"
    json_path.write_text(f'[{json.dumps(text_row("a"))}, {{"objects": {{"bbox": [[{BIG}]]}}}}, '
                         f'{json.dumps(text_row("c"))}]')
    rows = list(read_local(json_path))
    assert [(r.line, str(r.error) if r.error else r.row) for r in rows] == [
        (1, text_row("a")), (2, f"objects.bbox[0][0]: {LONG_INT}"), (3, text_row("c"))]
    csv_path = tmp_path / "d.csv"
    csv_path.write_text(f'query,response,extra\nq1,r1,[1]\nq2,r2,"[{BIG}]"\n')
    rows = list(read_local(csv_path))
    assert [(r.line, str(r.error) if r.error else r.row) for r in rows] == [
        (2, {"query": "q1", "response": "r1", "extra": [1]}), (3, f"extra[0]: {LONG_INT}")]


def test_check_console_script_reports_a_long_integer_at_its_line(tmp_path, vlft_cache):
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps(text_row())[:-1] + f', "id": {BIG}}}\n' + json.dumps(text_row()) + "\n")
    exe = Path(sys.executable).with_name("vlft")
    result = subprocess.run([str(exe), "data", "check", "--model", MODEL, "--dataset", str(path)], cwd=REPO,
                            capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert f"  {path}:1: id: {LONG_INT}" in result.stdout.splitlines()
    assert "lines: 2 (1 ok, 1 bad" in result.stdout


# ---------------------------------------------------------------------------------------------------
# 2. The encoding cache is keyed on the local media files, not only on the rows naming them


def test_media_refs_finds_every_kind_of_media_field():
    row = {"messages": [{"role": "user", "content": [
        {"type": "image", "image": "a.png"}, {"type": "text", "text": "not.png"},
        {"type": "image_url", "image_url": {"url": "b.png"}}, {"type": "video", "video": "v.mp4"}]}],
        "images": ["c.png", {"path": "d.png", "bytes": None}], "video": "w.mp4", "response": "e.png"}
    assert media_refs(row) == ["a.png", "b.png", "v.mp4", "c.png", "d.png", "w.mp4"]


def test_media_file_state_follows_size_content_and_deletion(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"x" * 10)
    before = media_file_state("a.png", tmp_path)
    assert media_file_state(str(image), None) == before
    stat = image.stat()
    image.write_bytes(b"y" * 10)  # same size, same mtime: only the content tells
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert media_file_state("a.png", tmp_path) != before
    image.unlink()
    assert "missing" in media_file_state("a.png", tmp_path)
    assert media_file_state("https://example.com/a.png", tmp_path) == ""


def test_check_sees_a_changed_or_deleted_image_through_the_cache(tmp_path, media_dir, vlft_cache, capsys,
                                                                 monkeypatch):
    import vlft.data.pipeline as pipeline

    shutil.copy(media_dir / "a.png", tmp_path / "img.png")
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(image_row("img.png")) + "\n" + json.dumps(text_row()) + "\n")
    assert check(path) == 0
    first = report_lines(capsys.readouterr().out)
    assert first[0] == "lines: 2 (2 ok, 0 bad, 0 over --max_length)"

    encode_rows = pipeline.encode_rows

    def must_not_encode(*args, **kwargs):
        raise AssertionError("encoded again although nothing changed")

    monkeypatch.setattr(pipeline, "encode_rows", must_not_encode)
    assert check(path) == 0 and report_lines(capsys.readouterr().out) == first  # from the cache

    monkeypatch.setattr(pipeline, "encode_rows", encode_rows)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "img.png")
    assert check(path) == 0
    changed = report_lines(capsys.readouterr().out)
    assert changed[0] == first[0] and changed != first  # fewer image tokens

    (tmp_path / "img.png").unlink()
    assert check(path) == 1
    lines = report_lines(capsys.readouterr().out)
    assert lines[:2] == ["lines: 2 (1 ok, 1 bad, 0 over --max_length)", "errors (1):"]
    assert lines[2].startswith(f"  {path}:1: images[0]: file not found: {tmp_path / 'img.png'}")


# ---------------------------------------------------------------------------------------------------
# 3. A dataset file with no rows is an error, not a dataset of 0 lines


@pytest.mark.parametrize("name, content", [
    ("empty.jsonl", ""), ("blank.jsonl", "\n  \n\t\r\n"), ("empty.json", "[]"), ("header.csv", "query,response\n")])
def test_reading_a_file_without_rows_fails(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as error:
        list(read_local(path))
    assert str(error.value) == f"{path}: holds no rows (nothing to check or train on)"


@pytest.mark.parametrize("content", ["", "\n\n   \n"])
@pytest.mark.parametrize("command", [
    ["data", "check"], ["data", "encode", "--output", "OUT"],
    ["sft", "--max_steps", "1", "--report_to", "none", "--output_dir", "OUT"]])
def test_commands_refuse_a_dataset_file_without_rows(tmp_path, vlft_cache, capsys, command, content):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    argv = [arg.replace("OUT", str(tmp_path / "out")) for arg in command]
    assert main([*argv, "--model", MODEL, "--dataset", str(path)]) == 2
    captured = capsys.readouterr()
    assert f"{path}: holds no rows (nothing to check or train on)" in captured.err
    assert "0 lines" not in captured.out


# ---------------------------------------------------------------------------------------------------
# 4. A file name (or a media path) with a newline cannot forge a line of the report


def test_newline_in_the_dataset_name_is_escaped_in_the_report(tmp_path, vlft_cache, capsys):
    path = tmp_path / "a\nb.jsonl"
    path.write_text('{"messages": []}\n' + json.dumps(text_row()) + "\n")
    shown = str(tmp_path / "a\\nb.jsonl")
    assert escape_controls(str(path)) == shown
    assert check(path) == 1
    lines = report_lines(capsys.readouterr().out)
    assert lines[:3] == ["lines: 2 (1 ok, 1 bad, 0 over --max_length)", "errors (1):",
                         f"  {shown}:1: messages: expected a non-empty list of messages"]
    assert all(line.startswith(("lines:", "errors", "modalities:", "tokens:", "token lengths:", "  "))
               for line in lines), lines

    assert main(["data", "encode", "--model", MODEL, "--dataset", str(path), "--output",
                 str(tmp_path / "enc.jsonl")]) == 1
    assert capsys.readouterr().err.splitlines() == [f"{shown}:1: messages: expected a non-empty list of messages"]

    path.write_text("")
    assert check(path) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"vlft data: error: {shown}: holds no rows (nothing to check or train on)"]


def test_newline_in_a_media_path_is_escaped_in_the_report(tmp_path, vlft_cache, capsys):
    path = tmp_path / "d.jsonl"
    forged = "x.png\nlines: 9 (9 ok, 0 bad"
    path.write_text(json.dumps(image_row(forged)) + "\n" + json.dumps(text_row()) + "\n")
    assert check(path) == 1
    lines = report_lines(capsys.readouterr().out)
    assert lines[:2] == ["lines: 2 (1 ok, 1 bad, 0 over --max_length)", "errors (1):"]
    assert lines[2].startswith(f"  {path}:1: images[0]: file not found: {tmp_path}/x.png\\nlines: 9 (9 ok, 0 bad")
    assert [line for line in lines if line.startswith("lines:")] == [lines[0]]
