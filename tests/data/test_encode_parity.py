"""vlft's encoding against the HF processor with the family's real chat template and the real Qwen
tokenizer: same token ids, same pixel values and grids, for every family and conversation shape.

Images go through `processor.apply_chat_template(..., tokenize=True)`, which loads the files itself.
Videos go through the official Qwen pipeline of the seed docs (qwen-vl-utils' `fetch_video`, then the
processor with `do_resize=False`), since transformers' own video loading needs torchcodec.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from qwen_vl_utils import fetch_video
from transformers.video_utils import VideoMetadata

from tests.conftest import ENCODING_FAMILIES
from vlft.data.encode import IGNORE_INDEX, Encoder, EncodeSettings
from vlft.data.formats import to_sample
from vlft.data.template import load_template
from vlft.families import detect_family


def image(name):
    return {"type": "image", "image": name}


def video(name):
    return {"type": "video", "video": name}


def text(t):
    return {"type": "text", "text": t}


# Conversations in the HF content-list form; media names are files in the media_dir fixture.
SHAPES = {
    "text_only": [{"role": "user", "content": [text("Where is the capital of Zhejiang?")]},
                  {"role": "assistant", "content": "Hangzhou."}],
    "one_image": [{"role": "user", "content": [image("a.png"), text("What is in the image?")]},
                  {"role": "assistant", "content": "Noise."}],
    "several_images": [{"role": "user", "content": [image("a.png"), image("b.png"), text("Compare "),
                                                    image("c.jpg"), text(" with them.")]},
                       {"role": "assistant", "content": "All three are noise."}],
    "one_video": [{"role": "user", "content": [video("v.mp4"), text("Describe the video.")]},
                  {"role": "assistant", "content": "A bar moves right."}],
    "image_and_video": [{"role": "user", "content": [image("a.png"), text("What's in the image, "),
                                                     video("v.mp4"), text("what's in the video?")]},
                        {"role": "assistant", "content": "Noise, and a moving bar."}],
    "multi_turn_system": [{"role": "system", "content": [text("You are a helpful and harmless assistant")]},
                          {"role": "user", "content": [image("b.png"), text("Colour?")]},
                          {"role": "assistant", "content": "Many colours."},
                          {"role": "user", "content": [text("And\nnow?\n")]},
                          {"role": "assistant", "content": "\nStill many.  "}],
}


def to_vlft_row(messages, media_dir):
    """The seed's jsonl form: string contents with <image>/<video> placeholders, media lists beside."""
    row = {"messages": [], "images": [], "videos": []}
    for m in messages:
        if isinstance(m["content"], str):
            row["messages"].append({"role": m["role"], "content": m["content"]})
            continue
        parts = []
        for part in m["content"]:
            if part["type"] == "text":
                parts.append(part["text"])
            else:
                parts.append(f"<{part['type']}>")
                row[part["type"] + "s"].append(str(media_dir / part[part["type"]]))
        row["messages"].append({"role": m["role"], "content": "".join(parts)})
    return row


def with_paths(messages, media_dir):
    out = []
    for m in messages:
        content = m["content"]
        if not isinstance(content, str):
            content = [{**p, p["type"]: str(media_dir / p[p["type"]])} if p["type"] in ("image", "video") else p
                       for p in content]
        out.append({"role": m["role"], "content": content})
    return out


def hf_encode(processor, family, messages, add_generation_prompt):
    """Ground truth: what the HF processor (official template, real tokenizer) produces."""
    videos = [p["video"] for m in messages if not isinstance(m["content"], str)
              for p in m["content"] if p["type"] == "video"]
    if not videos:
        out = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt",
                                            add_generation_prompt=add_generation_prompt)
        return out
    # qwen-vl-utils picks its reader at import; without decord it falls back to torchvision's removed one
    pytest.importorskip("decord", reason="the qwen-vl-utils reference reads videos with decord")
    images = [Image.open(p["image"]).convert("RGB") for m in messages if not isinstance(m["content"], str)
              for p in m["content"] if p["type"] == "image"]
    text_ = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    frames, metadata = [], []
    for path in videos:
        v, meta = fetch_video({"video": path}, image_patch_size=family.patch_size, return_video_metadata=True)
        frames.append(v)
        metadata.append(VideoMetadata(**meta))
    return processor(text=[text_], images=images or None, videos=frames, video_metadata=metadata,
                     videos_kwargs={"do_resize": False, "do_sample_frames": False}, return_tensors="pt")


def make_encoder(family_name, tiny_model_dir, processor_of, **settings):
    model_dir = tiny_model_dir(family_name)
    family = detect_family(model_dir)
    processor = processor_of(family_name)
    return Encoder(family, load_template(family.template), processor.tokenizer, processor.image_processor,
                   processor.video_processor, EncodeSettings(**settings),
                   chat_template=processor.chat_template), family, processor


def assert_same_media(ours, theirs):
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
        mine = getattr(ours, key)
        if key not in theirs:
            assert mine is None, key
            continue
        assert mine is not None, key
        assert mine.shape == theirs[key].shape, key
        assert torch.equal(mine, theirs[key]), key


@pytest.mark.parametrize("family_name", ENCODING_FAMILIES)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_matches_hf_processor(family_name, shape, tiny_model_dir, processor_of, media_dir):
    encoder, family, processor = make_encoder(family_name, tiny_model_dir, processor_of)
    messages = SHAPES[shape]
    row = to_vlft_row(messages, media_dir)
    hf_messages = with_paths(messages, media_dir)

    full = encoder.encode(to_sample(row))
    expected_full = hf_encode(processor, family, hf_messages, add_generation_prompt=False)
    answers_start_with_space = any(m["content"][:1].isspace() for m in messages if m["role"] == "assistant")
    if not answers_start_with_space:
        assert full.input_ids == expected_full["input_ids"][0].tolist()
    assert_same_media(full, expected_full)
    lean = encoder.encode(to_sample(row), pixels=False)  # `vlft sft`'s pre-encode: grids from image sizes
    assert (lean.input_ids, lean.labels) == (full.input_ids, full.labels)
    assert lean.pixel_values is None  # images were checked and measured, not processed
    for key in ("image_grid_thw", "video_grid_thw"):
        if key in expected_full:
            assert torch.equal(getattr(lean, key), expected_full[key]), key
    if family.video_second_per_grid and "second_per_grid_ts" in expected_full:
        assert full.second_per_grid_ts == pytest.approx(list(map(float, expected_full["second_per_grid_ts"])))

    # The prompt part: everything before the last answer, with the generation prompt.
    prompt_row = {**row, "messages": row["messages"][:-1] + [{"role": "assistant", "content": ""}]}
    prompt_sample = to_sample(prompt_row)
    prompt_sample.messages = prompt_sample.messages[:-1]
    prompt = encoder.encode(prompt_sample, add_generation_prompt=True)
    expected_prompt = hf_encode(processor, family, hf_messages[:-1], add_generation_prompt=True)
    assert prompt.input_ids == expected_prompt["input_ids"][0].tolist()
    # Training ids are the prompt's ids followed by the answer tokenized on its own: what the model
    # generates after that prompt. (For an answer starting with whitespace, whole-text BPE as in HF's
    # full-conversation ids would merge its "\n" into the prompt's last token instead.)
    assert full.input_ids[:len(prompt.input_ids)] == prompt.input_ids
    # The answer as the official template writes it after that prompt (Qwen3.5's trims it).
    full_text = processor.apply_chat_template(hf_messages, tokenize=False)
    prompt_text = processor.apply_chat_template(hf_messages[:-1], tokenize=False, add_generation_prompt=True)
    assert full_text.startswith(prompt_text)
    answer = processor.tokenizer.encode(full_text[len(prompt_text):], add_special_tokens=False)
    assert full.input_ids[len(prompt.input_ids):] == answer


@pytest.mark.parametrize("family_name", ENCODING_FAMILIES)
@pytest.mark.parametrize("shape", ["text_only", "one_image", "multi_turn_system"])
def test_labels_are_exactly_the_assistant_turns(family_name, shape, tiny_model_dir, processor_of, media_dir):
    encoder, _, processor = make_encoder(family_name, tiny_model_dir, processor_of)
    encoded = encoder.encode(to_sample(to_vlft_row(SHAPES[shape], media_dir)))
    runs, current = [], []
    for token, label in zip(encoded.input_ids, encoded.labels):
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token
            current.append(token)
    if current:
        runs.append(current)
    decoded = [processor.tokenizer.decode(run) for run in runs]
    # Each answer as the official template writes it after its prompt (Qwen3.5's trims it), with the \n after
    # its <|im_end|> (ms-swift's and Qwen's fine-tuning labels); without it under --train_turn_separator false.
    messages = with_paths(SHAPES[shape], media_dir)
    answers = []
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            turn = processor.apply_chat_template(messages[:i + 1], tokenize=False)
            prompt = processor.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            assert turn.startswith(prompt) and turn.endswith("<|im_end|>\n")
            answers.append(turn[len(prompt):])
    assert decoded == answers
    untrained_separator, _, _ = make_encoder(family_name, tiny_model_dir, processor_of, train_turn_separator=False)
    old = untrained_separator.encode(to_sample(to_vlft_row(SHAPES[shape], media_dir)))
    assert old.input_ids == encoded.input_ids
    dropped = [i for i, (a, b) in enumerate(zip(encoded.labels, old.labels)) if a != b]
    assert len(dropped) == len(answers) and all(encoded.input_ids[i - 1] == processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
                                                and old.labels[i] == IGNORE_INDEX for i in dropped)
