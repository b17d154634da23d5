"""Micro-batching for the HTTP path: concurrent requests share one window read and one Triton call.

The first request of a batch opens a short collection window (``window_s``, ~1-2 ms); every
request that arrives before it closes joins, up to ``max_batch``. While ``max_in_flight``
batches are already being processed, collection simply continues, so batches grow under load
instead of queueing (adaptive batching) and stay small when traffic is light.

``min_interval_s`` paces the batches: a batch is not dispatched sooner than that after the
previous one. Idle traffic never waits for it (the previous batch is long gone); under load it
sets the batch size to about rate x interval. Each batch has a fixed CPU cost (one window-store
round trip, one gRPC call, one Triton execute with its model call overhead) that dwarfs the
per-request cost at small batches, so at high rates pacing buys CPU for a few ms of latency.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Handler = Callable[[Sequence[T]], Awaitable[Sequence[Any]]]


class MicroBatcher(Generic[T, R]):
    """``await submit(item)`` -> that item's result from ``handler(batch)``.

    ``handler`` returns one entry per item, in order; an entry that is an Exception is raised to
    that item's caller only. If ``handler`` raises, every caller of the batch gets the error.
    """

    def __init__(self, handler: Handler, *, window_s: float = 0.001, max_batch: int = 64,
                 max_in_flight: int = 2, min_interval_s: float = 0.0):
        if max_batch < 1 or max_in_flight < 1 or window_s < 0 or min_interval_s < 0:
            raise ValueError("max_batch and max_in_flight must be >= 1, window_s and min_interval_s >= 0")
        self.handler = handler
        self.window_s = window_s
        self.min_interval_s = min_interval_s
        self._last_dispatch = float("-inf")
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._slots: asyncio.Semaphore | None = None
        self._running: set[asyncio.Task] = set()

    def start(self) -> None:
        if self._task is None:
            self._queue = asyncio.Queue()
            self._slots = asyncio.Semaphore(self.max_in_flight)
            self._task = asyncio.get_running_loop().create_task(self._collect())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def submit(self, item: T) -> R:
        if self._task is None:
            self.start()
        fut = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, fut))
        return await fut

    async def _collect_for(self, batch: list, seconds: float) -> None:
        """Sleep ``seconds``, or less if the batch fills up meanwhile."""
        if seconds <= self.window_s or self.max_batch <= 1:
            await asyncio.sleep(seconds)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        await asyncio.sleep(self.window_s)
        self._drain(batch)
        while len(batch) < self.max_batch:
            left = deadline - loop.time()
            if left <= 0:
                return
            # poll at the collection window's pace: a Queue.get per request would cost more
            await asyncio.sleep(min(left, max(self.window_s, 0.001)))
            self._drain(batch)

    def _drain(self, batch: list) -> None:
        while len(batch) < self.max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            wait = max(self.window_s, self._last_dispatch + self.min_interval_s - loop.time())
            if wait > 0:
                await self._collect_for(batch, wait)
            else:
                await asyncio.sleep(0)  # let already-scheduled requests enqueue
            self._drain(batch)
            # Wait for a free slot; requests arriving meanwhile still join this batch.
            while self._slots.locked() and len(batch) < self.max_batch:
                acquire = asyncio.ensure_future(self._slots.acquire())
                getter = asyncio.ensure_future(self._queue.get())
                done, _ = await asyncio.wait({acquire, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    batch.append(getter.result())
                else:
                    getter.cancel()
                    try:
                        batch.append(await getter)  # it may have completed while cancelling
                    except asyncio.CancelledError:
                        pass
                if acquire in done:
                    self._drain(batch)
                    break
                acquire.cancel()
                try:
                    await acquire  # it may have acquired while cancelling: give it back
                    self._slots.release()
                except asyncio.CancelledError:
                    pass
            else:
                await self._slots.acquire()
            self._last_dispatch = loop.time()
            task = loop.create_task(self._process(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _process(self, batch: list) -> None:
        try:
            items = [item for item, _ in batch]
            try:
                results = await self.handler(items)
                if len(results) != len(items):
                    raise RuntimeError(f"batch handler returned {len(results)} results for {len(items)} items")
            except Exception as exc:  # noqa: BLE001 - every caller gets the batch's error
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                return
            for (_, fut), result in zip(batch, results):
                if fut.done():  # the caller went away (client disconnect, timeout)
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
        finally:
            self._slots.release()
