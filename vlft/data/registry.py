"""Hub datasets: ids from datasets_registry/ mapped to ModelScope / HF Hub ids, subsets and columns."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from vlft.data.loader import DatasetSpec, RawRow
from vlft.errors import VlftError


def registry() -> dict[str, dict]:
    """Known dataset ids -> {modelscope, huggingface, subsets, columns, query}."""
    return json.loads((resources.files("vlft.datasets_registry") / "datasets.json").read_text())


def resolve_hub_dataset(spec: DatasetSpec, use_hf: bool) -> tuple[str, str | None, dict]:
    """(hub id, subset, registry entry) for a spec that is not a local path."""
    known = registry()
    entry = known.get(spec.name)
    if entry is None:
        if spec.name.count("/") != 1 or spec.name.startswith((".", "/", "~")):
            raise VlftError(f"--dataset {spec.name}: no such file, and not a known dataset id "
                            f"(known: {', '.join(sorted(known))}; other hub ids take the form org/name)")
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


def load_hub_rows(spec: DatasetSpec, *, use_hf: bool, cache_root: Path) -> list[RawRow]:
    """Download a hub dataset's train split; VlftError naming the id when it cannot be had."""
    hub_id, subset, entry = resolve_hub_dataset(spec, use_hf)
    hub = "the HF Hub" if use_hf else "ModelScope"
    name = None if subset in (None, "default") else subset
    try:
        import datasets

        if use_hf:
            rows = datasets.load_dataset(hub_id, name, split="train")
        else:
            # ModelScope dataset repos are plain file repos with the same layout and README configs as
            # the HF Hub's, so after the download `datasets` reads them (without MsDataset's extra deps).
            from modelscope import dataset_snapshot_download

            local = dataset_snapshot_download(hub_id, cache_dir=str(cache_root / "modelscope"))
            rows = datasets.load_dataset(local, name, split="train")
    except Exception as e:  # offline, 404, auth: the clients raise many types
        raise VlftError(f"--dataset {spec.name}: downloading {hub_id} from {hub} failed: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}") from None
    source = f"{spec.name}:{subset}" if subset else spec.name
    return [RawRow(apply_entry(dict(row), entry), source, i + 1, None) for i, row in enumerate(rows)]
