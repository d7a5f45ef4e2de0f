"""Threads for the file-system checks made on receipt (stat, realpath, access).

A check on a hung mount blocks in the kernel and cannot be interrupted: the caller stops
waiting after ``daemon.file_timeout`` and answers the request, and the thread stays
stuck.  So these are daemon threads (a stuck one must not keep the process from
exiting), and a new one is started whenever none is free, up to a limit: a stuck check
holds only its own thread, never the checks behind it.  :func:`checked` is how an input
on the event loop waits for one: bounded, and answered either way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ..messages import not_accepted, overdue
from ..models import Rejection, Request

T = TypeVar("T")
logger = logging.getLogger("trollpush.receive")  # the name users' log configs know

#: threads at most; only checks stuck in the kernel keep this many alive
MAX_THREADS = 16


class CheckThreads:
    """Runs callables on daemon threads; ``submit`` returns a concurrent Future."""

    def __init__(self, name: str, limit: int = MAX_THREADS) -> None:
        self._name = name
        self._limit = limit
        self._jobs: queue.SimpleQueue[tuple[concurrent.futures.Future[Any],
                                            Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue())
        self._lock = threading.Lock()
        self._threads = 0
        self._free = 0  # threads waiting for a job and not yet promised one
        self._unclaimed = 0  # jobs queued while every thread was busy (at the limit)
        self._closed = False

    def __repr__(self) -> str:
        return f"<CheckThreads {self._name} threads={self._threads} free={self._free}>"

    @property
    def busy(self) -> int:
        """Threads running a check (or stuck in one)."""
        with self._lock:
            return self._threads - self._free

    @property
    def full(self) -> bool:
        """Every thread is running a check, and no new one may start: a check submitted
        now would wait for one of them to return (from a hung mount: maybe never)."""
        with self._lock:
            return self._threads >= self._limit and self._free == 0

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._name}: closed")
            self._jobs.put((future, fn, args))
            if self._free:
                self._free -= 1
            elif self._threads < self._limit:
                self._threads += 1
                threading.Thread(target=self._work, name=f"{self._name}-{self._threads}",
                                 daemon=True).start()
            else:  # the first thread to come back takes it
                self._unclaimed += 1
        return future

    def close(self) -> None:
        """Let the threads end; one stuck in a check ends when (if) the call returns."""
        with self._lock:
            self._closed = True
            count = self._threads
        for _ in range(count):
            self._jobs.put(None)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                with self._lock:
                    self._threads -= 1
                return
            future, fn, args = job
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args)
                except BaseException as err:  # handed to the waiter, never lost
                    future.set_exception(err)
                else:
                    future.set_result(result)
            with self._lock:
                if self._unclaimed:  # the next job in the queue is this thread's
                    self._unclaimed -= 1
                else:
                    self._free += 1


def on_loop[T](future: concurrent.futures.Future[T], loop: asyncio.AbstractEventLoop
               ) -> asyncio.Future[T]:
    """An asyncio future that follows a thread's future; unlike ``wrap_future`` it stays
    quiet when the thread finishes after the loop closed (a check stuck past shutdown)."""
    waiter: asyncio.Future[T] = loop.create_future()

    def settle(done: concurrent.futures.Future[T]) -> None:
        if waiter.done():
            return
        if done.cancelled():
            waiter.cancel()
        elif (err := done.exception()) is not None:
            waiter.set_exception(err)
        else:
            waiter.set_result(done.result())

    def copy(done: concurrent.futures.Future[T]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, done)

    future.add_done_callback(copy)
    return waiter


Item = Request | Rejection


async def checked(checks: CheckThreads, decode: Callable[[bool], Item], seconds: float,
                  undelivered: list[Item], what: str = "request") -> Item:
    """``decode(True)`` (which checks files, and may block: a stale NFS mount, a big
    dataset) on a check thread, for at most ``seconds`` (``daemon.file_timeout``);
    past that, or when every check thread is stuck, ``decode(False)`` (no file system at
    all) refused.  Cancelled (the input stops): the item, answered as never accepted, goes
    to ``undelivered``."""
    if checks.full:  # every check thread is stuck: refused at once
        return overdue(decode(False), seconds, stuck=checks.busy)
    future = checks.submit(decode, True)
    try:
        async with asyncio.timeout(seconds):
            return await on_loop(future, asyncio.get_running_loop())
    except TimeoutError:
        future.cancel()  # if it has not begun
        logger.warning("%s: a file check took longer than daemon.file_timeout (%g s); the "
                       "request is refused", what, seconds)
        return overdue(decode(False), seconds)
    except asyncio.CancelledError:  # stopping: answer it, it never reached the journal
        future.cancel()
        done = future.done() and not future.cancelled() and future.exception() is None
        undelivered.append(not_accepted(future.result() if done else decode(False)))
        raise
