"""Server-side batching: concurrent requests share one model call.

Requests wait in a bounded queue (full -> `QueueFull`, which the app answers with 503). One
collector task takes the first waiting request, then lets others join for at most `window_s`
or until `max_batch` samples are gathered, and runs the model once, in one dedicated thread so
the event loop keeps accepting connections. A request is never split across batches; one that
does not fit opens the next batch. If a batch fails, each of its requests is retried alone,
so one bad request cannot take others down with it.

Example:
    >>> import asyncio
    >>> b = MicroBatcher(lambda xs: [x * 2 for x in xs], max_batch=8, window_s=0.001)
    >>> async def go():
    ...     out = await asyncio.gather(b.submit([1, 2]), b.submit([3]))
    ...     await b.close()
    ...     return out
    >>> asyncio.run(go())
    [[2, 4], [6]]
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("mmerkit.serve")


class QueueFull(Exception):
    """The model's queue holds `max_queue` requests already."""


@dataclass
class _Job:
    items: Sequence[Any]
    future: asyncio.Future


@dataclass
class BatchStats:
    """What the batcher has done: model calls, samples, and how many calls had each size."""

    requests: int = 0
    calls: int = 0
    samples: int = 0
    rejected: int = 0
    sizes: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "model_calls": self.calls, "samples": self.samples,
                "rejected_queue_full": self.rejected,
                "mean_batch": self.samples / self.calls if self.calls else 0.0,
                "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())}}


class MicroBatcher:
    """Collects concurrent `submit` calls into batches for `run(items) -> results` (same order)."""

    def __init__(self, run: Callable[[list[Any]], list[Any]], *, max_batch: int = 32,
                 window_s: float = 0.005, max_queue: int = 256, enabled: bool = True):
        self._run = run
        self.max_batch, self.window_s, self.max_queue = max_batch, window_s, max_queue
        self.enabled = enabled
        self.stats = BatchStats()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mmerkit-model")
        self._queue: asyncio.Queue[_Job] | None = None
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._carry: _Job | None = None

    def _ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self._queue, self._arrived = asyncio.Queue(), asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._collect(), name="mmerkit-batcher")

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """Queue `items` (one request) and wait for their results; raises QueueFull at once."""
        self._ensure_started()
        assert self._queue is not None and self._arrived is not None
        if self._queue.qsize() >= self.max_queue:
            self.stats.rejected += 1
            raise QueueFull(f"{self._queue.qsize()} requests are waiting for the model")
        job = _Job(list(items), asyncio.get_running_loop().create_future())
        self.stats.requests += 1
        self._queue.put_nowait(job)
        self._arrived.set()
        return await job.future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _collect(self) -> None:
        assert self._queue is not None
        while True:
            first = self._carry or await self._queue.get()
            self._carry = None
            jobs = await self._gather_more(first) if self.enabled else [first]
            await self._run_jobs(jobs)

    async def _gather_more(self, first: _Job) -> list[_Job]:
        """Let more requests join until the batch is full or the window has passed."""
        assert self._queue is not None and self._arrived is not None
        loop = asyncio.get_running_loop()
        jobs, n = [first], len(first.items)
        deadline = loop.time() + self.window_s
        while n < self.max_batch:
            while not self._queue.empty() and n < self.max_batch:
                job = self._queue.get_nowait()
                if n + len(job.items) > self.max_batch:
                    self._carry = job  # opens the next batch
                    return jobs
                jobs.append(job)
                n += len(job.items)
            remaining = deadline - loop.time()
            if n >= self.max_batch or remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                if self._queue.empty():
                    break
        return jobs

    async def _run_jobs(self, jobs: list[_Job]) -> None:
        jobs = [j for j in jobs if not j.future.done()]  # clients that went away
        if not jobs:
            return
        try:
            results = await self._call([x for j in jobs for x in j.items])
        except Exception as e:
            if len(jobs) == 1:
                _settle(jobs[0].future, exc=e)
                return
            for job in jobs:  # isolate the request at fault
                await self._run_jobs([job])
            return
        start = 0
        for job in jobs:
            _settle(job.future, result=results[start:start + len(job.items)])
            start += len(job.items)

    async def _call(self, items: list[Any]) -> list[Any]:
        results = await asyncio.get_running_loop().run_in_executor(self._executor, self._run, items)
        if len(results) != len(items):
            raise RuntimeError(f"model returned {len(results)} results for {len(items)} samples")
        self.stats.calls += 1
        self.stats.samples += len(items)
        self.stats.sizes[len(items)] += 1
        return results


def _settle(future: asyncio.Future, result: Any = None, exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
