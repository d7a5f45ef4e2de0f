"""Threads for blocking file-system calls, with one event-loop wake-up per batch.

``asyncio.to_thread`` costs a context copy, an executor work item, a chained future
and one loop wake-up per call: at thousands of small files a second (a stat and a read
for each) that was a measurable share of the event loop's time.  Here callers queue
``(function, args, future)`` on a ``SimpleQueue``; each thread takes what is waiting (up
to ``batch``), runs it and hands all the outcomes back in one ``call_soon_threadsafe``.
A lone call waits for nothing: batches form only when calls are already queued.
``take`` and ``post`` are the two halves of that hand-over, shared with the journal's
writer and the publisher thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

_Item = tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]
_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


def resolve(outcomes: list[_Outcome]) -> None:
    """Settle futures from another thread's outcomes (run on their loop: one wake-up)."""
    for future, value, err in outcomes:
        if future.done():  # the caller was cancelled meanwhile (the call ran all the same)
            continue
        if err is not None:
            future.set_exception(err)
        else:
            future.set_result(value)


def post(outcomes: Sequence[_Outcome]) -> None:
    """Hand outcomes from another thread to their futures' loops: one wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].get_loop(), []).append(outcome)
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(resolve, items)


def take[Q](jobs: queue.SimpleQueue[Q | None], limit: int) -> list[Q | None]:
    """What is waiting on ``jobs`` (blocking for the first), at most ``limit`` items; a
    ``None`` (stop) ends the batch and is its last item."""
    items = [jobs.get()]
    while items[-1] is not None and len(items) < limit:
        try:
            items.append(jobs.get_nowait())
        except queue.Empty:
            break
    return items


class Workers:
    """A few threads serving one event loop; ``await run(fn, *args)``."""

    def __init__(self, threads: int = 8, *, batch: int = 16, name: str = "trollpush-io"
                 ) -> None:
        if threads < 1 or batch < 1:
            raise ValueError("threads and batch must be >= 1")
        self._size = threads
        self._batch = batch
        self._name = name
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"<Workers {self._name} threads={len(self._threads)} queued={self._queue.qsize()}>"

    def start(self) -> None:
        """Start the threads for the running event loop."""
        if self._threads:
            return
        self._loop = asyncio.get_running_loop()
        self._queue = queue.SimpleQueue()
        for i in range(self._size):
            thread = threading.Thread(target=self._serve, args=(self._queue,),
                                      name=f"{self._name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    async def close(self) -> None:
        """Let queued calls finish, then stop the threads."""
        threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(None)
        for thread in threads:
            await asyncio.to_thread(thread.join, 10)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if not self._threads or self._loop is None:
            raise RuntimeError(f"{self._name} workers are not running")
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put((fn, args, future))
        return await future

    def _serve(self, jobs: queue.SimpleQueue[_Item | None]) -> None:
        while True:
            items = take(jobs, self._batch)
            outcomes: list[_Outcome] = []
            for item in items:
                if item is None:
                    break
                fn, args, future = item
                try:
                    outcomes.append((future, fn(*args), None))
                except BaseException as err:  # handed to the caller, whatever it is
                    outcomes.append((future, None, err))
            post(outcomes)
            if items[-1] is None:
                return
