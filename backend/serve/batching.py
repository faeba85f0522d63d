"""The batching scheduler: concurrent requests for different adapters (and the base) share one `generate` call.

A request goes to a queue; one generation thread takes the oldest waiting request and up to `max_batch - 1`
others that can share its `generate` call (`batch_key`), left-pads their prompts and runs ONE generate with
peft's per-row `adapter_names` ("__base__" for rows that ask for the base). `RowStreamer` gets each step's
tokens for every row and hands each row's new text to that row's queue; `RowsDone` stops each row on its own
(its max_new_tokens, EOS, a stop string, or its client leaving); the call ends when every row is done. A row
that is cancelled while still queued never runs.

This is static batching (a batch runs to its end; new requests wait for the next one): transformers' continuous
batching has no peft adapter support. Only one thread ever touches the model, so adapter loads and evictions
(`Engine._model_for`) never race a generation.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer
from transformers.generation.streamers import BaseStreamer

log = logging.getLogger("lorastudio")

BASE_ROW = "__base__"      # peft's name for a row that uses no adapter
FINISHED = object()        # the last event of a row's queue (an exception instead when its batch failed)


@dataclass(eq=False)
class Row:
    """One request in the scheduler: its prompt ids, the events its stream reads, its progress."""
    request: object            # an engine.Prepared
    events: queue.Queue = field(default_factory=queue.Queue)   # new text (str), then FINISHED or an exception
    cancelled: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] = field(default_factory=list)            # generated so far, EOS included (as usage counts)
    first_token_at: float | None = None
    done: bool = False
    text: TextStreamer | None = None                           # set when its batch starts

    @property
    def adapter_row_name(self) -> str:
        return self.request.adapter or BASE_ROW

    def cancel(self) -> None:
        """From the client's thread: the generation thread stops this row at its next step."""
        self.cancelled.set()

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        if self.text is not None and not self.cancelled.is_set():
            self.text.end()      # the text held back for a whole word
        self.events.put(FINISHED)


def batch_key(request) -> tuple:
    """Requests with equal keys may share one generate call: one call has one set of decoding settings and one
    random generator.

    Greedy rows batch with any other greedy rows. Sampled rows that name no seed batch with those of the same
    temperature and top_p (their draws then depend on their batch mates). A sampled row with its own seed runs
    alone, seeded as the playground does, so the same seed repeats the same answer. A DoRA adapter cannot be
    mixed with others in a batch (peft refuses `adapter_names` with DoRA): its rows batch only with its own."""
    settings = request.settings
    mixing = () if request.mixable else ("unmixable", request.adapter)
    if settings.temperature <= 0:
        return ("greedy", settings.repetition_penalty, *mixing)
    if request.seeded:
        return ("seeded", id(request))
    return ("sampled", settings.temperature, settings.top_p, settings.repetition_penalty, *mixing)


class _RowText(TextStreamer):
    """The playground's text streaming (whole words, no special tokens) for one row, into that row's queue."""

    def __init__(self, row: Row):
        super().__init__(row.request.tokenizer, skip_prompt=False, skip_special_tokens=True)
        self.row = row

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.row.events.put(text)


class RowStreamer(BaseStreamer):
    """Gets each step's new token of every row from `generate` and moves the rows that are still going on."""

    def __init__(self, rows: list[Row], eos_ids: set[int]):
        self.rows, self.eos_ids, self.prompt_seen = rows, eos_ids, False

    def put(self, value) -> None:
        if not self.prompt_seen:       # generate's first call hands over the (padded) prompts
            self.prompt_seen = True
            return
        import torch

        for row, token in zip(self.rows, value.reshape(-1).tolist()):
            if row.done:
                continue
            if row.cancelled.is_set():
                row.finish()
                continue
            row.first_token_at = row.first_token_at or time.perf_counter()
            row.tokens.append(token)
            row.text.put(torch.tensor([token]))
            if token in self.eos_ids or len(row.tokens) >= row.request.settings.max_new_tokens or _stopped(row):
                row.finish()

    def end(self) -> None:
        for row in self.rows:
            row.finish()


def _stopped(row: Row) -> bool:
    """Whether a stop string is in the row's text (stripped, as a chat answer is, so both sides agree)."""
    stops = row.request.stops
    if not stops:
        return False
    text = row.request.tokenizer.decode(row.tokens, skip_special_tokens=True)
    text = text.strip() if row.request.messages is not None else text
    return any(stop in text for stop in stops)


class RowsDone(StoppingCriteria):
    """Per-row stopping for generate: a row is done once RowStreamer finished it or its client left."""

    def __init__(self, rows: list[Row]):
        self.rows = rows

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        for row in self.rows:
            if row.cancelled.is_set():
                row.finish()
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)


def run_batch(model, rows: list[Row], pad_id: int, eos_ids: set[int], adapter_names: list[str] | None) -> None:
    """ONE generate for all rows (left-padded prompts, per-row adapters); every row is finished on return."""
    import torch

    for row in rows:
        row.text = _RowText(row)
    width = max(len(row.request.input_ids) for row in rows)
    padding = [width - len(row.request.input_ids) for row in rows]
    input_ids = torch.tensor([[pad_id] * pad + row.request.input_ids for pad, row in zip(padding, rows)],
                             device=model.device)
    attention_mask = torch.tensor([[0] * pad + [1] * (width - pad) for pad in padding], device=model.device)
    first = rows[0].request
    kwargs = first.settings.generate_kwargs(first.tokenizer)
    kwargs["max_new_tokens"] = max(row.request.settings.max_new_tokens for row in rows)
    if adapter_names is not None:
        kwargs["adapter_names"] = adapter_names
    streamer = RowStreamer(rows, eos_ids)
    with torch.no_grad():
        torch.manual_seed(first.settings.seed)
        model.generate(input_ids=input_ids, attention_mask=attention_mask, streamer=streamer,
                       stopping_criteria=StoppingCriteriaList([RowsDone(rows)]), **kwargs)
    streamer.end()


class Scheduler:
    """The queue of waiting rows and the one thread that runs their batches.

    `model_for(rows)` is called on the generation thread before each batch: it loads the batch's adapters and
    returns (model, adapter_names or None)."""

    def __init__(self, model_for: Callable, fits: Callable[[list[Row]], bool], pad_id: int, eos_ids: set[int],
                 max_batch: int, max_adapters: int):
        self.model_for, self.fits = model_for, fits
        self.pad_id, self.eos_ids = pad_id, eos_ids
        self.max_batch, self.max_adapters = max_batch, max_adapters
        self.waiting: list[Row] = []
        self.running: list[Row] = []
        self.changed = threading.Condition()
        self.batch_sizes: Counter[int] = Counter()
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name="lorastudio-batches", daemon=True)
        self.thread.start()

    def submit(self, request) -> Row:
        row = Row(request)
        with self.changed:
            self.waiting.append(row)
            self.changed.notify()
        return row

    def close(self) -> None:
        """Stop taking batches (the running one ends first); rows still waiting end as if their batch failed."""
        with self.changed:
            self.closed = True
            self.changed.notify()
        self.thread.join()
        for row in self.waiting:
            row.done = True
            row.events.put(RuntimeError("the server is shutting down"))

    def adapters_in_use(self) -> set[str]:
        """The adapters of queued and running rows: the LRU must not evict them."""
        with self.changed:
            return {row.request.adapter for row in self.waiting + self.running if row.request.adapter}

    def _next_batch(self) -> list[Row] | None:
        """The oldest waiting row (so no request starves) and the waiting rows that can share its call; None once
        closed."""
        with self.changed:
            while True:
                for row in [row for row in self.waiting if row.cancelled.is_set()]:
                    self.waiting.remove(row)
                    row.finish()
                if self.closed:
                    return None
                if self.waiting:
                    break
                self.changed.wait()
            oldest = self.waiting[0]
            key, batch = batch_key(oldest.request), [oldest]
            adapters = {oldest.adapter_row_name}
            for row in self.waiting[1:]:
                if len(batch) == self.max_batch:
                    break
                named = adapters | {row.adapter_row_name}
                if (batch_key(row.request) == key and len(named - {BASE_ROW}) <= self.max_adapters
                        and self.fits(batch + [row])):
                    batch.append(row)
                    adapters = named
            for row in batch:
                self.waiting.remove(row)
            self.running = batch
            return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                model, adapter_names = self.model_for(batch)
                self.batch_sizes[len(batch)] += 1     # before: its rows' clients may read stats as soon as they end
                run_batch(model, batch, self.pad_id, self.eos_ids, adapter_names)
            except BaseException as error:  # noqa: BLE001 - every row's stream raises it; the thread serves on
                log.exception("serve: a batch of %d failed", len(batch))
                for row in batch:
                    if not row.done:
                        row.done = True
                        row.events.put(error)
            finally:
                with self.changed:
                    self.running = []
