"""Grounding: absolute input boxes converted to a family's convention and written into the text."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from vlft.errors import DataError
from vlft.families.base import BoxConvention, Family

REF_PLACEHOLDER = "<ref-object>"
BOX_PLACEHOLDER = "<bbox>"


@dataclass(frozen=True)
class ImageGeometry:
    """Original and resized (what the ViT sees) size of one image, in pixels."""

    width: int
    height: int
    resized_width: int
    resized_height: int


def convert_box(box: list[float], geometry: ImageGeometry, convention: BoxConvention) -> list[int]:
    """An absolute [x1, y1, x2, y2] box in the model's coordinates: 0-1000 relative, or resized-image pixels."""
    x1, y1, x2, y2 = box
    if convention == "norm1000":
        sx, sy = 1000 / geometry.width, 1000 / geometry.height
    else:
        sx, sy = geometry.resized_width / geometry.width, geometry.resized_height / geometry.height
    return [round(x1 * sx), round(y1 * sy), round(x2 * sx), round(y2 * sy)]


def check_box(box: Any, geometry: ImageGeometry) -> list[float]:
    """The box as four floats, or a DataError if it is malformed, inverted or outside the image."""
    if not (isinstance(box, (list, tuple)) and len(box) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
        raise DataError(f"expected [x1, y1, x2, y2] numbers, got {_short_repr(box)}")
    if not all(_finite(v) for v in box):
        raise DataError(f"box {_short_repr(box)} has a coordinate that is not a finite number")
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 < x1 or y2 < y1:
        raise DataError(f"box {list(box)} has x2 < x1 or y2 < y1")
    if x1 < 0 or y1 < 0 or x2 > geometry.width or y2 > geometry.height:
        raise DataError(f"box {list(box)} lies outside the image ({geometry.width}x{geometry.height})")
    return [x1, y1, x2, y2]


def check_objects(objects: Any) -> None:
    """DataError naming the field if `objects` is not ms-swift's {"ref": [...], "bbox": [[x1, y1, x2, y2], ...],
    "image_id": [...]} with absolute pixel boxes (the row's own `bbox_type`, if any, must be "real")."""
    if not isinstance(objects, dict):
        raise DataError(f"expected an object with ref and bbox lists, got {type(objects).__name__}", field="objects")
    for key in ("ref", "bbox", "image_id"):
        if objects.get(key) is not None and not isinstance(objects[key], list):
            raise DataError(f"expected a list, got {type(objects[key]).__name__}", field=f"objects.{key}")
    for i, ref in enumerate(objects.get("ref") or []):
        if not isinstance(ref, str):
            raise DataError(f"expected a string, got {type(ref).__name__}", field=f"objects.ref[{i}]")
    image_ids = objects.get("image_id")
    if image_ids is not None and len(image_ids) != len(objects.get("bbox") or []):
        raise DataError(f"{len(image_ids)} image ids for {len(objects.get('bbox') or [])} boxes",
                        field="objects.image_id")
    bbox_type = objects.get("bbox_type")
    if bbox_type not in (None, "real"):
        # ms-swift also takes "norm1000" boxes; vlft reads absolute pixels only, and says so rather than
        # misreading them.
        raise DataError(f"bbox_type {_short_repr(bbox_type)} is not supported: give absolute pixel boxes "
                        "(bbox_type real)", field="objects.bbox_type")


def fill_grounding(texts: list[str], objects: dict | None, geometries: list[ImageGeometry],
                   family: Family) -> list[str]:
    """Replace `<ref-object>` and `<bbox>` placeholders, in order, by the objects' refs and converted boxes.

    `texts` are the message contents; a DataError names the field (`objects.bbox[1]`, ...) at fault.
    """
    if objects is not None:
        check_objects(objects)
    refs = [] if objects is None else objects.get("ref") or []
    boxes = [] if objects is None else objects.get("bbox") or []
    image_ids = None if objects is None else objects.get("image_id")
    n_ref = sum(t.count(REF_PLACEHOLDER) for t in texts)
    n_box = sum(t.count(BOX_PLACEHOLDER) for t in texts)
    if n_ref == 0 and n_box == 0:
        return texts
    if n_ref > len(refs):
        raise DataError(f"{n_ref} {REF_PLACEHOLDER} placeholders but {len(refs)} refs given", field="objects.ref")
    if n_box != len(boxes):
        raise DataError(f"{n_box} {BOX_PLACEHOLDER} placeholders but {len(boxes)} boxes given", field="objects.bbox")
    written = []
    for i, box in enumerate(boxes):
        image_index = image_ids[i] if image_ids is not None else 0
        if not isinstance(image_index, int) or isinstance(image_index, bool) or not 0 <= image_index < len(geometries):
            raise DataError(f"box {i} refers to image {image_index!r}, but {len(geometries)} image(s) given",
                            field=f"objects.image_id[{i}]" if image_ids is not None else f"objects.bbox[{i}]")
        geometry = geometries[image_index]
        try:
            checked = check_box(box, geometry)
        except DataError as e:
            raise e.within(f"objects.bbox[{i}]") from None
        written.append(family.format_box(convert_box(checked, geometry, family.box_convention)))
    ref_iter, box_iter = iter(refs), iter(written)
    out = []
    for text in texts:
        text = _replace_each(text, REF_PLACEHOLDER, lambda: family.format_ref(str(next(ref_iter))))
        out.append(_replace_each(text, BOX_PLACEHOLDER, lambda: next(box_iter)))
    return out


def objects_of(texts: list[str], objects: dict | None) -> dict | None:
    """The leading objects the `texts`' placeholders take (they are taken in order): what a prompt keeps of a row's
    objects when its answer, holding the later placeholders, is left out (`vlft infer` on a dataset)."""
    if objects is None:
        return None
    n_ref = sum(t.count(REF_PLACEHOLDER) for t in texts)
    n_box = sum(t.count(BOX_PLACEHOLDER) for t in texts)
    if n_ref == 0 and n_box == 0:
        return None
    kept = {"ref": list(objects.get("ref") or [])[:n_ref], "bbox": list(objects.get("bbox") or [])[:n_box]}
    if objects.get("image_id") is not None:
        kept["image_id"] = list(objects["image_id"])[:n_box]
    return kept


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _replace_each(text: str, placeholder: str, make) -> str:
    parts = text.split(placeholder)
    return parts[0] + "".join(make() + part for part in parts[1:])
