"""One streamed answer: generate runs in its own thread and hands text to a TextIteratorStreamer; the chunks end
with the finish reason ("length" when max_tokens cut the answer) and the usage. Closing the generator, or setting
the caller's cancel event, ends generation at the next token."""

from __future__ import annotations

import threading
import uuid
from typing import Iterator

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from vlft.infer.adapters import active_adapter
from vlft.infer.protocol import ChatCompletionStreamResponse, DeltaMessage, RequestConfig, StreamChoice, Usage


class StopWhenSet(StoppingCriteria):
    """Ends every row of a generate call once any of the events is set (checked after each token)."""

    def __init__(self, *events: threading.Event | None):
        self.events = [e for e in events if e is not None]

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        stop = any(e.is_set() for e in self.events)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def stream_chunks(engine, inputs: dict, config: RequestConfig, max_tokens: int, adapter: str | None,
                  cancel: threading.Event | None) -> Iterator[ChatCompletionStreamResponse]:
    """The chunks of one answer to `inputs` (already encoded, so bad input was refused before this starts)."""
    closed = threading.Event()
    streamer = TextIteratorStreamer(engine.encoder.tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = {**inputs, **engine.generate_kwargs(config, max_tokens), "streamer": streamer,
              "stopping_criteria": StoppingCriteriaList([StopWhenSet(closed, cancel)])}
    name = adapter or engine.model_name
    chunk_id = f"chatcmpl-{uuid.uuid4().hex}"
    prompt_tokens = inputs["input_ids"].shape[1]

    def chunks():
        result: dict = {}
        thread = threading.Thread(target=_generate_into, args=(engine.model, adapter, result), kwargs=kwargs,
                                  daemon=True)
        thread.start()
        try:
            for piece in streamer:
                if piece:
                    yield ChatCompletionStreamResponse(name, [StreamChoice(0, DeltaMessage("assistant", piece))],
                                                       chunk_id)
        finally:  # also when the consumer closes the generator early: generate stops at its next token
            closed.set()
            thread.join()
        if "error" in result:  # e.g. out of memory inside generate: the caller sees it instead of a silent stop
            raise result["error"]
        if cancel is not None and cancel.is_set():
            return
        new, reason = engine.finish(result["output"][0, prompt_tokens:].tolist(), max_tokens)
        # content "" (not None): the ms-swift snippet prints each delta's content, the last one included
        yield ChatCompletionStreamResponse(name, [StreamChoice(0, DeltaMessage(content=""), reason)], chunk_id,
                                           usage=Usage(prompt_tokens, len(new)))

    return chunks()


def _generate_into(model, adapter: str | None, result: dict, **kwargs) -> None:
    try:
        with torch.no_grad(), active_adapter(model, adapter):
            result["output"] = model.generate(**kwargs)
    except Exception as e:  # the streamer would otherwise wait for tokens forever
        result["error"] = e
        kwargs["streamer"].end()
