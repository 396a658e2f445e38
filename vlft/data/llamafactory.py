"""LLaMA-Factory datasets: names defined in a `dataset_info.json` (`--dataset NAME --dataset_dir DIR`, or `DIR:NAME`,
or `DIR` for all its local ones), read as LLaMA-Factory reads them and turned into vlft's `messages` rows.

The semantics are LLaMA-Factory's (data/README.md; src/llamafactory/data/parser.py `DatasetAttr.join`,
converter.py `AlpacaDatasetConverter` / `SharegptDatasetConverter`, loader.py `_load_single_dataset`):
- `formatting` alpaca (default) or sharegpt; `columns` and `tags` default as `DatasetAttr` does, and an entry that
  gives `columns` (or `tags`) leaves every column (tag) it does not list unset;
- hub entries (`hf_hub_url`, `ms_hub_url`) win over `file_name`; ModelScope is taken where the entry has it and
  `--use_hf` is off, or where it has no HF id (LLaMA-Factory's rule, with vlft's hub setting);
- local media paths are relative to the media dir, which is the dataset dir (`media_dir` defaults to it); a path
  not found there is used as given (relative to the working dir).
Rows LLaMA-Factory would skip with a warning (roles out of turn, no answer last) are errors at their line here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlft.data.loader import RawRow, read_local, sample_rows
from vlft.errors import DataError, VlftError

INFO_FILE = "dataset_info.json"
COLUMN_NAMES = ("prompt", "query", "response", "history", "messages", "system", "tools", "images", "videos",
                "audios", "chosen", "rejected", "kto_tag")
TAG_NAMES = ("role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag")
DEFAULT_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "messages": "conversations"}
DEFAULT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
# LLaMA-Factory's roles as vlft (ms-swift) names them: a function call is an assistant tool call, an observation
# the tool's answer.
VLFT_ROLES = {"user_tag": "user", "assistant_tag": "assistant", "observation_tag": "tool",
              "function_tag": "tool_call", "system_tag": "system"}
# Turns alternate: user or observation, then assistant or function call (SharegptDatasetConverter's accept_tags).
ASKING, ANSWERING = ("user", "tool"), ("assistant", "tool_call")


@dataclass(frozen=True)
class Entry:
    """One dataset of a dataset_info.json, with LLaMA-Factory's defaults filled in."""

    name: str
    formatting: str = "alpaca"
    file_name: str | None = None
    hf_hub_url: str | None = None
    ms_hub_url: str | None = None
    subset: str | None = None
    split: str = "train"
    folder: str | None = None
    num_samples: int | None = None
    columns: dict[str, str | None] = field(default_factory=dict)
    tags: dict[str, str | None] = field(default_factory=dict)


def is_dataset_dir(path: Path) -> bool:
    """Whether `path` is a LLaMA-Factory dataset dir (a folder holding a dataset_info.json)."""
    return path.is_dir() and (path / INFO_FILE).is_file()


def read_info(dataset_dir: Path) -> dict[str, Any]:
    """The dataset_info.json of `dataset_dir`, as an object of entries; VlftError saying why it cannot be read."""
    path = dataset_dir / INFO_FILE
    if not path.is_file():
        raise VlftError(f"--dataset_dir {dataset_dir}: no {INFO_FILE} in it (a LLaMA-Factory dataset dir has one)")
    try:
        info = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VlftError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(info, dict) or not all(isinstance(v, dict) for v in info.values()):
        raise VlftError(f"{path}: expected an object of dataset entries")
    return info


def parse_entry(name: str, attr: dict) -> Entry:
    """An entry as `DatasetAttr.join` reads it; VlftError for what vlft does not train on."""
    where = f"{INFO_FILE}: {name}"
    unsupported = [key for key in ("om_hub_url", "script_url", "cloud_file_name") if key in attr]
    if unsupported and not ({"hf_hub_url", "ms_hub_url"} & set(attr)):
        raise VlftError(f"{where}: {unsupported[0]} is not supported (vlft reads file_name, hf_hub_url, ms_hub_url)")
    if not ({"hf_hub_url", "ms_hub_url", "file_name"} & set(attr)):
        raise VlftError(f"{where}: no file_name, hf_hub_url or ms_hub_url")
    if not isinstance(attr.get("file_name", ""), str):
        raise VlftError(f"{where}: file_name: expected a file or folder name, got {type(attr['file_name']).__name__}")
    formatting = attr.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise VlftError(f"{where}: formatting {formatting!r} is not supported (alpaca or sharegpt; OpenAI-style "
                        "messages load directly with --dataset FILE)")
    for key in ("columns", "tags"):
        if not isinstance(attr.get(key, {}), dict):
            raise VlftError(f"{where}: {key}: expected an object, got {type(attr[key]).__name__}")
    num_samples = attr.get("num_samples")
    if num_samples is not None and (not isinstance(num_samples, int) or isinstance(num_samples, bool)
                                    or num_samples < 1):
        raise VlftError(f"{where}: num_samples: expected a positive integer, got {num_samples!r}")
    columns = {key: attr["columns"].get(key) for key in COLUMN_NAMES} if "columns" in attr else dict(DEFAULT_COLUMNS)
    tags = {key: attr["tags"].get(key) for key in TAG_NAMES} if "tags" in attr else dict(DEFAULT_TAGS)
    if attr.get("ranking") or columns.get("kto_tag") or columns.get("chosen") or columns.get("rejected"):
        raise VlftError(f"{where}: a preference (ranking / KTO) dataset; vlft sft trains on conversations")
    if columns.get("audios"):
        raise VlftError(f"{where}: an audio dataset; Qwen VL models take images and videos")
    return Entry(name, formatting, attr.get("file_name"), attr.get("hf_hub_url"), attr.get("ms_hub_url"),
                 attr.get("subset"), attr.get("split", "train"), attr.get("folder"), num_samples, columns, tags)


def hub_source(entry: Entry, use_hf: bool) -> tuple[str, bool] | None:
    """(hub id, from the HF Hub) of a hub entry, None for a local one: `get_dataset_list`'s choice, with vlft's
    `--use_hf` in place of LLaMA-Factory's USE_MODELSCOPE_HUB."""
    if entry.ms_hub_url and (not use_hf or not entry.hf_hub_url):
        return entry.ms_hub_url, False
    if entry.hf_hub_url:
        return entry.hf_hub_url, True
    return None


def convert_row(row: Any, entry: Entry) -> dict:
    """A LLaMA-Factory row as a vlft row (`messages`, `system`, `tools`, `images`, `videos`); DataError naming the
    field of the original row."""
    if not isinstance(row, dict):
        raise DataError(f"expected a JSON object, got {type(row).__name__}")
    columns = entry.columns
    messages = _sharegpt(row, entry) if entry.formatting == "sharegpt" else _alpaca(row, columns)
    out: dict[str, Any] = {"messages": messages}
    system = row.get(columns["system"]) if columns.get("system") else None
    if system and not (messages and messages[0]["role"] == "system"):  # a system turn wins over the column
        out["system"] = system
    for key in ("tools", "images", "videos"):
        value = row.get(columns[key]) if columns.get(key) else None
        if value is not None and not (isinstance(value, (str, list)) and not value):  # LLaMA-Factory: "" or []: none
            out[key] = value
    return out


def _alpaca(row: dict, columns: dict) -> list[dict]:
    """AlpacaDatasetConverter: history pairs, then `prompt\\nquery` as the user turn and `response` as the answer."""
    messages = []
    history = row.get(columns["history"]) if columns.get("history") else None
    if history is not None and not isinstance(history, list):
        raise DataError("expected a list of [prompt, response] pairs", field=columns["history"])
    for i, pair in enumerate(history or []):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise DataError("expected a [prompt, response] pair of strings", field=f"{columns['history']}[{i}]")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    parts = []
    for key in ("prompt", "query"):
        value = row.get(columns[key]) if columns.get(key) else None
        if value and not isinstance(value, str):
            raise DataError(f"expected a string, got {type(value).__name__}", field=columns[key])
        if value:
            parts.append(value)
    response = row.get(columns["response"]) if columns.get("response") else None
    if not isinstance(response, str):  # LLaMA-Factory would drop the row as unsupervised
        raise DataError(f"expected the answer as a string, got {type(response).__name__}",
                        field=columns.get("response") or "response")
    return messages + [{"role": "user", "content": "\n".join(parts)}, {"role": "assistant", "content": response}]


def _sharegpt(row: dict, entry: Entry) -> list[dict]:
    """SharegptDatasetConverter: turns named by the entry's tags; a leading system turn; turns alternate."""
    column, tags = entry.columns.get("messages"), entry.tags
    if not column:
        raise DataError(f"{INFO_FILE} names no messages column for {entry.name}")
    turns = row.get(column)
    if not isinstance(turns, list) or not turns:
        raise DataError("expected a non-empty list of messages", field=column)
    roles = {tags[tag]: role for tag, role in VLFT_ROLES.items() if tags.get(tag)}
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise DataError(f"expected an object with {tags['role_tag']} and {tags['content_tag']}",
                            field=f"{column}[{i}]")
        tag = turn.get(tags["role_tag"])
        role = roles.get(tag) if isinstance(tag, str) else None
        if role is None or (role == "system" and i > 0):
            known = ", ".join(f"{t!r}" for t, r in roles.items() if r != "system" or i == 0)
            raise DataError(f"unknown role {tag!r} (the tags of {entry.name} in {INFO_FILE}: {known})",
                            field=f"{column}[{i}].{tags['role_tag']}")
        messages.append({"role": role, "content": turn.get(tags["content_tag"])})
    _check_alternation(messages, roles, column, tags["role_tag"])
    return messages


def _check_alternation(messages: list[dict], roles: dict[str, str], column: str, role_tag: str) -> None:
    offset = 1 if messages[0]["role"] == "system" else 0
    for k, message in enumerate(messages[offset:]):
        expected = ASKING if k % 2 == 0 else ANSWERING
        if message["role"] not in expected:
            names = " or ".join(repr(tag) for tag, role in roles.items() if role in expected)
            given = next(tag for tag, role in roles.items() if role == message["role"])
            raise DataError(f"{given!r} where LLaMA-Factory expects {names} (turns alternate: "
                            "user or observation, then assistant or function call; it skips such rows)",
                            field=f"{column}[{k + offset}].{role_tag}")
    if (len(messages) - offset) % 2:
        raise DataError("the last turn is not an answer (LLaMA-Factory skips such rows)", field=column)


def entry_rows(dataset_dir: Path, name: str, *, use_hf: bool, cache_root: Path, seed: int) -> list[RawRow]:
    """The rows of dataset `name` of `dataset_dir`'s dataset_info.json, converted, `num_samples` applied."""
    info = read_info(dataset_dir)
    if name not in info:
        raise VlftError(f"--dataset {name}: not defined in {dataset_dir / INFO_FILE} (it defines: "
                        f"{', '.join(info) or 'nothing'})")
    entry = parse_entry(name, info[name])
    source = hub_source(entry, use_hf)
    if source is not None:
        from vlft.data.registry import download_rows

        hub_id, from_hf = source
        raw = [RawRow(row, name, i + 1, None) for i, row in enumerate(download_rows(
            hub_id, entry.subset, use_hf=from_hf, cache_root=cache_root, label=name, split=entry.split,
            data_dir=entry.folder))]
    else:
        path = dataset_dir / entry.file_name
        if not path.exists():
            raise VlftError(f"{INFO_FILE}: {name}: file_name {entry.file_name}: no such file in {dataset_dir}")
        raw = list(read_local(path))
    media_dir = dataset_dir.resolve() if source is None else None
    return sample_rows([_converted(r, entry, media_dir) for r in raw], entry.num_samples, seed)


def local_names(dataset_dir: Path) -> list[str]:
    """The datasets of `dataset_dir`'s dataset_info.json that are files in it (no hub entries)."""
    return [name for name, attr in read_info(dataset_dir).items()
            if not ({"hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name"} & set(attr))]


def dir_rows(dataset_dir: Path, *, use_hf: bool, cache_root: Path, seed: int) -> list[RawRow]:
    """Every local dataset of a dataset dir given as `--dataset DIR`, in dataset_info.json's order."""
    names = local_names(dataset_dir)
    if not names:
        raise VlftError(f"--dataset {dataset_dir}: its {INFO_FILE} defines no local dataset; name one with "
                        f"--dataset NAME --dataset_dir {dataset_dir} (it defines: {', '.join(read_info(dataset_dir))})")
    rows = []
    for name in names:
        try:
            rows += entry_rows(dataset_dir, name, use_hf=use_hf, cache_root=cache_root, seed=seed)
        except DataError:  # a file's own problem (an empty file), already placed
            raise
        except VlftError as e:
            raise VlftError(f"{e}; to read some of its datasets, name them: --dataset NAME ... --dataset_dir "
                            f"{dataset_dir} (local ones: {', '.join(names)})") from None
    return rows


def _converted(raw: RawRow, entry: Entry, media_dir: Path | None) -> RawRow:
    if raw.error is not None:
        return raw
    try:
        row = convert_row(raw.row, entry)
    except DataError as e:
        return RawRow(None, raw.source, raw.line, media_dir or raw.base_dir, e)
    if media_dir is not None:
        for key in ("images", "videos"):
            if key in row:
                row[key] = _media_paths(row[key], media_dir)
    return RawRow(row, raw.source, raw.line, media_dir or raw.base_dir)


def _media_paths(value: Any, media_dir: Path) -> Any:
    """`DatasetConverter._find_medias`: a path found in the media dir is read from there (it is the rows' base
    dir); one that is not is used as given, so a relative one is read from the working dir."""
    if isinstance(value, list):
        return [_media_paths(item, media_dir) for item in value]
    try:
        if isinstance(value, str) and not (media_dir / value).is_file() and Path(value).is_file():
            return str(Path(value).resolve())
    except (OSError, ValueError):  # a name too long or with a NUL byte: the media reader says what is wrong
        pass
    return value
