"""Megatron-Core: checkpoints (`vlft export --to_mcore` / `--to_hf`) in ms-swift's layout (the GPTModel under
`language_model.`, the HF vision tower as is under `visual.visual.`, saved by dist_checkpointing in Megatron-LM's
folders), and training on them (`vlft megatron sft`, sft.py). Megatron-Core is the optional extra
`vlft[megatron]`; nothing outside this package imports it, and modules here import it only inside the functions
that need it."""

from __future__ import annotations

import importlib.util

from vlft.errors import VlftError

INSTALL_HINT = 'pip install "vlft[megatron]"'


def require_megatron() -> None:
    """Raise a VlftError naming the extra when Megatron-Core is not installed."""
    try:
        found = importlib.util.find_spec("megatron.core") is not None
    except ModuleNotFoundError:  # no `megatron` package at all
        found = False
    if not found:
        raise VlftError(f"Megatron-Core (vlft export --to_mcore / --to_hf, vlft megatron sft) needs megatron-core: "
                        f"{INSTALL_HINT}")
