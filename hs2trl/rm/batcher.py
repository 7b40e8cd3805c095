"""Dynamic batching for a served reward model: items from concurrent requests share forward passes.

Requests put their token sequences on one bounded queue (`submit`, all or none: a full queue raises `QueueFull`,
which the server answers with 503). One worker thread per model replica takes the oldest items, in arrival order,
until `max_batch_tokens` are taken; it waits for more only while the oldest has waited less than `max_wait_ms`. The
batch is scored in one call (packed, as `hs2 annotate` packs: `rm.scoring.score_token_ids`) and each item's future
gets its row. An exception fails that batch's futures only; the worker goes on. `close()` lets the workers finish
what is queued, then stops them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field


class QueueFull(Exception):
    """The queue cannot take a request's items now (the server answers 503 with Retry-After)."""


class Closed(Exception):
    """The batcher is shutting down and takes no new items."""


@dataclass
class Item:
    ids: Sequence[int]
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class BatchStats:
    items: int
    tokens: int
    seconds: float
    ok: bool


class DynamicBatcher:
    """`score_fns[r](sequences) -> [n, k] tensor` is replica r's scoring call; each gets a worker thread."""

    def __init__(self, score_fns: Sequence[Callable], *, max_batch_tokens: int, max_wait_ms: float, max_queue: int,
                 on_batch: Callable[[BatchStats], None] | None = None):
        if max_batch_tokens < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_tokens and max_queue must be positive, max_wait_ms not negative")
        self.max_batch_tokens, self.max_wait, self.max_queue = max_batch_tokens, max_wait_ms / 1000.0, max_queue
        self.on_batch = on_batch
        self._pending: deque[Item] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._workers = [threading.Thread(target=self._work, args=(fn,), name=f"hs2-rm-replica-{r}", daemon=True)
                         for r, fn in enumerate(score_fns)]
        for worker in self._workers:
            worker.start()

    @property
    def depth(self) -> int:
        """Items waiting (not yet taken by a worker)."""
        return len(self._pending)

    def submit(self, sequences: Sequence[Sequence[int]]) -> list[Future]:
        """Queue a request's sequences (all or none); each future resolves to its `[k]` row."""
        items = [Item(ids) for ids in sequences]
        with self._cond:
            if self._closing:
                raise Closed("the server is shutting down")
            if len(self._pending) + len(items) > self.max_queue:
                raise QueueFull(f"the queue holds {len(self._pending)} of {self.max_queue} items")
            self._pending.extend(items)
            self._cond.notify_all()
        return [item.future for item in items]

    def close(self, timeout: float | None = None) -> None:
        """Take nothing new; the workers score what is queued, then stop."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for worker in self._workers:
            worker.join(timeout)

    # -- the workers

    def _next_batch(self) -> list[Item] | None:
        with self._cond:
            while not self._pending:
                if self._closing:
                    return None
                self._cond.wait()
            # Wait for more items while the oldest is younger than max_wait and the batch is short of tokens.
            while not self._closing and self._queued_tokens() < self.max_batch_tokens:
                left = self._pending[0].queued_at + self.max_wait - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch, tokens = [], 0
            while self._pending and (not batch or tokens + len(self._pending[0].ids) <= self.max_batch_tokens):
                item = self._pending.popleft()
                batch.append(item)
                tokens += len(item.ids)
            return batch

    def _queued_tokens(self) -> int:
        total = 0
        for item in self._pending:
            total += len(item.ids)
            if total >= self.max_batch_tokens:
                break
        return total

    def _work(self, score_fn: Callable) -> None:
        while (batch := self._next_batch()) is not None:
            started = time.perf_counter()
            live = [item for item in batch if item.future.set_running_or_notify_cancel()]
            ok = True
            try:
                rows = score_fn([item.ids for item in live]) if live else []
            except Exception as err:  # fails this batch's requests only; the worker goes on
                ok = False
                for item in live:
                    item.future.set_exception(err)
            else:
                for item, row in zip(live, rows):
                    item.future.set_result(row)
            if self.on_batch is not None:
                self.on_batch(BatchStats(len(batch), sum(len(i.ids) for i in batch),
                                         time.perf_counter() - started, ok))
