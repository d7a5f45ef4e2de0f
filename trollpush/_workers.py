"""Threads for blocking file-system calls, with one event-loop wake-up per batch.

``asyncio.to_thread`` costs a context copy, an executor work item, a chained future
and one loop wake-up per call: at thousands of small files a second (a stat and a read
for each) that was a measurable share of the event loop's time.  Here callers queue
``(function, args, future)`` on a ``SimpleQueue``; each thread takes what is waiting (up
to ``batch``), runs it and hands all the outcomes back in one ``call_soon_threadsafe``.
A lone call waits for nothing: batches form only when calls are already queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
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
            thread = threading.Thread(target=self._serve, args=(self._loop, self._queue),
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

    def _serve(self, loop: asyncio.AbstractEventLoop,
               jobs: queue.SimpleQueue[_Item | None]) -> None:
        while True:
            first = jobs.get()
            if first is None:
                return
            items = [first]
            stop = False
            while len(items) < self._batch:
                try:
                    item = jobs.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                items.append(item)
            outcomes: list[_Outcome] = []
            for fn, args, future in items:
                try:
                    outcomes.append((future, fn(*args), None))
                except BaseException as err:  # handed to the caller, whatever it is
                    outcomes.append((future, None, err))
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(resolve, outcomes)
            if stop:
                return
