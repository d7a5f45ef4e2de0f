"""The pub-sub reader's machinery: bounded decoding and the hand-over to the loop.

The reader thread in ``inputs.subscribe.SubscribeReceiver`` reads frames, has them decoded
in a ``Batch`` on a check thread with a time bound, and hands them to the event loop in
batches through a ``Handover``, which bounds what is read but not yet accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger("trollpush.receive")  # the name users' log configs know


class Handover[T]:
    """Items from a reader thread to the event loop: one wake-up of the loop per batch,
    then one task per item (the sink awaits the journal's group commit), at most
    ``window`` of them in flight: the bound on what is read but not yet accepted."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 sink: Callable[[T], Coroutine[Any, Any, object]], window: int) -> None:
        self._loop = loop
        self._sink = sink
        self.window = window
        self._cond = threading.Condition()
        self._in_flight = 0  # guarded by _cond
        self._tasks: dict[asyncio.Task[None], T] = {}  # loop thread only
        self._entered: set[asyncio.Task[None]] = set()  # loop thread only
        #: items whose hand-over was cut off at stop: (item, whether the sink had begun)
        self.taken_back: list[tuple[T, bool]] = []

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    def room(self, stop: threading.Event, wait: float) -> int:
        """Free places in the window, waiting up to ``wait`` s for one (0: none yet)."""
        with self._cond:
            if self._in_flight >= self.window and not stop.is_set():
                self._cond.wait(wait)
            return max(0, self.window - self._in_flight)

    def put(self, items: list[T]) -> bool:
        """Hand a batch to the loop; False (nothing handed) when the loop is gone."""
        if not items:
            return True
        with self._cond:
            self._in_flight += len(items)
        try:
            self._loop.call_soon_threadsafe(self._start, items)
        except RuntimeError:  # the loop is closed: the daemon is gone
            with self._cond:
                self._in_flight -= len(items)
            return False
        return True

    def _start(self, items: list[T]) -> None:
        for item in items:
            task = self._loop.create_task(self._hand(item))
            self._tasks[task] = item
            task.add_done_callback(self._finished)

    async def _hand(self, item: T) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._entered.add(task)  # from here on the journal may have it
        await self._sink(item)

    def _finished(self, task: asyncio.Task[None]) -> None:
        item = self._tasks.pop(task)
        entered = task in self._entered
        self._entered.discard(task)
        if task.cancelled():
            self.taken_back.append((item, entered))
        elif task.exception() is not None:  # the sink answers its own errors: a bug
            logger.error("subscribe: handing a message over failed", exc_info=task.exception())
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    def settle(self, grace: float = 2.0, cancel_wait: float = 5.0) -> list[tuple[T, bool]]:
        """At stop: let hand-overs finish for ``grace`` s, cancel the rest, and return
        what was taken back.  Called from the reader thread, never the loop's."""
        if not self._drained(grace):
            with contextlib.suppress(RuntimeError):  # the loop is gone
                self._loop.call_soon_threadsafe(self._cancel_all)
            if not self._drained(cancel_wait):
                logger.error("subscribe: %d hand-over(s) did not settle at stop",
                             self.in_flight)
        return self.taken_back

    def _drained(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        with self._cond:
            while self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()


class Batch[T]:
    """Frames decoded one by one on a check thread; the reader may give up on it (a
    check past its time bound, or a stop) and keep what was done."""

    def __init__(self, frames: list[bytes], decode: Callable[[bytes], T]) -> None:
        self.frames = frames
        self._decode = decode
        self._lock = threading.Lock()
        self._results: list[T] = []
        self._abandoned = False
        #: monotonic time the current frame's decoding began; None: not begun
        self.started: float | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            for raw in self.frames:
                with self._lock:
                    if self._abandoned:
                        return
                    self.started = time.monotonic()
                item = self._decode(raw)
                with self._lock:
                    if self._abandoned:
                        return
                    self._results.append(item)
        finally:
            self.done.set()

    def abandon(self) -> list[T]:
        """Stop the batch; the items decoded so far (a stuck decode's result is lost)."""
        with self._lock:
            self._abandoned = True
            return list(self._results)
