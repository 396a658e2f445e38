"""Encoding a `Sample` into the exact tokens and tensors a Qwen-VL model sees, labels included.

The conversation is rendered to text with one pad token per image/video, tokenized once (so the ids
equal the HF processor's), labelled from character offsets, and then each pad is expanded into the
number of vision tokens the processor's grid gives.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers.video_utils import VideoMetadata

from vlft.data.control_tokens import ControlTokens
from vlft.data.grounding import ImageGeometry, fill_grounding
from vlft.data.image_grid import grid_from_size
from vlft.data.loss_scale import LossScale, parse_loss_scale
from vlft.data.media import MAX_IMAGE_PIXELS, image_size, load_image, local_video_path
from vlft.data.sample import Message, Sample
from vlft.data.template import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, Template, render, template_style
from vlft.data.truncate import truncate
from vlft.data.video import VideoFrames, VideoSampling, read_video
from vlft.errors import DataError
from vlft.families.base import Family, frame_timestamps

IGNORE_INDEX = -100
PROMPT_ROLES = ("user", "tool")  # turns truncation never cuts through (a tool result is wrapped in a user turn)


class TooLongError(DataError):
    """A sample over --max_length that --truncation_strategy delete drops (and reports)."""
TruncationStrategy = Literal["delete", "left", "right", "error"]


@dataclass(frozen=True)
class EncodeSettings:
    """Everything besides the model that decides a sample's encoding (part of the cache key)."""

    max_length: int | None = None
    truncation_strategy: TruncationStrategy = "delete"
    loss_scale: str = "default"  # loss_scale.parse_loss_scale's forms ("last_round+ignore_empty_think", "hermes", ...)
    enable_thinking: bool | None = None  # Qwen3.5: None leaves it to the template / the checkpoint's default
    # Qwen3.5: the thinking of assistant turns before the last user query kept. None: as the chat template writes
    # them (dropped), as HF's processor and LLaMA-Factory do; ms-swift keeps them when training every turn.
    preserve_thinking: bool | None = None
    disable_ignore_empty_think: bool = False
    system: str | None = None
    image_min_pixels: int | None = None  # None: the processor's own setting
    image_max_pixels: int | None = None
    video: VideoSampling = field(default_factory=VideoSampling)
    max_image_pixels: int = MAX_IMAGE_PIXELS  # larger images and video frames are refused, not decoded
    # Control tokens typed in a message (`<|im_start|>`, `<|im_end|>`, ...): an error by default; True encodes
    # them as plain text, as a tokenizer with split_special_tokens does.
    split_special_tokens: bool = False
    # The `\n` after each trained assistant turn's end is trained (as ms-swift and Qwen's fine-tuning code do).
    train_turn_separator: bool = True
    # --new_special_tokens: added to the tokenizer (build_encoder), and allowed in messages' text
    new_special_tokens: tuple[str, ...] = ()


@dataclass
class EncodedSample:
    """Model inputs of one sample; media tensors are concatenated over its images / videos."""

    input_ids: list[int]
    labels: list[int]
    # --loss_scale's weight of each token (loss_scale.py), where a weighting gives weights other than 0 and 1;
    # None: every trained token weighs 1
    loss_scale: list[float] | None = None
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None  # (n_images, 3)
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None  # (n_videos, 3)
    second_per_grid_ts: list[float] | None = None  # Qwen2.5-VL only
    source: str | None = None
    line: int | None = None
    truncated: bool = False
    dropped: str | None = None  # what --truncation_strategy left|right cut away ("tokens 0-811: 1 image, ...")
    # Set when the pixel values were left out (see `without_pixels`): the parsed row, to make them again.
    sample: Sample | None = field(default=None, repr=False, compare=False)

    @property
    def length(self) -> int:
        return len(self.input_ids)


def without_pixels(encoded: EncodedSample, sample: Sample) -> EncodedSample:
    """`encoded` holding ids, labels and grids but no pixel values; `Encoder.with_pixels` makes them again.

    Pixel values are float32 patches (about 4.6 MiB per 448x448 image): kept for a whole dataset they
    would fill memory and the encoding cache. Training makes them when a batch is fetched instead, in
    the data-loader workers."""
    if encoded.image_grid_thw is None and encoded.video_grid_thw is None:
        return encoded
    return dataclasses.replace(encoded, pixel_values=None, pixel_values_videos=None, sample=sample)


@dataclass
class MediaSpan:
    """Token range [start, end) of one image or video (vision_start..vision_end inclusive)."""

    kind: Literal["image", "video"]
    index: int
    start: int
    end: int


class Encoder:
    """Turns samples into `EncodedSample`s for one model family, tokenizer and processor."""

    def __init__(self, family: Family, template: Template, tokenizer, image_processor, video_processor,
                 settings: EncodeSettings, chat_template: str | None = None, processor=None):
        self.family = family
        self.template = template
        self.processor = processor  # the HF processor of the parts, if given: vlft sft saves it with its checkpoints
        # A render hook follows the checkpoint's own chat template where checkpoints differ (Qwen3.5: thinking
        # on or off by default, Qwen3.6's argument serialisation).
        self.style = template_style(template, chat_template)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.video_processor = video_processor
        self.settings = settings
        ids = tokenizer.convert_tokens_to_ids
        self.image_pad_id = ids(template.image_pad)
        self.video_pad_id = ids(template.video_pad)
        self.vision_start_id = ids(template.vision_start)
        self.vision_end_id = ids(template.vision_end)
        self.control = ControlTokens.of(tokenizer, family.tokenizer.token_names)
        self.loss_scale = parse_loss_scale(settings.loss_scale)
        self.prompt_turn_starts = [tokenizer.encode(template.turn_start.format(role=role), add_special_tokens=False)
                                   for role in PROMPT_ROLES]

    def encode(self, sample: Sample, *, add_generation_prompt: bool = False, pixels: bool = True,
               enable_thinking: bool | None = None, preserve_thinking: bool | None = None) -> EncodedSample:
        """The sample's model inputs; DataError (placed at the sample's file and line) on bad input. Without
        `pixels`, images may come back with their grids only (image_grid.py); every check still runs.
        `enable_thinking` / `preserve_thinking` (a request's chat_template_kwargs) override the settings'."""
        try:
            return self._encode(sample, add_generation_prompt, pixels, enable_thinking, preserve_thinking)
        except DataError as e:
            raise e.at(sample.source, sample.line) from None

    def _preserves_thinking(self, asked: bool | None) -> bool:
        """Whether earlier assistant turns keep their thinking: as asked (the call, then the settings), else as
        the checkpoint's chat template writes them (HF's processor and LLaMA-Factory too; ms-swift keeps them in
        training unless loss_scale is last_round: --preserve_thinking true)."""
        asked = self.settings.preserve_thinking if asked is None else asked
        return bool(asked)

    def with_pixels(self, encoded: EncodedSample) -> EncodedSample:
        """`encoded` with its pixel values: made again from its sample when `without_pixels` left them out."""
        if encoded.sample is None:
            return encoded
        again = self.encode(encoded.sample)
        if again.input_ids != encoded.input_ids:  # e.g. an image file replaced by one of another size
            raise DataError("its media changed since the dataset was encoded (the tokens differ now); run again "
                            "with --load_from_cache_file false").at(encoded.source, encoded.line)
        return again

    def _encode(self, sample: Sample, add_generation_prompt: bool, pixels: bool = True,
                enable_thinking: bool | None = None, preserve_thinking: bool | None = None) -> EncodedSample:
        messages = list(sample.messages)
        if self.settings.system is not None and not (messages and messages[0].role == "system"):
            messages.insert(0, Message("system", self.settings.system, where="--system"))
        _check_placeholders(messages, IMAGE_PLACEHOLDER, len(sample.images), "images")
        _check_placeholders(messages, VIDEO_PLACEHOLDER, len(sample.videos), "videos")
        _check_media_roles(messages, self.template)
        grids_only = None if pixels else self._image_grids(sample)
        image_inputs, geometries = grids_only or self._process_images(sample)
        video_inputs, videos = self._process_videos(sample)
        texts = fill_grounding([m.content for m in messages], sample.objects, geometries, self.family)
        messages = [dataclasses.replace(m, content=t) for m, t in zip(messages, texts)]
        _check_text(messages)
        tools = sample.tools
        if self.settings.split_special_tokens:  # typed control tokens become sentinels, tokenized as text
            messages, tools = self.control.hide(messages, tools)
        else:
            self.control.refuse(messages, tools)
        segments = render(self.template, messages, loss_scale=self.settings.loss_scale,
                          add_generation_prompt=add_generation_prompt, tools=tools,
                          enable_thinking=self.settings.enable_thinking if enable_thinking is None else enable_thinking,
                          preserve_thinking=self._preserves_thinking(preserve_thinking),
                          style=self.style,
                          disable_ignore_empty_think=self.settings.disable_ignore_empty_think,
                          train_turn_separator=self.settings.train_turn_separator)
        input_ids, labels, weights = self._tokenize(segments)
        input_ids, labels, weights, spans = self._expand_media(input_ids, labels, weights, image_inputs,
                                                               video_inputs, videos)
        if all(w in (0.0, 1.0) for w in weights):  # the labels say it all (ms-swift's binary loss scale)
            weights = None
        encoded = EncodedSample(input_ids=input_ids, labels=labels, loss_scale=weights, source=sample.source,
                                line=sample.line, **image_inputs, **video_inputs)
        if self.settings.max_length is not None and encoded.length > self.settings.max_length:
            encoded = self._truncate(encoded, spans)
        if not add_generation_prompt and not any(label != IGNORE_INDEX for label in encoded.labels[1:]):
            # Nothing to learn from: its loss would be 0/0 (NaN) and poison the logged mean.
            raise DataError("no token of this line is trained (every assistant turn has loss false, or "
                            "--loss_scale leaves none); it would give a NaN loss", field="messages")
        return encoded

    def _tokenize(self, segments) -> tuple[list[int], list[int], list[float]]:
        """Ids, labels and each token's weight (0 where untrained). Runs of equal weight are tokenized separately:
        the prompt before an answer is then exactly the HF processor's (add_generation_prompt=True) and the answer
        exactly what the model generates after it. (Whole-text BPE could merge an answer's leading "\n" into the
        prompt's last token.) --loss_scale's weightings weigh each trained segment (an answer, a turn's end, under
        `all` any turn) on its own; neighbouring pieces of one weight are then joined, as ms-swift does."""
        input_ids: list[int] = []
        labels: list[int] = []
        weights: list[float] = []
        for run, weight in _runs(segments, self.loss_scale):
            if self.settings.split_special_tokens:
                ids = self.control.encode_hidden(self.tokenizer, run)
            else:
                ids = self.tokenizer.encode(run, add_special_tokens=False)
            input_ids += ids
            labels += ids if weight else [IGNORE_INDEX] * len(ids)
            weights += [weight] * len(ids)
        return input_ids, labels, weights

    def _image_size_bounds(self) -> dict:
        """--min_pixels / --max_pixels (and their token forms) as the processor's size override."""
        size = {}
        if self.settings.image_min_pixels is not None:
            size["shortest_edge"] = self.settings.image_min_pixels
        if self.settings.image_max_pixels is not None:
            size["longest_edge"] = self.settings.image_max_pixels
        return size

    def _image_grids(self, sample: Sample) -> tuple[dict, list[ImageGeometry]] | None:
        """Image grids and geometries from the images' sizes, checked but not kept (media.image_size); None
        where grid_from_size does not know the processor's rule."""
        if not sample.images:
            return {}, []
        grids, geometries = [], []
        for i, ref in enumerate(sample.images):
            try:
                width, height = image_size(ref, sample.base_dir, self.settings.max_image_pixels)
            except DataError as e:
                raise e.within(f"images[{i}]") from None
            try:
                grid = grid_from_size(self.image_processor, width, height, self._image_size_bounds())
            except ValueError as e:  # as the processor raises it: an aspect ratio over 200
                raise DataError(f"cannot process image: {e}", field="images") from None
            if grid is None:
                return None
            grids.append(grid)
            patch = self.image_processor.patch_size
            geometries.append(ImageGeometry(width, height, grid[2] * patch, grid[1] * patch))
        return {"image_grid_thw": torch.tensor(grids)}, geometries

    def _process_images(self, sample: Sample) -> tuple[dict, list[ImageGeometry]]:
        if not sample.images:
            return {}, []
        images = []
        for i, ref in enumerate(sample.images):
            try:
                images.append(load_image(ref, sample.base_dir, self.settings.max_image_pixels))
            except DataError as e:
                raise e.within(f"images[{i}]") from None
        kwargs = {}
        if bounds := self._image_size_bounds():  # shortest/longest_edge are total pixel bounds for Qwen-VL
            kwargs["size"] = {**dict(self.image_processor.size), **bounds}
        try:
            out = self.image_processor(images=images, return_tensors="pt", **kwargs)
        except ValueError as e:  # e.g. an aspect ratio over 200
            raise DataError(f"cannot process image: {e}", field="images") from None
        grid = out["image_grid_thw"]
        patch = self.image_processor.patch_size
        geometries = [
            ImageGeometry(im.width, im.height, int(g[2]) * patch, int(g[1]) * patch) for im, g in zip(images, grid)
        ]
        return {"pixel_values": out["pixel_values"], "image_grid_thw": grid}, geometries

    def _process_videos(self, sample: Sample) -> tuple[dict, list[VideoFrames]]:
        if not sample.videos:
            return {}, []
        videos = []
        for i, ref in enumerate(sample.videos):
            try:
                videos.append(read_video(local_video_path(ref, sample.base_dir), self.settings.video,
                                         self.family.image_factor, self.settings.max_image_pixels))
            except DataError as e:
                raise e.within(f"videos[{i}]") from None
        metadata = [VideoMetadata(total_num_frames=v.total_frames, fps=v.video_fps, frames_indices=v.frame_indices)
                    for v in videos]
        extra = {"cap_pixels_per_frame": False} if hasattr(self.video_processor, "cap_pixels_per_frame") else {}
        # Frames are already sampled and sized by read_video (qwen-vl-utils' rules), so no resize here.
        out = self.video_processor(videos=[v.frames for v in videos], video_metadata=metadata, do_resize=False,
                                   do_sample_frames=False, return_tensors="pt", **extra)
        inputs = {"pixel_values_videos": out["pixel_values_videos"], "video_grid_thw": out["video_grid_thw"]}
        if self.family.video_second_per_grid:
            inputs["second_per_grid_ts"] = [self.family.temporal_patch_size / v.sample_fps for v in videos]
        return inputs, videos

    def _expand_media(self, input_ids, labels, weights, image_inputs, video_inputs, videos):
        merge = self.family.merge_size**2
        image_grid = image_inputs.get("image_grid_thw")
        video_grid = video_inputs.get("video_grid_thw")
        ids_out: list[int] = []
        labels_out: list[int] = []
        weights_out: list[float] = []
        spans: list[MediaSpan] = []
        n_image = n_video = 0
        done = 0  # input tokens copied so far; the text between placeholders is copied in slices
        pads = (self.image_pad_id, self.video_pad_id)
        for at in [i for i, token_id in enumerate(input_ids) if token_id in pads]:
            ids_out += input_ids[done:at]
            labels_out += labels[done:at]
            weights_out += weights[done:at]
            done = at + 1
            if input_ids[at] == self.image_pad_id:
                expansion = [self.image_pad_id] * (int(image_grid[n_image].prod()) // merge)
                spans.append(MediaSpan("image", n_image, len(ids_out) - 1, len(ids_out) + len(expansion) + 1))
                n_image += 1
            else:
                expansion = self._video_tokens(video_grid[n_video], videos[n_video])
                spans.append(MediaSpan("video", n_video, len(ids_out) - 1, len(ids_out) + len(expansion) + 1))
                n_video += 1
            ids_out += expansion
            labels_out += [IGNORE_INDEX] * len(expansion)
            weights_out += [0.0] * len(expansion)
        ids_out += input_ids[done:]
        labels_out += labels[done:]
        weights_out += weights[done:]
        return ids_out, labels_out, weights_out, spans

    def _video_tokens(self, grid_thw: torch.Tensor, video: VideoFrames) -> list[int]:
        t, h, w = (int(v) for v in grid_thw)
        per_frame = h * w // self.family.merge_size**2
        if not self.family.video_timestamps:
            return [self.video_pad_id] * (t * per_frame)
        # Qwen3-VL: each temporal patch group is `<t seconds><|vision_start|>pads<|vision_end|>`,
        # inside the template's own vision_start/vision_end pair.
        seconds = frame_timestamps(video.frame_indices, video.video_fps, self.family.temporal_patch_size)
        tokens: list[int] = []
        for second in seconds[:t]:
            tokens += self.tokenizer.encode(f"<{second:.1f} seconds>", add_special_tokens=False)
            tokens += [self.vision_start_id] + [self.video_pad_id] * per_frame + [self.vision_end_id]
        return tokens

    def _truncate(self, encoded: EncodedSample, spans: list[MediaSpan]) -> EncodedSample:
        strategy = self.settings.truncation_strategy
        if strategy == "delete":
            raise TooLongError(f"sample is {encoded.length} tokens, over --max_length {self.settings.max_length} "
                               "(dropped; --truncation_strategy left|right cuts it instead)")
        if strategy == "error":
            raise DataError(f"sample is {encoded.length} tokens, over --max_length {self.settings.max_length}")
        return truncate(encoded, spans, self._prompt_turns(encoded.input_ids), self.settings.max_length, strategy)

    def _prompt_turns(self, input_ids: list[int]) -> list[tuple[int, int]]:
        """Token ranges [start, end) of the user and tool turns: from their turn start to the next turn's."""
        turn_start_id = self.prompt_turn_starts[0][0]
        starts = [i for i, token in enumerate(input_ids) if token == turn_start_id]
        turns = []
        for n, at in enumerate(starts):
            end = starts[n + 1] if n + 1 < len(starts) else len(input_ids)
            if any(input_ids[at:at + len(p)] == p for p in self.prompt_turn_starts):
                turns.append((at, end))
        return turns


def _runs(segments, loss_scale: LossScale) -> list[tuple[str, float]]:
    """The segments' text in runs of one weight: 0 for untrained segments, a trained segment's pieces weighed by
    --loss_scale (1 without weightings); neighbours of equal weight joined."""
    runs: list[tuple[str, float]] = []
    for segment in segments:
        for text, weight in loss_scale.weigh(segment.text) if segment.trained else [(segment.text, 0.0)]:
            if runs and runs[-1][1] == weight:
                runs[-1] = (runs[-1][0] + text, weight)
            elif text:
                runs.append((text, weight))
    return runs


def _check_placeholders(messages: list[Message], placeholder: str, given: int, media_field: str) -> None:
    counts = [m.content.count(placeholder) for m in messages]
    total = sum(counts)
    if total == given:
        return
    noun = media_field[:-1] if given == 1 else media_field
    if total > given:
        seen = 0
        for i, count in enumerate(counts):
            seen += count
            if seen > given:
                raise DataError(f"{seen} {placeholder} placeholders up to here but {given} {noun} given",
                                field=messages[i].where or f"messages[{i}].content")
    raise DataError(f"{given} {noun} given but {total} {placeholder} placeholders in the messages", field=media_field)


LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # JSON may escape one ("\\ud800"); no tokenizer takes it


def _check_text(messages: list[Message]) -> None:
    """DataError for text the tokenizer cannot take."""
    for i, message in enumerate(messages):
        for where, text in message.rendered_texts(i):
            surrogate = LONE_SURROGATE.search(text)
            if surrogate:
                raise DataError(f"lone surrogate \\u{ord(surrogate.group()):04x} at character {surrogate.start() + 1} "
                                "(not valid Unicode)", field=where)


def _check_media_roles(messages: list[Message], template: Template) -> None:
    """Media placeholders only in the turns whose media the checkpoint's chat template renders (Qwen3-VL's drops
    images of system and assistant turns, Qwen3.5's refuses them in the system turn)."""
    for i, message in enumerate(messages):
        if message.role in template.media_roles:
            continue
        for placeholder in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER):
            if placeholder in message.content:
                roles = " and ".join(template.media_roles)
                raise DataError(f"{placeholder} in a {message.role} turn: the {template.name} chat template renders "
                                f"media in {roles} turns only", field=message.where or f"messages[{i}].content")
