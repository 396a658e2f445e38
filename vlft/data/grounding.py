"""Grounding: absolute input boxes converted to a family's convention and written into the text."""

from __future__ import annotations

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
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        raise DataError(f"expected [x1, y1, x2, y2] numbers, got {box!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 < x1 or y2 < y1:
        raise DataError(f"box {list(box)} has x2 < x1 or y2 < y1")
    if x1 < 0 or y1 < 0 or x2 > geometry.width or y2 > geometry.height:
        raise DataError(f"box {list(box)} lies outside the image ({geometry.width}x{geometry.height})")
    return [x1, y1, x2, y2]


def fill_grounding(texts: list[str], objects: dict | None, geometries: list[ImageGeometry], family: Family) -> list[str]:
    """Replace `<ref-object>` and `<bbox>` placeholders, in order, by the objects' refs and converted boxes.

    `texts` are the message contents; a DataError names the field (`objects.bbox[1]`, ...) at fault.
    """
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
        if not isinstance(image_index, int) or not 0 <= image_index < len(geometries):
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


def _replace_each(text: str, placeholder: str, make) -> str:
    parts = text.split(placeholder)
    return parts[0] + "".join(make() + part for part in parts[1:])
