"""One streamed answer: generate runs in its own thread and hands its tokens to a PieceStreamer, which turns them
into text pieces; the chunks end with the finish reason ("length" when max_tokens cut the answer) and the usage.
With logprobs asked for, each chunk carries those of the tokens generated since the previous one. Closing the
generator, or setting the caller's cancel event, ends generation at the next token."""

from __future__ import annotations

import queue
import threading
import uuid
from typing import Iterator

import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList, TextStreamer

from vlft.infer.adapters import active_adapter
from vlft.infer.logprobs import LogprobRecorder, openai_logprobs
from vlft.infer.protocol import ChatCompletionStreamResponse, DeltaMessage, RequestConfig, StreamChoice, Usage


class StopWhenSet(StoppingCriteria):
    """Ends every row of a generate call once any of the events is set (checked after each token)."""

    def __init__(self, *events: threading.Event | None):
        self.events = [e for e in events if e is not None]

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        stop = any(e.is_set() for e in self.events)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class PieceStreamer(TextStreamer):
    """Iterates (text piece, answer tokens generated so far) as TextStreamer finalizes pieces (whole words); each
    step's tokens go first to the logprob recorder, if any, so that a piece's tokens are recorded when it is read.
    The text is engine.answer_text's: stop tokens left out, other special tokens kept."""

    def __init__(self, tokenizer, recorder: LogprobRecorder | None = None, stop_ids: list[int] | None = None):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=False, spaces_between_special_tokens=False)
        self.stop_ids = torch.tensor(stop_ids or [], dtype=torch.long)
        self.recorder = recorder
        self.tokens = 0
        self._prompt_seen = False
        self._pieces: queue.Queue = queue.Queue()

    def put(self, value: torch.Tensor) -> None:
        if self.recorder is not None:
            self.recorder.put(value)
        if self._prompt_seen:
            self.tokens += value.numel()
            if self.stop_ids.device != value.device:  # once: generate's tokens stay on one device
                self.stop_ids = self.stop_ids.to(value.device)
            value = value.reshape(-1)
            value = value[~torch.isin(value, self.stop_ids)]
        self._prompt_seen = True
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self._pieces.put((text, self.tokens))
        if stream_end:
            self._pieces.put(None)

    def __iter__(self) -> Iterator[tuple[str, int]]:
        while (piece := self._pieces.get()) is not None:
            yield piece


def stream_chunks(engine, inputs: dict, config: RequestConfig, max_tokens: int, adapter: str | None,
                  cancel: threading.Event | None) -> Iterator[ChatCompletionStreamResponse]:
    """The chunks of one answer to `inputs` (already encoded, so bad input was refused before this starts)."""
    closed = threading.Event()
    tokenizer = engine.encoder.tokenizer
    recorder = LogprobRecorder(1, config.top_logprobs) if config.logprobs else None
    streamer = PieceStreamer(tokenizer, recorder, engine.stop_ids)
    kwargs = {**inputs, **engine.generate_kwargs(config, max_tokens), "streamer": streamer,
              "stopping_criteria": StoppingCriteriaList([StopWhenSet(closed, cancel)])}
    if recorder is not None:
        kwargs["logits_processor"] = LogitsProcessorList([recorder])
    name = adapter or engine.model_name
    chunk_id = f"chatcmpl-{uuid.uuid4().hex}"
    prompt_tokens = inputs["input_ids"].shape[1]

    def logprobs(start: int, end: int) -> dict | None:
        return None if recorder is None else openai_logprobs(tokenizer, recorder.rows[0][start:end])

    def chunks():
        result: dict = {}
        thread = threading.Thread(target=_generate_into, args=(engine.model, adapter, result), kwargs=kwargs,
                                  daemon=True)
        thread.start()
        sent = 0  # answer tokens whose logprobs went out
        try:
            for piece, tokens in streamer:
                if piece:
                    choice = StreamChoice(0, DeltaMessage("assistant", piece), logprobs=logprobs(sent, tokens))
                    sent = tokens
                    yield ChatCompletionStreamResponse(name, [choice], chunk_id)
        finally:  # also when the consumer closes the generator early: generate stops at its next token
            closed.set()
            thread.join()
        if "error" in result:  # e.g. out of memory inside generate: the caller sees it instead of a silent stop
            raise result["error"]
        if cancel is not None and cancel.is_set():
            return
        new, reason = engine.finish(result["output"][0, prompt_tokens:].tolist(), max_tokens)
        # content "" (not None): the ms-swift snippet prints each delta's content, the last one included; the
        # logprobs of the tokens no piece showed (the stop token, a held-back tail) come with it
        calls = engine.tool_calls(engine.answer(new))
        choice = StreamChoice(0, DeltaMessage(content="", tool_calls=calls), reason, logprobs(sent, len(new)))
        yield ChatCompletionStreamResponse(name, [choice], chunk_id, usage=Usage(prompt_tokens, len(new)))

    return chunks()


def _generate_into(model, adapter: str | None, result: dict, **kwargs) -> None:
    try:
        with torch.no_grad(), active_adapter(model, adapter):
            result["output"] = model.generate(**kwargs)
    except Exception as e:  # the streamer would otherwise wait for tokens forever
        result["error"] = e
        kwargs["streamer"].end()
