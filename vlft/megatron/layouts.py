"""The Megatron-Core layout of a family (`Family.mcore`, vlft/families/mcore_layout.py), or a clear refusal."""

from __future__ import annotations

from vlft.errors import VlftError
from vlft.families.base import Family
from vlft.families.mcore_layout import LayerNames, McoreLayout

__all__ = ["LayerNames", "McoreLayout", "layout_of"]


def layout_of(family: Family) -> McoreLayout:
    """The family's layout, or a VlftError naming the families that have one."""
    if family.mcore is None:
        from vlft.families import FAMILIES

        supported = ", ".join(name for name, other in FAMILIES.items() if other.mcore is not None)
        raise VlftError(f"model_type {family.name!r}: no Megatron-Core mapping yet; supported: {supported}")
    return family.mcore
