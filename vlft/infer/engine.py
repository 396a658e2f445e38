"""InferEngine: a base model (plus LoRA adapters) answering InferRequests, whole or streamed."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import torch
from transformers import LogitsProcessorList

from vlft.arguments import InferArguments, TemplateArguments
from vlft.data.collator import media_inputs
from vlft.data.formats import to_sample
from vlft.data.mrope import mm_token_types
from vlft.data.pipeline import build_encoder
from vlft.errors import DataError, VlftError
from vlft.infer.adapters import active_adapter, adapter_specs, served_name, with_named_adapters
from vlft.infer.engine_stream import stream_chunks
from vlft.infer.logprobs import LogprobRecorder, openai_logprobs
from vlft.infer.protocol import ChatCompletionResponse, ChatMessage, Choice, InferRequest, RequestConfig, Usage
from vlft.infer.tool_calls import ToolCall, tool_calls
from vlft.model.loading import fit_embeddings, load_pretrained, merge_adapter
from vlft.train.model import resolve_dtype

TEMPLATE_FIELDS = [f.name for f in dataclasses.fields(TemplateArguments)]


def with_training_settings(args: InferArguments) -> InferArguments:
    """Base model, family and media settings taken from the first adapter's args.json where unset."""
    first = adapter_specs(args.adapters).first_path
    if first is None:
        return args
    from vlft.export.checkpoint import args_json_path, read_checkpoint_args

    if args.model and args_json_path(first) is None:
        return args  # an adapter dir without a run record: --model says the base
    trained = read_checkpoint_args(first)
    defaults = InferArguments(model="unused")
    updates = {name: trained[name] for name in ["model", "model_type", "template", *TEMPLATE_FIELDS]
               if name in trained and getattr(args, name) == getattr(defaults, name) and name != "model"}
    if not args.model:
        updates["model"] = trained.get("model")
        if not updates["model"]:
            raise VlftError(f"{first}: args.json names no model; pass --model")
    return dataclasses.replace(args, **updates)


def context_length(model, args) -> int | None:
    """--max_model_len where the arguments have it (vlft deploy), else the model's max_position_embeddings."""
    if getattr(args, "max_model_len", None):
        return args.max_model_len
    config = getattr(model.config, "text_config", model.config)
    return getattr(config, "max_position_embeddings", None)


class InferEngine:
    """Loads the model once; `infer` answers a list of requests (ms-swift's PtEngine, vlft names)."""

    def __init__(self, model: str | None = None, adapters: list[str] | None = None, **settings):
        args = settings.pop("args", None) or InferArguments(model=model, adapters=list(adapters or []), **settings)
        self.args = with_training_settings(args)
        specs = adapter_specs(self.args.adapters)
        self.encoder, model_dir, self.family = build_encoder(self.args)
        self.base_model_dir = model_dir
        cuda = torch.cuda.is_available()
        loaded = load_pretrained(model_dir, resolve_dtype(self.args.torch_dtype, cuda),
                                 getattr(self.args, "attn_impl", None) or "sdpa")
        fit_embeddings(loaded, len(self.encoder.tokenizer))  # the run's --new_special_tokens beyond the free rows
        for adapter in specs.merged:
            loaded = _with_adapter(loaded, adapter, model_dir)
        self.model = with_named_adapters(loaded, specs.named, model_dir)
        self.model.eval().to("cuda" if cuda else "cpu")
        self.adapter_names = list(specs.named)  # served beside the base, chosen per call (infer's `adapter`)
        self.model_name = served_name(self.args.model, specs)
        self.max_model_len = context_length(self.model, self.args)
        tokenizer = self.encoder.tokenizer
        self.stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in self.encoder.template.stop_words]

    def infer(self, requests: list[InferRequest], request_config: RequestConfig | None = None, *,
              adapter: str | None = None, cancel: threading.Event | None = None):
        """A response per request; with `stream=True`, a generator of chunks per request. `adapter` names one of
        the named adapters (None: the base); setting `cancel` ends streamed generation at the next token."""
        config = request_config or RequestConfig()
        if config.stream:
            return [self._stream(r, config, adapter, cancel) for r in requests]
        size = self.args.max_batch_size
        return [answer for start in range(0, len(requests), size)
                for answer in self._answer_batch(requests[start:start + size], config, adapter)]

    def _inputs(self, request: InferRequest) -> dict:
        row = {"messages": request.messages, "images": request.images, "videos": request.videos}
        if request.objects:
            row["objects"] = request.objects
        if request.tools:
            row["tools"] = request.tools
        sample = to_sample(row, require_answer=False)
        if sample.messages and sample.messages[-1].role == "assistant":
            raise DataError("the last message is the assistant's: nothing to answer", field="messages")
        switches = request.chat_template_kwargs or {}
        encoded = self.encoder.encode(sample, add_generation_prompt=True,
                                      enable_thinking=switches.get("enable_thinking"),
                                      preserve_thinking=switches.get("preserve_thinking"))
        ids = torch.tensor([encoded.input_ids])
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                  "mm_token_type_ids": mm_token_types(ids, self.encoder.image_pad_id, self.encoder.video_pad_id),
                  **media_inputs([encoded])}
        return {k: v.to(self.model.device) for k, v in inputs.items()}

    def answer(self, tokens: list[int]) -> str:
        """A generated answer's text (answer_text)."""
        return answer_text(self.encoder.tokenizer, tokens, self.stop_ids)

    def tool_calls(self, answer: str) -> list[ToolCall] | None:
        """The tool calls written in an answer, in the template's tool format (tool_calls.py)."""
        return tool_calls(answer, self.encoder.template.agent_template)

    def max_tokens(self, config: RequestConfig, prompt_tokens: int) -> int:
        """The tokens to generate after a prompt: the request's max_tokens (refused above what the context
        leaves), or --max_new_tokens cut to what it leaves."""
        left = None if self.max_model_len is None else self.max_model_len - prompt_tokens
        if left is not None and left < 1:
            raise DataError(f"the prompt is {prompt_tokens} tokens, which leaves none of --max_model_len "
                            f"{self.max_model_len} for the answer", field="messages")
        if config.max_tokens is None:
            return self.args.max_new_tokens if left is None else min(self.args.max_new_tokens, left)
        if left is not None and config.max_tokens > left:
            raise DataError(f"{config.max_tokens} is above the {left} tokens that the {prompt_tokens}-token prompt "
                            f"leaves of --max_model_len {self.max_model_len}", field="max_tokens")
        return config.max_tokens

    def generate_kwargs(self, config: RequestConfig, max_tokens: int) -> dict:
        """model.generate's settings for a request's sampling config."""
        if config.seed is not None:
            torch.manual_seed(config.seed)
        sampling = config.temperature > 0
        kwargs = {"max_new_tokens": max_tokens, "do_sample": sampling, "eos_token_id": self.stop_ids,
                  "pad_token_id": self.encoder.tokenizer.pad_token_id,
                  "repetition_penalty": config.repetition_penalty}
        if sampling:
            kwargs.update(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k)
        if config.num_beams > 1:  # with sampling: beam sampling; early_stopping as the checkpoint says (ms-swift)
            kwargs.update(num_beams=config.num_beams)
        if config.stop:  # generation ends at the token that completes one (the text still holds it)
            kwargs.update(stop_strings=list(config.stop), tokenizer=self.encoder.tokenizer)
        return kwargs

    def finish(self, new_tokens: list[int], max_tokens: int, stop_strings: list[str] | None = None,
               ) -> tuple[list[int], str]:
        """The answer's tokens up to its stop token, and why it ended: "length" when max_tokens cut it. A row of a
        batch that a stop string ended is padded after the token that completed it: the padding is no part of the
        answer (the pad token may be a stop token: it would count, and get a logprobs entry, as one)."""
        pad = self.encoder.tokenizer.pad_token_id
        if stop_strings and pad is not None and new_tokens and new_tokens[-1] == pad:
            end = len(new_tokens)
            while end and new_tokens[end - 1] == pad:
                end -= 1
            if any(word in self.encoder.tokenizer.decode(new_tokens[:end]) for word in stop_strings):
                return new_tokens[:end], "stop"
        stop = next((i for i, t in enumerate(new_tokens) if t in self.stop_ids), None)
        if stop is not None:
            return new_tokens[:stop + 1], "stop"
        return new_tokens, "length" if len(new_tokens) >= max_tokens else "stop"  # else: a stop string

    def _answer_batch(self, requests: list[InferRequest], config: RequestConfig,
                      adapter: str | None) -> list[ChatCompletionResponse]:
        """Generate for several requests at once: prompts left-padded, media concatenated in order."""
        each = [self._inputs(r) for r in requests]
        limits = [self.max_tokens(config, x["input_ids"].shape[1]) for x in each]
        if len(set(limits)) > 1:  # the context leaves the rows different room: each alone
            return [self._generate([x], config, limit, adapter)[0] for x, limit in zip(each, limits)]
        return self._generate(each, config, limits[0], adapter)

    def _generate(self, each: list[dict], config: RequestConfig, max_tokens: int,
                  adapter: str | None) -> list[ChatCompletionResponse]:
        inputs = _left_padded(each, self.encoder.tokenizer.pad_token_id) if len(each) > 1 else each[0]
        recorder = LogprobRecorder(len(each), config.top_logprobs) if config.logprobs else None
        recording = {} if recorder is None else {"logits_processor": LogitsProcessorList([recorder]),
                                                 "streamer": recorder}
        with torch.no_grad(), active_adapter(self.model, adapter):
            out = self.model.generate(**inputs, **self.generate_kwargs(config, max_tokens), **recording)
        prompt_length = inputs["input_ids"].shape[1]
        tokenizer = self.encoder.tokenizer
        responses = []
        for i, (row, single) in enumerate(zip(out, each)):
            new, reason = self.finish(row[prompt_length:].tolist(), max_tokens, config.stop)
            text = self.answer(new)
            # one recorded step per generated token: those of this row's answer (not the padding after its stop)
            logprobs = None if recorder is None else openai_logprobs(tokenizer, recorder.rows[i][:len(new)])
            responses.append(ChatCompletionResponse(
                model=adapter or self.model_name, usage=Usage(single["input_ids"].shape[1], len(new)),
                choices=[Choice(0, ChatMessage("assistant", text, self.tool_calls(text)), reason, logprobs)]))
        return responses

    def _stream(self, request: InferRequest, config: RequestConfig, adapter: str | None,
                cancel: threading.Event | None):
        inputs = self._inputs(request)  # errors surface here, before the generator starts
        max_tokens = self.max_tokens(config, inputs["input_ids"].shape[1])
        return stream_chunks(self, inputs, config, max_tokens, adapter, cancel)


def answer_text(tokenizer, tokens: list[int], stop_ids: list[int]) -> str:
    """An answer's text as ms-swift decodes it: its stop token left out, every other special token kept (Qwen2-VL's
    <|box_start|>...<|box_end|> around a box, a --new_special_tokens token)."""
    kept = [t for t in tokens if t not in stop_ids]
    return tokenizer.decode(kept, skip_special_tokens=False, spaces_between_special_tokens=False)


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
