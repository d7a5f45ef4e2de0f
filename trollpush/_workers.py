"""Threads for blocking file-system calls, with one event-loop wake-up per batch.

``asyncio.to_thread`` costs a context copy, an executor work item, a chained future
and one loop wake-up per call: at thousands of small files a second (a stat and a read
for each) that was a measurable share of the event loop's time.  Here callers queue
```Call`` objects on a ``SimpleQueue``; each thread runs one call at a time
(a call stuck on a hung mount holds up nothing else) and puts the outcome in a shared
outbox, which the loop empties in one ``call_soon_threadsafe`` however many arrived.
``take`` and ``post`` are the two halves of the batch hand-over of the journal's writer
and the publisher thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]
_Done = tuple[asyncio.Future[Any], Any, BaseException | None, Callable[[Any], object] | None]


class Call[T]:
    """One call for a worker thread: what to run, the caller's future, whether a thread
    has begun it, and what releases a result nobody waits for any more."""

    __slots__ = ("args", "discard", "fn", "future", "started")

    #: time.monotonic() when a thread began it (None: still queued)
    started: float | None

    def __init__(self, fn: Callable[..., T], args: tuple[Any, ...],
                 future: asyncio.Future[T], discard: Callable[[T], object] | None) -> None:
        self.fn = fn
        self.args = args
        self.future = future
        self.discard = discard
        self.started = None


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
    """A few threads serving one event loop; ``await run(fn, *args)``.

    Each thread runs one call at a time, so a call stuck in the kernel (a hung mount)
    holds up only its own thread; :meth:`grow` adds a thread in place of one that is
    stuck.  Results are handed back through one outbox: however many threads finish
    meanwhile, the loop wakes up once to take them all.
    """

    def __init__(self, threads: int = 8, *, max_threads: int = 64,
                 name: str = "trollpush-io") -> None:
        if threads < 1 or max_threads < threads:
            raise ValueError("threads must be >= 1 and max_threads >= threads")
        self._size = threads
        self._max = max_threads
        self._name = name
        self._queue: queue.SimpleQueue[Call[Any] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: list[_Done] = []
        self._outbox_lock = threading.Lock()
        self._scheduled = False
        self._running = 0  # threads told to stop that have not yet (close)
        self._stopped: asyncio.Event | None = None

    def __repr__(self) -> str:
        return f"<Workers {self._name} threads={len(self._threads)} queued={self._queue.qsize()}>"

    def start(self) -> None:
        """Start the threads for the running event loop."""
        if self._threads:
            return
        self._loop = asyncio.get_running_loop()
        self._queue = queue.SimpleQueue()
        for _ in range(self._size):
            self._spawn()

    def grow(self) -> bool:
        """One more thread, in place of one stuck in a call (at most ``max_threads``)."""
        if not self._threads or len(self._threads) >= self._max:
            return False
        self._spawn()
        return True

    def _spawn(self) -> None:
        thread = threading.Thread(target=self._serve, args=(self._queue,),
                                  name=f"{self._name}-{len(self._threads)}", daemon=True)
        thread.start()
        self._threads.append(thread)

    async def close(self, wait: float = 5.0) -> None:
        """Let queued calls finish, then stop the threads; a thread stuck in a call is
        left behind after ``wait`` seconds (a daemon thread: it never holds up exit)."""
        threads, self._threads = self._threads, []
        if not threads:
            return
        self._running = len(threads)
        self._stopped = asyncio.Event()
        for _ in threads:
            self._queue.put(None)
        # (not to_thread's join: its pool may be full of stuck calls too)
        try:
            await asyncio.wait_for(self._stopped.wait(), wait)
        except TimeoutError:
            return
        for thread in threads:  # each said it is leaving: gone within microseconds
            thread.join(timeout=1.0)

    def _exited(self) -> None:
        self._running -= 1
        if self._running <= 0 and self._stopped is not None:
            self._stopped.set()

    def submit(self, fn: Callable[..., T], *args: Any,
               discard: Callable[[T], object] | None = None) -> Call[T]:
        """Queue ``fn(*args)``; ``discard`` releases a result that comes back after the
        caller stopped waiting (an open file, say), so nothing leaks."""
        if not self._threads or self._loop is None:
            raise RuntimeError(f"{self._name} workers are not running")
        call = Call(fn, args, self._loop.create_future(), discard)
        self._queue.put(call)
        return call

    async def run(self, fn: Callable[..., T], *args: Any,
                  discard: Callable[[T], object] | None = None) -> T:
        """``fn(*args)`` in a thread (see :meth:`submit`)."""
        return await self.submit(fn, *args, discard=discard).future

    def _serve(self, calls: queue.SimpleQueue[Call[Any] | None]) -> None:
        try:
            self._calls(calls)
        finally:
            if self._loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    self._loop.call_soon_threadsafe(self._exited)

    def _calls(self, calls: queue.SimpleQueue[Call[Any] | None]) -> None:
        while (call := calls.get()) is not None:
            future, discard = call.future, call.discard
            if future.done():  # the caller gave up before it started: do not run it
                continue
            call.started = time.monotonic()
            try:
                done: _Done = (future, call.fn(*call.args), None, discard)
            except BaseException as err:  # handed to the caller, whatever it is
                done = (future, None, err, discard)
            with self._outbox_lock:
                self._outbox.append(done)
                wake, self._scheduled = not self._scheduled, True
            if wake and self._loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._outbox_lock:
            done, self._outbox = self._outbox, []
            self._scheduled = False
        for future, value, err, discard in done:
            if not future.done():
                if err is not None:
                    future.set_exception(err)
                else:
                    future.set_result(value)
            elif err is None and discard is not None:
                with contextlib.suppress(Exception):
                    discard(value)
