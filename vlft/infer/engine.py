"""InferEngine: a base model (plus LoRA adapters) answering InferRequests, whole or streamed."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from pathlib import Path
from typing import Iterator

import torch

from vlft.arguments import InferArguments, TemplateArguments
from vlft.data.collator import media_inputs
from vlft.data.formats import to_sample
from vlft.data.mrope import mm_token_types
from vlft.data.pipeline import build_encoder
from vlft.errors import DataError, VlftError
from vlft.infer.protocol import (ChatCompletionResponse, ChatCompletionStreamResponse, ChatMessage, Choice,
                                 DeltaMessage, InferRequest, RequestConfig, StreamChoice, Usage)
from vlft.model.loading import load_pretrained, merge_adapter
from vlft.train.model import resolve_dtype

TEMPLATE_FIELDS = [f.name for f in dataclasses.fields(TemplateArguments)]


def with_training_settings(args: InferArguments) -> InferArguments:
    """Base model, family and media settings taken from the first adapter's args.json where unset."""
    if not args.adapters:
        return args
    from vlft.export.checkpoint import args_json_path, read_checkpoint_args

    if args.model and args_json_path(Path(args.adapters[0])) is None:
        return args  # an adapter dir without a run record: --model says the base
    trained = read_checkpoint_args(Path(args.adapters[0]))
    defaults = InferArguments(model="unused")
    updates = {name: trained[name] for name in ["model", "model_type", "template", *TEMPLATE_FIELDS]
               if name in trained and getattr(args, name) == getattr(defaults, name) and name != "model"}
    if not args.model:
        updates["model"] = trained.get("model")
        if not updates["model"]:
            raise VlftError(f"{args.adapters[0]}: args.json names no model; pass --model")
    return dataclasses.replace(args, **updates)


class InferEngine:
    """Loads the model once; `infer` answers a list of requests (ms-swift's PtEngine, vlft names)."""

    def __init__(self, model: str | None = None, adapters: list[str] | None = None, **settings):
        args = settings.pop("args", None) or InferArguments(model=model, adapters=list(adapters or []), **settings)
        self.args = with_training_settings(args)
        self.encoder, model_dir, self.family = build_encoder(self.args)
        self.base_model_dir = model_dir
        cuda = torch.cuda.is_available()
        self.model = load_pretrained(model_dir, resolve_dtype(self.args.torch_dtype, cuda),
                                     getattr(self.args, "attn_impl", None) or "sdpa")
        for adapter in self.args.adapters:
            self.model = _with_adapter(self.model, Path(adapter), model_dir)
        self.model.eval().to("cuda" if cuda else "cpu")
        self.model_name = self.args.adapters[-1] if self.args.adapters else str(self.args.model)
        tokenizer = self.encoder.tokenizer
        self.stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in self.encoder.template.stop_words]

    def infer(self, requests: list[InferRequest], request_config: RequestConfig | None = None):
        """A response per request; with `stream=True`, a generator of chunks per request."""
        config = request_config or RequestConfig()
        if config.stream:
            return [self._stream(r, config) for r in requests]
        size = self.args.max_batch_size
        return [answer for start in range(0, len(requests), size)
                for answer in self._answer_batch(requests[start:start + size], config)]

    def _inputs(self, request: InferRequest) -> dict:
        row = {"messages": request.messages, "images": request.images, "videos": request.videos}
        if request.objects:
            row["objects"] = request.objects
        if request.tools:
            row["tools"] = request.tools
        sample = to_sample(row, require_answer=False)
        if sample.messages and sample.messages[-1].role == "assistant":
            raise DataError("the last message is the assistant's: nothing to answer", field="messages")
        thinking = (request.chat_template_kwargs or {}).get("enable_thinking")
        encoded = self.encoder.encode(sample, add_generation_prompt=True, enable_thinking=thinking)
        ids = torch.tensor([encoded.input_ids])
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                  "mm_token_type_ids": mm_token_types(ids, self.encoder.image_pad_id, self.encoder.video_pad_id),
                  **media_inputs([encoded])}
        return {k: v.to(self.model.device) for k, v in inputs.items()}

    def _generate_kwargs(self, config: RequestConfig) -> dict:
        if config.seed is not None:
            torch.manual_seed(config.seed)
        sampling = config.temperature > 0
        kwargs = {"max_new_tokens": config.max_tokens, "do_sample": sampling, "eos_token_id": self.stop_ids,
                  "pad_token_id": self.encoder.tokenizer.pad_token_id,
                  "repetition_penalty": config.repetition_penalty}
        if sampling:
            kwargs.update(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k)
        if config.stop:  # generation ends at the token that completes one (the text still holds it)
            kwargs.update(stop_strings=list(config.stop), tokenizer=self.encoder.tokenizer)
        return kwargs

    def _answer_batch(self, requests: list[InferRequest], config: RequestConfig) -> list[ChatCompletionResponse]:
        """Generate for several requests at once: prompts left-padded, media concatenated in order."""
        each = [self._inputs(r) for r in requests]
        inputs = _left_padded(each, self.encoder.tokenizer.pad_token_id) if len(each) > 1 else each[0]
        with torch.no_grad():
            out = self.model.generate(**inputs, **self._generate_kwargs(config))
        prompt_length = inputs["input_ids"].shape[1]
        responses = []
        for row, single in zip(out, each):
            new = row[prompt_length:].tolist()
            stop = next((i for i, t in enumerate(new) if t in self.stop_ids), None)
            finished = stop is not None
            new = new[:stop + 1] if finished else new
            text = self.encoder.tokenizer.decode(new, skip_special_tokens=True)
            responses.append(ChatCompletionResponse(
                model=self.model_name, usage=Usage(single["input_ids"].shape[1], len(new)),
                choices=[Choice(0, ChatMessage("assistant", text), "stop" if finished else "length")]))
        return responses

    def _stream(self, request: InferRequest, config: RequestConfig) -> Iterator[ChatCompletionStreamResponse]:
        from transformers import TextIteratorStreamer

        inputs = self._inputs(request)  # errors surface here, before the generator starts
        streamer = TextIteratorStreamer(self.encoder.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = {**inputs, **self._generate_kwargs(config), "streamer": streamer}
        chunk_id = f"chatcmpl-{uuid.uuid4().hex}"

        def chunks():
            errors: list[BaseException] = []
            thread = threading.Thread(target=self._generate_quietly, args=(errors,), kwargs=kwargs, daemon=True)
            thread.start()
            for piece in streamer:
                if piece:
                    yield ChatCompletionStreamResponse(self.model_name, [StreamChoice(0, DeltaMessage(
                        "assistant", piece))], chunk_id)
            thread.join()
            if errors:  # e.g. out of memory inside generate: the caller sees it instead of a silent stop
                raise errors[0]
            # content "" (not None): the ms-swift snippet prints each delta's content, the last one included
            yield ChatCompletionStreamResponse(self.model_name, [StreamChoice(0, DeltaMessage(content=""), "stop")],
                                               chunk_id)

        return chunks()

    def _generate_quietly(self, errors: list, **kwargs) -> None:
        try:
            with torch.no_grad():
                self.model.generate(**kwargs)
        except Exception as e:  # the streamer would otherwise wait for tokens forever
            errors.append(e)
            kwargs["streamer"].end()


def _left_padded(inputs: list[dict], pad_id: int) -> dict:
    """One batch from single-request inputs: token tensors left-padded, media tensors concatenated."""
    longest = max(x["input_ids"].shape[1] for x in inputs)
    batch: dict = {}
    for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("mm_token_type_ids", 0)):
        batch[key] = torch.cat([torch.nn.functional.pad(x[key], (longest - x[key].shape[1], 0), value=fill)
                                for x in inputs])
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
        parts = [x[key] for x in inputs if key in x]
        if parts:
            batch[key] = torch.cat(parts)
    return batch


def _with_adapter(model, adapter: Path, base_model_dir: Path):
    """The model with a LoRA checkpoint applied and merged (so several can stack)."""
    from vlft.export.merge import check_adapter_fits

    if not (adapter / "adapter_config.json").is_file():
        raise VlftError(f"--adapters {adapter}: no adapter_config.json (not a LoRA checkpoint)")
    check_adapter_fits(adapter, model, base_model_dir)
    return merge_adapter(model, adapter)
