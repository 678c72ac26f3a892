"""Micro-batching with a bounded queue: requests for images of the same size wait up to `max_wait_ms`
for company, then run as one batch on a single inference thread, off the event loop. While a batch
runs, new requests queue up, so batches grow with load on their own; `max_batch=1` turns batching off.

A request announces itself while it is still being read and checked (`expecting()`); the batcher
only waits for company that has been announced, so a lone client pays no waiting time.

The queue is bounded by work, not by count: every item has a cost (its pixels). An item that would
take the work queued or running past `max_queue_cost` is refused at once (`QueueFull`), an item
that has waited `queue_timeout_s` without starting is dropped (`QueueTimeout`), and one batch never
holds more than `max_batch_cost`. Both refusals become 503 + Retry-After in the service. Items are
served oldest first; the items of a batch are answered one by one (`fn` returns one result each).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator, Sequence


class QueueFull(Exception):
    """The queue holds too much work to take this item now."""


class QueueTimeout(Exception):
    """The item waited too long for the model and was dropped before it started."""


@dataclass
class _Job:
    item: Any
    future: asyncio.Future
    arrived: float
    cost: int
    started: bool = False


@dataclass
class BatchStats:
    """Counters for /v1/info and the benchmark: batches run and their sizes, items refused."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)
    refused_full: int = 0
    timed_out: int = 0

    def record(self, n: int) -> None:
        self.batches += 1
        self.items += n
        self.largest = max(self.largest, n)
        self.sizes[n] = self.sizes.get(n, 0) + 1


class MicroBatcher:
    """`await submit(group, item, cost)` -> `fn(group, [item, ...])[i]`, batching items of one group.

    `fn` runs on one dedicated thread (so the model sees one caller at a time and the event loop
    never blocks). An exception from `fn` fails every item of that batch.
    """

    def __init__(
        self,
        fn: Callable[[Hashable, Sequence[Any]], Sequence[Any]],
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        max_queue_cost: float = float("inf"),
        max_batch_cost: float = float("inf"),
        queue_timeout_s: float | None = None,
    ) -> None:
        if max_batch < 1 or max_wait_ms < 0 or max_queue_cost <= 0 or max_batch_cost <= 0:
            raise ValueError("max_batch must be >= 1, max_wait_ms >= 0 and the cost bounds positive")
        self.fn, self.max_batch, self.max_wait = fn, max_batch, max_wait_ms / 1000
        self.max_queue_cost, self.max_batch_cost, self.queue_timeout = max_queue_cost, max_batch_cost, queue_timeout_s
        self.stats = BatchStats()
        self.queued_cost = 0  # cost of the items submitted and not yet answered (waiting or running)
        self._pending: dict[Hashable, list[_Job]] = {}
        self._expecting = 0  # requests on their way to submit()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encseg-infer")

    @property
    def enabled(self) -> bool:
        return self.max_batch > 1

    @contextmanager
    def expecting(self) -> Iterator[None]:
        """Wrap the reading and checking of a request that will (probably) call submit() next."""
        self._expecting += 1
        try:
            yield
        finally:
            self._expecting -= 1
            if self._wakeup is not None:
                self._wakeup.set()

    async def submit(self, group: Hashable, item: Any, cost: int = 1) -> Any:
        """The item's result; raises QueueFull or QueueTimeout instead of letting work pile up."""
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._pending.clear()  # jobs of a loop that is gone can never be answered
            self.queued_cost = 0
            self._wakeup = asyncio.Event()
            self._worker = loop.create_task(self._run(), name="encseg-batcher")
        if self.queued_cost + cost > self.max_queue_cost:
            self.stats.refused_full += 1
            raise QueueFull()
        job = _Job(item, loop.create_future(), time.monotonic(), cost)
        self.queued_cost += cost
        self._pending.setdefault(group, []).append(job)
        self._wakeup.set()
        try:
            if self.queue_timeout is None:
                return await job.future
            done, _ = await asyncio.wait({job.future}, timeout=self.queue_timeout)
            if not done and not job.started:
                job.future.cancel()  # the worker skips it
                self.stats.timed_out += 1
                raise QueueTimeout()
            return await job.future  # started: its batch is bounded, wait for it
        finally:
            self.queued_cost -= cost
            if not job.future.done():
                job.future.cancel()  # the caller went away (cancelled): never run it

    def _take_batch(self, jobs: list[_Job]) -> tuple[list[_Job], list[_Job]]:
        batch, total = [], 0
        for i, j in enumerate(jobs):
            if len(batch) == self.max_batch or (batch and total + j.cost > self.max_batch_cost):
                return batch, jobs[i:]
            batch.append(j)
            total += j.cost
        return batch, []

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            for g in [g for g, jobs in self._pending.items() if all(j.future.done() for j in jobs)]:
                del self._pending[g]  # only cancelled jobs left
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # serve the group whose oldest request has waited longest
            group = min(self._pending, key=lambda g: self._pending[g][0].arrived)
            jobs = [j for j in self._pending[group] if not j.future.done()]
            self._pending[group] = jobs
            wait = jobs[0].arrived + self.max_wait - time.monotonic()
            if len(jobs) < self.max_batch and wait > 0 and self._expecting > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                continue
            batch, rest = self._take_batch(jobs)
            if rest:
                self._pending[group] = rest
            else:
                del self._pending[group]
            for j in batch:
                j.started = True
            self.stats.record(len(batch))
            try:
                results = await loop.run_in_executor(self._executor, self.fn, group, [j.item for j in batch])
            except Exception as exc:  # noqa: BLE001 - handed to the waiting requests
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            for j, r in zip(batch, results):
                if not j.future.done():
                    j.future.set_result(r)

    async def close(self) -> None:
        """Stop the worker and fail whatever still waits."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, Exception):
                pass
        for jobs in self._pending.values():
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(RuntimeError("the service is shutting down"))
        self._pending.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
