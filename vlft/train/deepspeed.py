"""`--deepspeed`: a built-in config name (zero0 ... zero3_offload) or a path to a DeepSpeed JSON file."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from vlft.errors import VlftError
from vlft.train.config_json import json_object

BUILTIN_CONFIGS = ("zero0", "zero1", "zero2", "zero2_offload", "zero3", "zero3_offload")


def resolve_deepspeed_config(name_or_path: str | None) -> dict | None:
    """The DeepSpeed config dict for a built-in name or a JSON path; None when DeepSpeed is not asked for."""
    if name_or_path is None:
        return None
    if name_or_path in BUILTIN_CONFIGS:
        text = (resources.files("vlft.train.ds_configs") / f"{name_or_path}.json").read_text(encoding="utf-8")
        return json_object(text, f"--deepspeed {name_or_path}")
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise VlftError(f"--deepspeed {name_or_path}: no such file, and not a built-in config "
                        f"({', '.join(BUILTIN_CONFIGS)})")
    return json_object(path.read_text(encoding="utf-8"), f"--deepspeed {name_or_path}")


def init_deepspeed_comm(cuda: bool) -> None:
    """Make DeepSpeed's own comm layer use the process group torch already has.

    On CPU, accelerate starts a plain gloo group and leaves deepspeed.comm uninitialised, so
    `zero.Init` (ZeRO-3 model construction) would see a world size of 1 on every rank.
    """
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", auto_mpi_discovery=False)
