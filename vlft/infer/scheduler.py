"""One thread owns the model and answers the server's jobs in arrival order. The model is not safe to
run from two threads at once (Qwen-VL keeps its rope deltas on the module during generation, and the active
LoRA adapter is the model's state), so request handlers only queue jobs and wait; greedy, non-streamed jobs
for the same adapter that share their settings are answered together, up to the engine's max_batch_size (its
batched greedy answers equal one-at-a-time ones)."""

from __future__ import annotations

import queue
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from vlft.infer.protocol import InferRequest, RequestConfig

STREAM_END = object()  # delivered after a streamed job's last chunk


class Busy(Exception):
    """The queue is full, or the server is stopping: the client should retry later (503)."""


@dataclass(eq=False)
class Job:
    """One request waiting for the engine. Everything the engine thread produces for it is handed to `deliver`
    (default: put on `results`): a whole answer's response, or a stream's chunks then STREAM_END, or an
    exception at any point. `done` is set after the last one; setting `cancelled` ends a stream at the next
    token."""

    request: InferRequest
    config: RequestConfig
    adapter: str | None = None  # a named adapter of the engine; None: the base model
    deliver: Callable[[Any], None] | None = None
    results: queue.Queue = field(default_factory=queue.Queue)
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def put(self, item: Any) -> None:
        (self.deliver or self.results.put)(item)

    def batch_key(self) -> tuple | None:
        """Jobs with equal keys may share one generate call; None: this one runs alone."""
        if self.config.stream or self.config.temperature > 0:  # sampling alone keeps seeds meaningful
            return None
        return (self.adapter, self.config.max_tokens, self.config.repetition_penalty, self.config.num_beams,
                self.config.logprobs, self.config.top_logprobs)


class EngineWorker:
    """The model's one thread: takes jobs from a bounded queue and answers them."""

    def __init__(self, engine, max_batch_size: int, max_pending: int):
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_pending = max_pending
        self._pending: list[Job] = []
        self._running = 0
        self._stopped = False
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="vlft-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job; Busy when max_pending jobs are already queued or running."""
        with self._condition:
            if self._stopped:
                raise Busy("the server is stopping")
            if len(self._pending) + self._running >= self.max_pending:
                raise Busy(f"{self.max_pending} requests are already queued or running; retry later")
            self._pending.append(job)
            self._condition.notify()

    def stop(self) -> None:
        """Finish the running job, refuse the queued ones, and end the thread."""
        with self._condition:
            self._stopped = True
            left, self._pending = self._pending, []
            self._condition.notify()
        for job in left:
            self._fail([job], Busy("the server is stopping"))
        self._thread.join(timeout=60)

    def _take(self) -> list[Job]:
        """The oldest job, plus later ones that may share its generate call."""
        with self._condition:
            while not self._pending and not self._stopped:
                self._condition.wait()
            if self._stopped:
                return []
            batch = [self._pending.pop(0)]
            key = batch[0].batch_key()
            if key is not None:
                for job in [j for j in self._pending if j.batch_key() == key][:self.max_batch_size - 1]:
                    self._pending.remove(job)
                    batch.append(job)
            self._running = len(batch)
            return batch

    def _loop(self) -> None:
        while batch := self._take():
            try:
                if batch[0].config.stream:
                    self._stream(batch[0])
                else:
                    self._answer(batch)
            except BaseException as e:  # the worker must outlive any one request
                traceback.print_exc()
                self._fail(batch, e)
            finally:
                with self._condition:
                    self._running = 0

    def _answer(self, jobs: list[Job]) -> None:
        try:
            responses = self.engine.infer([job.request for job in jobs], jobs[0].config, adapter=jobs[0].adapter)
        except Exception as e:
            if len(jobs) == 1:
                self._fail(jobs, e)
            else:  # one bad request must not fail the others: answer each alone
                for job in jobs:
                    self._answer([job])
            return
        for job, response in zip(jobs, responses):
            job.put(response)
            job.done.set()

    def _stream(self, job: Job) -> None:
        # Drained to the end: generate runs in its own thread, and the next job must not start while it does.
        # A job whose client has gone is cancelled, which ends generate at its next token.
        try:
            for chunk in self.engine.infer([job.request], job.config, adapter=job.adapter,
                                           cancel=job.cancelled)[0]:
                job.put(chunk)
        except Exception as e:
            job.put(e)
        else:
            job.put(STREAM_END)
        job.done.set()

    @staticmethod
    def _fail(jobs: list[Job], error: BaseException) -> None:
        for job in jobs:
            if job.done.is_set():
                continue
            job.put(error)
            job.done.set()
