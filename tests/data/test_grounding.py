"""Grounding boxes: converted to each family's convention (hand-computed values) and written into the
text exactly where the HF template would put the same strings."""

from __future__ import annotations

import pytest

from tests.conftest import ENCODING_FAMILIES
from tests.data.test_encode_parity import hf_encode, make_encoder, with_paths
from vlft.data.formats import to_sample
from vlft.data.grounding import ImageGeometry, check_box, check_objects, convert_box, fill_grounding
from vlft.errors import DataError
from vlft.families import get_family

# a.png is 96x64. Qwen2.5-VL resizes it to 84x56 (smart_resize with factor 28: round(64/28)=2, round(96/28)=3).
BOX = [9, 8, 31, 33]
# 0-1000: 9/96 -> 93.75 -> 94; 8/64 -> 125; 31/96 -> 322.9 -> 323; 33/64 -> 515.6 -> 516
NORM1000 = [94, 125, 323, 516]
# resized pixels: 9*84/96 = 7.875 -> 8; 8*56/64 = 7; 31*84/96 = 27.125 -> 27; 33*56/64 = 28.875 -> 29
RESIZED = [8, 7, 27, 29]
EXPECTED_TEXT = {
    "qwen3_vl": "[94, 125, 323, 516]",
    "qwen3_vl_moe": "[94, 125, 323, 516]",
    "qwen3_5": "[94, 125, 323, 516]",  # Qwen3.5 keeps Qwen3-VL's 0-1000 boxes (as ms-swift's qwen3_5 template)
    "qwen3_5_moe": "[94, 125, 323, 516]",
    "qwen2_5_vl": "[8, 7, 27, 29]",
    "qwen2_vl": "<|box_start|>(94,125),(323,516)<|box_end|>",
}
EXPECTED_REF = {"qwen2_vl": "<|object_ref_start|>square<|object_ref_end|>"}


def test_convert_box_by_hand():
    geometry = ImageGeometry(width=96, height=64, resized_width=84, resized_height=56)
    assert convert_box(BOX, geometry, "norm1000") == NORM1000
    assert convert_box(BOX, geometry, "resized_pixels") == RESIZED
    whole = ImageGeometry(200, 100, 224, 112)
    assert convert_box([0, 0, 200, 100], whole, "norm1000") == [0, 0, 1000, 1000]
    assert convert_box([0, 0, 200, 100], whole, "resized_pixels") == [0, 0, 224, 112]


@pytest.mark.parametrize("box, problem", [
    ([10, 10, 5, 20], "x2 < x1"),
    ([10, 30, 20, 20], "y2 < y1"),
    ([10, 10, 97, 20], "outside the image (96x64)"),
    ([-1, 10, 20, 20], "outside the image"),
    ([1, 2, 3], "expected [x1, y1, x2, y2]"),
])
def test_bad_boxes(box, problem):
    with pytest.raises(DataError, match=problem.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        check_box(box, ImageGeometry(96, 64, 84, 56))


def test_fill_names_the_box_at_fault():
    geometry = ImageGeometry(96, 64, 84, 56)
    texts = ["<image>Find <ref-object>", "<bbox> and <bbox>"]
    objects = {"ref": ["cat"], "bbox": [[1, 1, 5, 5], [1, 1, 500, 5]]}
    with pytest.raises(DataError) as e:
        fill_grounding(texts, objects, [geometry], get_family("qwen3_vl"))
    assert e.value.field == "objects.bbox[1]"
    with pytest.raises(DataError, match="2 <bbox> placeholders but 1 boxes given"):
        fill_grounding(texts, {"ref": ["cat"], "bbox": [[1, 1, 5, 5]]}, [geometry], get_family("qwen3_vl"))


@pytest.mark.parametrize("family_name", ENCODING_FAMILIES)
def test_grounding_through_the_encoder_matches_hf(family_name, tiny_model_dir, processor_of, media_dir):
    encoder, family, processor = make_encoder(family_name, tiny_model_dir, processor_of)
    row = {"messages": [{"role": "user", "content": "<image>Locate the <ref-object> in the image"},
                        {"role": "assistant", "content": '[{"bbox_2d": <bbox>, "label": "<ref-object>"}]'}],
           "images": [str(media_dir / "a.png")], "objects": {"ref": ["square", "square"], "bbox": [BOX]}}
    ref = EXPECTED_REF.get(family_name, "square")
    messages = [{"role": "user", "content": [{"type": "image", "image": "a.png"},
                                             {"type": "text", "text": f"Locate the {ref} in the image"}]},
                {"role": "assistant", "content": f'[{{"bbox_2d": {EXPECTED_TEXT[family_name]}, "label": "{ref}"}}]'}]
    expected = hf_encode(processor, family, with_paths(messages, media_dir), add_generation_prompt=False)
    assert encoder.encode(to_sample(row)).input_ids == expected["input_ids"][0].tolist()
    # Grids (and the resized size the boxes are converted to) from the image's size alone, as `vlft sft` encodes.
    assert encoder.encode(to_sample(row), pixels=False).input_ids == expected["input_ids"][0].tolist()


@pytest.mark.parametrize("box, problem", [
    ([float("nan"), 1, 5, 5], "not a finite number"),
    ([1, 1, float("inf"), 5], "not a finite number"),
    ([1, 1, 10**400, 5], "not a finite number"),
    ([True, 1, 5, 5], "expected [x1, y1, x2, y2] numbers"),
])
def test_boxes_that_are_not_finite_numbers(box, problem):
    with pytest.raises(DataError) as info:
        check_box(box, ImageGeometry(96, 64, 84, 56))
    assert problem in str(info.value)


@pytest.mark.parametrize("objects, field", [
    ({"ref": "cat", "bbox": [[1, 1, 5, 5]]}, "objects.ref"),  # a string would be read one letter per ref
    ({"ref": ["cat"], "bbox": 5}, "objects.bbox"),
    ({"ref": [3], "bbox": [[1, 1, 5, 5]]}, "objects.ref[0]"),
    ({"ref": ["cat"], "bbox": [[1, 1, 5, 5]], "image_id": [0, 0]}, "objects.image_id"),
    ({"ref": ["cat"], "bbox": [[1, 1, 5, 5]], "bbox_type": "norm1000"}, "objects.bbox_type"),
])
def test_malformed_objects_name_the_field(objects, field):
    with pytest.raises(DataError) as info:
        check_objects(objects)
    assert info.value.field == field
