"""Hub datasets: ids from datasets_registry/ mapped to ModelScope / HF Hub ids, subsets and columns."""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path

from vlft.data.loader import DatasetSpec, RawRow
from vlft.data.self_cognition import ModelIdentity, fill_identity
from vlft.errors import VlftError

# Columns that already hold a conversation (formats.to_sample reads them): a row with one is not re-mapped.
CONVERSATION_COLUMNS = ("messages", "conversations", "instruction", "query", "response")


@functools.cache  # read once: rows are matched against it one by one (callers do not modify it)
def registry() -> dict[str, dict]:
    """Known dataset ids -> {modelscope, huggingface, subsets, columns, query}."""
    return json.loads((resources.files("vlft.datasets_registry") / "datasets.json").read_text())


def registry_entry(name: str) -> dict:
    """The entry of a known dataset id (`--columns AI-ModelScope/LaTeX_OCR`); VlftError naming the known ids."""
    entry = registry().get(name)
    if entry is None:
        raise VlftError(f"--columns {name!r}: neither a JSON object of renames nor a known dataset id "
                        f"(known: {', '.join(sorted(registry()))})")
    return entry


def matching_entries(row: dict) -> list[str]:
    """Known ids whose column mapping makes a conversation of `row`: the row has no conversation column and, for
    every column the mapping produces, one of the columns mapped to it (LaTeX_OCR: image and text)."""
    if any(key in row for key in CONVERSATION_COLUMNS):
        return []
    names = []
    for name, entry in registry().items():
        columns = entry.get("columns", {})
        produced = {target for source, target in columns.items() if source in row}
        if produced and produced == set(columns.values()) and produced & set(CONVERSATION_COLUMNS):
            names.append(name)
    return names


def detected_entry(row: dict) -> dict | None:
    """The mapping of the one known dataset whose columns `row` has, where that mapping adds no words of its own
    (VideoChatGPT: question, answer, video_name). A fixed question (LaTeX_OCR's) is never put into data that did
    not ask for it: its format is applied only when named (`--columns AI-ModelScope/LaTeX_OCR`)."""
    names = matching_entries(row)
    if len(names) != 1 or "query" in registry()[names[0]]:
        return None
    return registry()[names[0]]


def resolve_hub_dataset(spec: DatasetSpec, use_hf: bool) -> tuple[str, str | None, dict]:
    """(hub id, subset, registry entry) for a spec that is not a local path."""
    known = registry()
    entry = known.get(spec.name)
    if entry is None:
        if spec.name.count("/") != 1 or spec.name.startswith((".", "/", "~")):
            raise VlftError(f"--dataset {spec.name}: no such file, and not a known dataset id "
                            f"(known: {', '.join(sorted(known))}; other hub ids take the form org/name; a "
                            "LLaMA-Factory dataset is named with --dataset_dir DIR, DIR holding its dataset_info.json)")
        return spec.name, spec.subset, {}
    subset = spec.subset or entry["subsets"][0]
    if subset not in entry["subsets"]:
        raise VlftError(f"--dataset {spec.name}:{subset}: unknown subset; known: {', '.join(entry['subsets'])}")
    hub_id = entry["huggingface"] if use_hf else entry["modelscope"]
    return hub_id, subset, entry


def apply_entry(row: dict, entry: dict) -> dict:
    """A hub row renamed to vlft's columns, with the entry's fixed query where the data has none."""
    out = {}
    for key, value in row.items():
        out[entry.get("columns", {}).get(key, key)] = value
    if "query" in entry and "query" not in out:
        out["query"] = entry["query"]
    elif "query_prefix" in entry and isinstance(out.get("query"), str):
        out["query"] = entry["query_prefix"] + out["query"]
    return out


def download_rows(hub_id: str, subset: str | None, *, use_hf: bool, cache_root: Path, label: str,
                  split: str = "train", data_dir: str | None = None) -> list[dict]:
    """One split of a hub dataset (`data_dir`: a folder of its repo), as dicts; VlftError naming `label` (what the
    user wrote) and the id when it cannot be had."""
    hub = "the HF Hub" if use_hf else "ModelScope"
    name = None if subset in (None, "default") else subset
    extra = {"data_dir": data_dir} if data_dir else {}
    try:
        import datasets

        if use_hf:
            rows = datasets.load_dataset(hub_id, name, split=split, **extra)
        else:
            # ModelScope dataset repos are plain file repos with the same layout and README configs as
            # the HF Hub's, so after the download `datasets` reads them (without MsDataset's extra deps).
            from modelscope import dataset_snapshot_download

            local = dataset_snapshot_download(hub_id, cache_dir=str(cache_root / "modelscope"))
            rows = datasets.load_dataset(local, name, split=split, **extra)
    except Exception as e:  # offline, 404, auth: the clients raise many types
        raise VlftError(f"--dataset {label}: downloading {hub_id} from {hub} failed: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}") from None
    return [dict(row) for row in rows]


def load_hub_rows(spec: DatasetSpec, *, use_hf: bool, cache_root: Path,
                  identity: ModelIdentity = ModelIdentity()) -> list[RawRow]:
    """Download a hub dataset's train split; VlftError naming the id when it cannot be had. Self-cognition rows
    get the model's name and author (`identity`) and their subset's affixes."""
    hub_id, subset, entry = resolve_hub_dataset(spec, use_hf)
    hub_subset = entry.get("hub_subsets", {}).get(subset, subset)  # subsets that differ only in vlft's affixes
    rows = download_rows(hub_id, hub_subset, use_hf=use_hf, cache_root=cache_root, label=spec.name)
    source = f"{spec.name}:{subset}" if subset else spec.name
    rows = [apply_entry(row, entry) for row in rows]
    if "self_cognition" in entry:
        affixes = entry["self_cognition"][subset]
        rows = [fill_identity(row, identity, affixes, label=source, line=i + 1) for i, row in enumerate(rows)]
    return [RawRow(row, source, i + 1, None) for i, row in enumerate(rows)]
