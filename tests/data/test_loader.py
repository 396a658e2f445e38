"""`--dataset` specs, `#N` sampling, local files of every supported type, and the hub dataset registry.

No hub is reachable here: hub downloads are replaced by monkeypatched third-party functions.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from vlft.data.loader import DatasetSpec, RawRow, load_dataset_rows, parse_spec, read_local, sample_rows
from vlft.data.registry import apply_entry, load_hub_rows, resolve_hub_dataset
from vlft.errors import DataError, VlftError

# ---------------------------------------------------------------------------------------------------
# parse_spec


@pytest.mark.parametrize("text, expected", [
    ("AI-ModelScope/LaTeX_OCR", DatasetSpec("AI-ModelScope/LaTeX_OCR")),
    ("AI-ModelScope/LaTeX_OCR:human_handwrite", DatasetSpec("AI-ModelScope/LaTeX_OCR", "human_handwrite")),
    ("AI-ModelScope/alpaca-gpt4-data-zh#500", DatasetSpec("AI-ModelScope/alpaca-gpt4-data-zh", None, 500)),
    ("swift/VideoChatGPT:Generic#20", DatasetSpec("swift/VideoChatGPT", "Generic", 20)),
    ("org/name#0", DatasetSpec("org/name", None, 0)),
])
def test_parse_spec(text, expected):
    assert parse_spec(text) == expected


def test_parse_spec_existing_local_path_wins(tmp_path):
    odd = tmp_path / "rows:v2#7"
    odd.write_text("{}\n")
    assert parse_spec(str(odd)) == DatasetSpec(str(odd))


def test_parse_spec_local_path_with_count(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("{}\n")
    assert parse_spec(f"{path}#3") == DatasetSpec(str(path), None, 3)
    with pytest.raises(VlftError, match="a local file has no subsets"):
        parse_spec(f"{path}:sub")


# ---------------------------------------------------------------------------------------------------
# sample_rows


def _rows(n):
    return [RawRow({"i": i}, "d.jsonl", i + 1, None) for i in range(n)]


def test_sample_rows_none_returns_all():
    rows = _rows(5)
    assert sample_rows(rows, None, seed=0) == rows


def test_sample_rows_fewer_than_the_set():
    rows = _rows(20)
    picked = sample_rows(rows, 7, seed=42)
    assert len(picked) == 7
    lines = [r.line for r in picked]
    assert len(set(lines)) == 7  # no repeats
    assert all(any(r is row for row in rows) for r in picked)  # drawn from the set itself
    assert [r.line for r in sample_rows(rows, 7, seed=42)] == lines  # deterministic with the seed
    # ...and the seed matters: over a few seeds, not every draw is the same one.
    draws = {tuple(r.line for r in sample_rows(rows, 7, seed=s)) for s in range(6)}
    assert len(draws) > 1


def test_sample_rows_more_than_the_set():
    rows = _rows(10)
    picked = sample_rows(rows, 23, seed=3)
    assert len(picked) == 23
    assert picked[:20] == rows + rows  # two whole copies first
    rest = [r.line for r in picked[20:]]
    assert len(set(rest)) == 3  # plus 3 distinct others
    counts = Counter(r.line for r in picked)
    assert sorted(counts.values()) == [2] * 7 + [3] * 3
    assert [r.line for r in sample_rows(rows, 23, seed=3)] == [r.line for r in picked]


def test_sample_rows_exactly_the_set_and_zero():
    rows = _rows(6)
    assert sample_rows(rows, 6, seed=9) == rows
    assert sample_rows(rows, 12, seed=9) == rows + rows
    assert sample_rows(rows, 0, seed=9) == []
    assert sample_rows([], 5, seed=9) == []


# ---------------------------------------------------------------------------------------------------
# read_local


def test_read_jsonl_with_malformed_and_blank_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"query": "q1", "response": "r1"}\n'
                    "\n"
                    '{"query": "q2", "response": \n'
                    "   \n"
                    '{"query": "q3", "response": "r3"}\n'
                    '[1, 2]\n', encoding="utf-8")
    rows = list(read_local(path))
    assert [r.line for r in rows] == [1, 3, 5, 6]
    assert rows[0].row == {"query": "q1", "response": "r1"} and rows[0].error is None
    assert rows[1].row is None
    assert isinstance(rows[1].error, DataError)
    assert "malformed JSON" in str(rows[1].error)
    assert rows[2].row == {"query": "q3", "response": "r3"}
    assert rows[3].row == [1, 2]  # valid JSON, but not an object: to_sample rejects it later
    assert all(r.source == str(path) for r in rows)
    assert all(r.base_dir == tmp_path.resolve() for r in rows)


def test_read_jsonl_crlf_and_utf8(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes('{"query": "你好", "response": "é"}\r\n{"query": "b", "response": "c"}\r\n'.encode())
    rows = list(read_local(path))
    assert [(r.line, r.row) for r in rows] == [(1, {"query": "你好", "response": "é"}),
                                               (2, {"query": "b", "response": "c"})]


def test_read_json_list_and_object(tmp_path):
    path = tmp_path / "d.json"
    data = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]
    path.write_text(json.dumps(data, indent=2))
    rows = list(read_local(path))
    assert [r.row for r in rows] == data
    assert [r.line for r in rows] == [1, 2]
    assert rows[0].source == str(path) and rows[0].base_dir == tmp_path.resolve()

    single = tmp_path / "one.json"
    single.write_text(json.dumps(data[0]))
    assert [(r.line, r.row) for r in read_local(single)] == [(1, data[0])]


def test_read_json_malformed_and_not_a_list(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[\n  {"a": 1},\n  {"a": \n]\n')
    (row,) = list(read_local(bad))
    assert row.row is None and "malformed JSON" in str(row.error)
    assert row.line == 4  # json.JSONDecodeError's line: the "]" where a value was expected

    scalar = tmp_path / "scalar.json"
    scalar.write_text("42")
    (row,) = list(read_local(scalar))
    assert row.row is None and "expected a list of objects" in str(row.error)


def test_read_csv_decodes_json_cells(tmp_path):
    path = tmp_path / "d.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["query", "response", "images"])
        writer.writerow(["<image><image>Two?", "Yes.", json.dumps(["x.png", "y.png"])])
        writer.writerow(["[not json", "{also not", ""])
        writer.writerow(["q", "r", json.dumps({"path": "z.png"})])
    rows = list(read_local(path))
    assert [r.line for r in rows] == [2, 3, 4]  # line 1 is the header
    assert rows[0].row == {"query": "<image><image>Two?", "response": "Yes.", "images": ["x.png", "y.png"]}
    assert rows[1].row == {"query": "[not json", "response": "{also not", "images": ""}
    assert rows[2].row["images"] == {"path": "z.png"}
    assert all(r.source == str(path) and r.base_dir == tmp_path.resolve() for r in rows)


def test_read_csv_line_numbers_with_multiline_cells(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('query,response\nq1,"line one\nline two"\nq2,r2\n', encoding="utf-8")
    rows = list(read_local(path))
    assert rows[0].row == {"query": "q1", "response": "line one\nline two"}
    # q2,r2 is the file's 4th line (header, then the two physical lines of the first record).
    assert [r.line for r in rows] == [2, 4]


def test_read_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    table = pa.table({"query": ["<image>a?", "b?"], "response": ["A", "B"], "images": [["a.png"], []]})
    pq.write_table(table, path)
    rows = list(read_local(path))
    assert [r.row for r in rows] == [{"query": "<image>a?", "response": "A", "images": ["a.png"]},
                                     {"query": "b?", "response": "B", "images": []}]
    assert [r.line for r in rows] == [1, 2]
    assert rows[0].source == str(path) and rows[0].base_dir == tmp_path.resolve()


def test_read_folder_reads_every_data_file_sorted(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.jsonl").write_text('{"query": "b1", "response": "x"}\n{"query": "b2", "response": "x"}\n')
    (tmp_path / "sub" / "a.json").write_text('[{"query": "sa", "response": "x"}]')
    (tmp_path / "a.csv").write_text("query,response\nac,x\n")
    (tmp_path / "notes.txt").write_text("not data")
    (tmp_path / "README.md").write_text("# nothing")
    rows = list(read_local(tmp_path))
    assert [(Path(r.source).relative_to(tmp_path).as_posix(), r.line, r.row["query"]) for r in rows] == [
        ("a.csv", 2, "ac"), ("b.jsonl", 1, "b1"), ("b.jsonl", 2, "b2"), ("sub/a.json", 1, "sa")]
    assert rows[-1].base_dir == (tmp_path / "sub").resolve()


def test_read_empty_folder_and_unsupported_suffix(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(VlftError, match="holds no"):
        list(read_local(tmp_path))
    with pytest.raises(VlftError, match="unsupported file type '.txt'"):
        list(read_local(tmp_path / "notes.txt"))
    tsv = tmp_path / "d.tsv"
    tsv.write_text("a\tb\n")
    with pytest.raises(VlftError, match="unsupported file type '.tsv'"):
        list(read_local(tsv))


def test_load_dataset_rows_local_with_count(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"query": f"q{i}", "response": "r"}) + "\n" for i in range(5)))
    rows = load_dataset_rows(f"{path}#12", seed=1, use_hf=False, cache_root=tmp_path)
    assert len(rows) == 12
    assert [r.line for r in rows[:10]] == [1, 2, 3, 4, 5] * 2
    assert len({r.line for r in rows[10:]}) == 2
    assert [r.row["query"] for r in load_dataset_rows(str(path), seed=1, use_hf=False, cache_root=tmp_path)] == [
        f"q{i}" for i in range(5)]


# ---------------------------------------------------------------------------------------------------
# registry

# Hub ids as ms-swift's dataset registry maps them (ModelScope id, HF Hub id).
SEEDS = [
    ("AI-ModelScope/alpaca-gpt4-data-zh", "AI-ModelScope/alpaca-gpt4-data-zh", "llm-wizard/alpaca-gpt4-data-zh",
     "default"),
    ("AI-ModelScope/LaTeX_OCR:human_handwrite", "AI-ModelScope/LaTeX_OCR", "linxy/LaTeX_OCR", "human_handwrite"),
    ("swift/VideoChatGPT:Generic", "swift/VideoChatGPT", "lmms-lab/VideoChatGPT", "Generic"),
]


@pytest.mark.parametrize("spec, modelscope_id, hf_id, subset", SEEDS)
def test_resolve_seed_datasets(spec, modelscope_id, hf_id, subset):
    parsed = parse_spec(spec)
    ms, ms_subset, entry = resolve_hub_dataset(parsed, use_hf=False)
    hf, hf_subset, _ = resolve_hub_dataset(parsed, use_hf=True)
    assert (ms, ms_subset) == (modelscope_id, subset)
    assert (hf, hf_subset) == (hf_id, subset)
    assert entry["modelscope"] == modelscope_id


def test_resolve_default_subset():
    assert resolve_hub_dataset(DatasetSpec("AI-ModelScope/LaTeX_OCR"), use_hf=False)[1] == "default"
    assert resolve_hub_dataset(DatasetSpec("swift/VideoChatGPT"), use_hf=True)[:2] == ("lmms-lab/VideoChatGPT",
                                                                                      "Generic")


def test_resolve_unknown_subset_and_ids():
    with pytest.raises(VlftError, match="unknown subset") as info:
        resolve_hub_dataset(parse_spec("AI-ModelScope/LaTeX_OCR:nope"), use_hf=False)
    assert "human_handwrite" in str(info.value)  # names the known ones
    for name in ("nosuchdataset", "./missing.jsonl", "/abs/missing.jsonl", "a/b/c.jsonl"):
        with pytest.raises(VlftError, match="not a known dataset id"):
            resolve_hub_dataset(DatasetSpec(name), use_hf=False)
    # Other org/name ids go to the hub as they are.
    assert resolve_hub_dataset(DatasetSpec("someone/data", "x"), use_hf=True) == ("someone/data", "x", {})


def test_apply_entry_latex_ocr():
    _, _, entry = resolve_hub_dataset(parse_spec("AI-ModelScope/LaTeX_OCR:human_handwrite"), use_hf=False)
    image = {"bytes": b"\x89PNG", "path": None}
    row = apply_entry({"image": image, "text": "x^{2}"}, entry)
    assert row == {"images": image, "response": "x^{2}",
                   "query": "<image>Using LaTeX to perform OCR on the image."}


def test_apply_entry_video_chatgpt_prefix():
    _, _, entry = resolve_hub_dataset(parse_spec("swift/VideoChatGPT:Generic"), use_hf=False)
    row = apply_entry({"video_name": "v_1.mp4", "question": "What happens?", "answer": "A dog runs."}, entry)
    assert row == {"videos": "v_1.mp4", "query": "<video>What happens?", "response": "A dog runs."}


def test_apply_entry_keeps_an_existing_query():
    entry = {"columns": {}, "query": "fixed"}
    assert apply_entry({"query": "mine", "response": "r"}, entry) == {"query": "mine", "response": "r"}


def _fail(*args, **kwargs):
    raise ConnectionError("Network is unreachable\nsecond line")


def test_load_hub_rows_modelscope_failure_names_the_dataset(monkeypatch, tmp_path):
    import modelscope

    monkeypatch.setattr(modelscope, "dataset_snapshot_download", _fail)
    with pytest.raises(VlftError) as info:
        load_hub_rows(parse_spec("AI-ModelScope/alpaca-gpt4-data-zh"), use_hf=False, cache_root=tmp_path)
    message = str(info.value)
    assert "AI-ModelScope/alpaca-gpt4-data-zh" in message
    assert "ModelScope" in message and "ConnectionError" in message and "Network is unreachable" in message
    assert "second line" not in message


def test_load_hub_rows_hf_failure_names_the_hf_id(monkeypatch, tmp_path):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", _fail)
    with pytest.raises(VlftError) as info:
        load_hub_rows(parse_spec("AI-ModelScope/LaTeX_OCR:human_handwrite"), use_hf=True, cache_root=tmp_path)
    assert "linxy/LaTeX_OCR" in str(info.value) and "ConnectionError" in str(info.value)


def test_load_hub_rows_maps_rows(monkeypatch, tmp_path):
    """With the download replaced, rows come back renamed, numbered from 1 and named by spec and subset."""
    import datasets
    import modelscope

    calls = []

    def fake_download(hub_id, cache_dir=None, **kwargs):
        calls.append(("download", hub_id, cache_dir))
        return str(tmp_path / "snapshot")

    def fake_load(path, name=None, split=None, **kwargs):
        calls.append(("load", path, name, split))
        return [{"image": {"bytes": b"1", "path": None}, "text": "a"}, {"image": {"bytes": b"2", "path": None},
                                                                         "text": "b"}]

    monkeypatch.setattr(modelscope, "dataset_snapshot_download", fake_download)
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    rows = load_hub_rows(parse_spec("AI-ModelScope/LaTeX_OCR:human_handwrite"), use_hf=False, cache_root=tmp_path)
    assert calls == [("download", "AI-ModelScope/LaTeX_OCR", str(tmp_path / "modelscope")),
                     ("load", str(tmp_path / "snapshot"), "human_handwrite", "train")]
    assert [(r.line, r.source, r.base_dir) for r in rows] == [(1, "AI-ModelScope/LaTeX_OCR:human_handwrite", None),
                                                              (2, "AI-ModelScope/LaTeX_OCR:human_handwrite", None)]
    assert rows[1].row == {"images": {"bytes": b"2", "path": None}, "response": "b",
                           "query": "<image>Using LaTeX to perform OCR on the image."}


def test_load_dataset_rows_from_hub_with_count(monkeypatch, tmp_path):
    import datasets

    def fake_load(path, name=None, split=None, **kwargs):
        assert (path, name, split) == ("llm-wizard/alpaca-gpt4-data-zh", None, "train")
        return [{"instruction": f"i{i}", "input": "", "output": "o"} for i in range(10)]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    rows = load_dataset_rows("AI-ModelScope/alpaca-gpt4-data-zh#4", seed=0, use_hf=True, cache_root=tmp_path)
    assert len(rows) == 4 and len({r.line for r in rows}) == 4
    assert all(r.row == {"instruction": f"i{r.line - 1}", "input": "", "output": "o"} for r in rows)


# ---------------------------------------------------------------------------------------------------
# known problems


def test_empty_spec_is_rejected():
    with pytest.raises(VlftError):
        parse_spec("")


def test_read_csv_with_byte_order_mark(tmp_path):
    import pandas as pd

    path = tmp_path / "d.csv"
    path.write_bytes("\ufeffquery,response\nq,r\n".encode())
    assert pd.read_csv(path).columns.tolist() == ["query", "response"]  # what `datasets`' csv loader sees
    assert [r.row for r in read_local(path)] == [{"query": "q", "response": "r"}]


def test_read_jsonl_with_byte_order_mark(tmp_path):
    import pyarrow.json

    path = tmp_path / "d.jsonl"
    path.write_bytes('\ufeff{"query": "q", "response": "r"}\n{"query": "q2", "response": "r2"}\n'.encode())
    expected = [{"query": "q", "response": "r"}, {"query": "q2", "response": "r2"}]
    assert pyarrow.json.read_json(path).to_pylist() == expected  # what `datasets`' json loader sees
    rows = list(read_local(path))
    assert [r.error for r in rows] == [None, None]
    assert [r.row for r in rows] == expected


def test_read_jsonl_bad_bytes_stray_cr_and_deep_nesting_stay_on_their_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"query": "caf\xe9", "response": "r"}\n'  # Latin-1, not UTF-8
                     b'{"query": "a\rb", "response": "r"}\n'  # a raw CR inside a string: one line, bad JSON
                     b'{"query": "q", "response": [' + b"[" * 5000 + b"]" * 5000 + b"]}\n"
                     b'{"query": "q", "response": "r", "x": ' + b"[" * 120 + b"]" * 120 + b"}\n"
                     b'{"query": "q4", "response": "r4"}\n')
    rows = list(read_local(path))
    assert [r.line for r in rows] == [1, 2, 3, 4, 5]
    assert str(rows[0].error) == "not valid UTF-8: byte 0xe9 at byte 15 of the line"
    assert "malformed JSON: Invalid control character" in str(rows[1].error)
    assert "malformed JSON: nested too deeply" in str(rows[2].error)
    assert str(rows[3].error) == "lists and objects nested more than 100 levels deep"
    assert rows[4].row == {"query": "q4", "response": "r4"} and rows[4].error is None


def test_read_json_and_csv_with_bad_bytes(tmp_path):
    json_path = tmp_path / "d.json"
    json_path.write_bytes(b'[{"query": "q", "response": "r"},\n {"query": "\xff", "response": "r"}]')
    [row] = read_local(json_path)
    assert (row.line, str(row.error)) == (2, "not valid UTF-8: byte 0xff")
    csv_path = tmp_path / "d.csv"
    csv_path.write_bytes(b'query,response\nq1,r1\n"q\xff\n2",r2\nq3,r3\n')
    rows = list(read_local(csv_path))
    assert [(r.line, r.row, str(r.error) if r.error else None) for r in rows] == [
        (2, {"query": "q1", "response": "r1"}, None), (3, None, "query: not valid UTF-8: byte 0xff"),
        (5, {"query": "q3", "response": "r3"}, None)]
