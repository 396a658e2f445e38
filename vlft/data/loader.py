"""Reading `--dataset` specs into raw rows that remember their file and line.

A spec is a local file or folder (.jsonl/.json/.csv/.parquet) or a hub dataset id, with ms-swift's
syntax `ID[:SUBSET][#N]`: N rows, drawn with the seed, repeating the set when N exceeds it.
"""

from __future__ import annotations

import codecs
import csv
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from vlft.data.self_cognition import ModelIdentity
from vlft.errors import DataError, VlftError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
SPEC = re.compile(r"^(?P<name>.+?)(?::(?P<subset>[^:#/]+))?(?:#(?P<n>\d+))?$")
# Real rows nest a few levels (row > messages > message > content > part > image_url); deeper ones are
# refused as read, before anything (hashing, encoding) recurses into them.
MAX_NESTING = 100
JSON_SPACE = " \t\r\n"


@dataclass(frozen=True)
class DatasetSpec:
    """One `--dataset` entry, parsed."""

    name: str
    subset: str | None = None
    n: int | None = None


@dataclass
class RawRow:
    """One row as read, or the error that made it unreadable; `line` counts from 1."""

    row: dict | None
    source: str
    line: int
    base_dir: Path | None
    error: DataError | None = None


def parse_spec(spec: str) -> DatasetSpec:
    """`path_or_id[:subset][#N]` -> DatasetSpec. A local path wins over the subset syntax."""
    if not spec.strip():
        raise VlftError("--dataset: empty dataset spec")
    if Path(spec).expanduser().exists():
        return DatasetSpec(spec)
    match = SPEC.match(spec)
    if not match:
        raise VlftError(f"--dataset {spec!r}: expected PATH or ID[:SUBSET][#N]")
    name, subset, n = match["name"], match["subset"], match["n"]
    if Path(name).expanduser().exists() and subset and not _is_llamafactory_dir(Path(name).expanduser()):
        raise VlftError(f"--dataset {spec!r}: a local file has no subsets")
    return DatasetSpec(name, subset, int(n) if n is not None else None)


def read_local(path: Path) -> Iterator[RawRow]:
    """Rows of a local file or of every data file in a folder, in file order."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise VlftError(f"--dataset {path}: folder holds no {'/'.join(SUFFIXES)} files")
        for file in files:
            yield from read_local(file)
        return
    if path.suffix not in SUFFIXES:
        raise VlftError(f"--dataset {path}: unsupported file type {path.suffix!r} (expected {', '.join(SUFFIXES)})")
    rows = 0
    for rows, raw in enumerate(_read_file(path), start=1):
        yield raw
    if not rows:  # an empty file is a mistake (a failed export, a wrong path), never a dataset of 0 lines
        raise DataError("holds no rows (nothing to check or train on)", source=escape_controls(str(path)))


def _read_file(path: Path) -> Iterator[RawRow]:
    source, base_dir = str(path), path.parent.resolve()
    if path.suffix == ".jsonl":
        yield from _read_jsonl(path, source, base_dir)
    elif path.suffix == ".json":
        yield from _read_json(path, source, base_dir)
    elif path.suffix == ".csv":
        # surrogateescape: a byte that is not UTF-8 becomes a lone surrogate, found below in its row
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            reader = csv.DictReader(f)
            start = 2  # line 1 is the header; a quoted cell may span lines
            for row in reader:
                error = _undecodable_cell(row)
                values = None if error else _csv_values(row)
                error = error or _unreadable(values)
                yield RawRow(None if error else values, source, start, base_dir, error)
                start = reader.line_num + 1
    else:
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield RawRow(row, source, i + 1, base_dir)


def _read_jsonl(path: Path, source: str, base_dir: Path) -> Iterator[RawRow]:
    # Bytes, split at b"\n" only: line numbers are what `wc -l` and editors count (a stray \r or U+2028
    # inside a line does not start a new one), and each line is decoded on its own.
    with open(path, "rb") as f:
        for i, data in enumerate(f, start=1):
            if i == 1:
                data = data.removeprefix(codecs.BOM_UTF8)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                yield RawRow(None, source, i, base_dir, DataError(
                    f"not valid UTF-8: byte {data[e.start]:#04x} at byte {e.start + 1} of the line"))
                continue
            if not text.strip(JSON_SPACE):
                continue
            row, error = parse_json(text)
            yield RawRow(row, source, i, base_dir, error)


def _read_json(path: Path, source: str, base_dir: Path) -> Iterator[RawRow]:
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        yield RawRow(None, source, line, base_dir, DataError(f"not valid UTF-8: byte {data[e.start]:#04x}"))
        return
    try:
        parsed = json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as e:
        yield RawRow(None, source, e.lineno, base_dir, DataError(f"malformed JSON: {e.msg} (column {e.colno})"))
        return
    except RecursionError:
        yield RawRow(None, source, 1, base_dir, DataError("malformed JSON: nested too deeply to read"))
        return
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list):
        yield RawRow(None, source, 1, base_dir, DataError("expected a list of objects"))
        return
    for i, row in enumerate(parsed):
        # A JSON array has no per-row lines: the "line" is the item's position, 1-based.
        error = _unreadable(row)
        yield RawRow(None if error else row, source, i + 1, base_dir, error)


def parse_json(text: str) -> tuple[Any, DataError | None]:
    """(value, None) for one JSON text, or (None, the DataError saying why it cannot be a row)."""
    try:
        value = json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as e:
        return None, DataError(f"malformed JSON: {e.msg} (column {e.colno})")
    except RecursionError:  # the json module recurses once per nesting level
        return None, DataError(f"malformed JSON: nested too deeply to read (at most {MAX_NESTING} levels)")
    error = _unreadable(value)
    return (None, error) if error else (value, None)


class LongInteger:
    """A JSON integer with more digits than Python converts (`sys.get_int_max_str_digits()`, 4300 by default),
    kept as its text so that only its own row fails (json.loads would raise a bare ValueError for the file)."""

    def __init__(self, text: str):
        self.text = text


def _parse_int(text: str) -> int | LongInteger:
    try:
        return int(text)
    except ValueError:  # the scanner has checked the syntax: only the digit limit is left to fail
        return LongInteger(text)


def _unreadable(value: Any) -> DataError | None:
    """A DataError if lists and objects nest more than MAX_NESTING levels, or if an integer is too long to
    convert (walked without recursion, in document order: the first one found is the first in the row)."""
    stack: list[tuple[Any, int, tuple]] = [(value, 1, ())]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, LongInteger):
            digits = len(item.text.lstrip("-"))
            limit = sys.get_int_max_str_digits()
            return DataError(f"an integer of {digits} digits, over Python's {limit}-digit limit",
                             field=_field_name(path) or None)
        children = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else None
        if children is None:
            continue
        if depth > MAX_NESTING:
            return DataError(f"lists and objects nested more than {MAX_NESTING} levels deep")
        stack.extend((child, depth + 1, (path, key)) for key, child in reversed(list(children)))
    return None


def _field_name(path: tuple) -> str:
    """`messages[0].content` for the linked path ((((), "messages"), 0), "content")."""
    keys = []
    while path:
        path, key = path
        keys.append(key)
    return "".join(f"[{key}]" if isinstance(key, int) else f".{key}" if i else str(key)
                   for i, key in enumerate(reversed(keys)))


# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: any of them in a file name or a
# quoted value would break (or forge) a line of a report.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """`text` as one line: control characters written as repr writes them (`\\n`, `\\x1b`, `\\u2028`);
    backslashes are left as they are, so a Windows path stays readable."""
    return CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


UNDECODABLE = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of a non-UTF-8 byte


def _undecodable_cell(row: dict) -> DataError | None:
    for key, value in row.items():
        for text in (key, value):
            bad = UNDECODABLE.search(text) if isinstance(text, str) else None
            if bad:
                return DataError(f"not valid UTF-8: byte {ord(bad.group()) - 0xDC00:#04x}",
                                 field=key if text is value and isinstance(key, str) else None)
    return None


def _csv_values(row: dict[str, str]) -> dict[str, Any]:
    """CSV cells that hold JSON lists or objects (images, messages) are decoded."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, str) and value[:1] in "[{":
            try:
                out[key] = json.loads(value, parse_int=_parse_int)
                continue
            except (json.JSONDecodeError, RecursionError):  # not JSON after all: the cell stays text
                pass
        out[key] = value
    return out


def sample_rows(rows: list[RawRow], n: int | None, seed: int) -> list[RawRow]:
    """`#N`: N rows drawn with the seed; whole copies of the set first when N exceeds it."""
    if n is None:
        return rows
    rng = random.Random(seed)
    whole, rest = divmod(n, len(rows)) if rows else (0, 0)
    return rows * whole + [rows[i] for i in sorted(rng.sample(range(len(rows)), rest))]


def load_dataset_rows(spec_text: str, *, seed: int, use_hf: bool, cache_root: Path,
                      dataset_dir: str | Path | None = None, identity: ModelIdentity = ModelIdentity()) -> list[RawRow]:
    """All rows of one `--dataset` spec, with `#N` applied: a LLaMA-Factory dataset (a name defined in
    `dataset_dir`'s dataset_info.json; `DIR:NAME`; `DIR` for all its local ones), a local file or folder, or a
    hub id (`identity`: the model's name and author for self-cognition data)."""
    spec = parse_spec(spec_text)
    path = Path(spec.name).expanduser()
    rows = _llamafactory_rows(spec, path, dataset_dir, seed=seed, use_hf=use_hf, cache_root=cache_root)
    if rows is None and path.exists():
        rows = list(read_local(path))
    elif rows is None:
        from vlft.data.registry import load_hub_rows

        rows = load_hub_rows(spec, use_hf=use_hf, cache_root=cache_root, identity=identity)
    return sample_rows(rows, spec.n, seed)


def _is_llamafactory_dir(path: Path) -> bool:
    from vlft.data.llamafactory import is_dataset_dir

    return is_dataset_dir(path)


def _llamafactory_rows(spec: DatasetSpec, path: Path, dataset_dir: str | Path | None, **how) -> list[RawRow] | None:
    """The rows of a spec that names a LLaMA-Factory dataset, else None. As in LLaMA-Factory, a name defined in
    `--dataset_dir` wins over a file of that name; a name without a `/` that is neither is an error there."""
    from vlft.data import llamafactory

    if dataset_dir is not None:
        directory = Path(dataset_dir).expanduser()
        defined = spec.name in llamafactory.read_info(directory)
        if defined and spec.subset:
            raise VlftError(f"--dataset {spec.name}:{spec.subset}: a dataset of {directory / llamafactory.INFO_FILE} "
                            "takes no :SUBSET (its entry's `subset` names one)")
        if defined or not (path.exists() or "/" in spec.name):
            return llamafactory.entry_rows(directory, spec.name, **how)  # not defined: names those that are
    if llamafactory.is_dataset_dir(path):
        if spec.subset:
            return llamafactory.entry_rows(path, spec.subset, **how)
        return llamafactory.dir_rows(path, **how)
    return None
