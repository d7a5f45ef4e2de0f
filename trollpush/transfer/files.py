"""Blocking file-system calls for the uploads, in worker threads, each waited for a
bounded time: a hung mount (a stale NFS server) fails an upload, never holds it up, nor
any other, for ever."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from .._workers import Workers
from ..config import EndpointConfig
from ..errors import PermanentTransferError, Reason
from .policy import classify


class Files:
    """Blocking file-system calls in worker threads, each waited for a bounded time.

    Short calls (open, fstat, small reads) and long checksum reads run on threads of
    their own, so that the long ones never hold up the short ones (and never take the
    loop's default executor, where aiohttp reads request bodies).
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout  # daemon.file_timeout
        self._io = Workers()
        self._reads = Workers(name="trollpush-read")

    def start(self) -> None:
        self._io.start()
        self._reads.start()

    async def close(self) -> None:
        await self._io.close()
        await self._reads.close()

    async def call[T](self, ep: EndpointConfig, size: int, fn: Callable[..., T], *args: Any,
                      long: bool = False, discard: Callable[[T], object] | None = None) -> T:
        """One blocking call, waited for at most ``timeout`` (plus the time ``size``
        bytes may take to read): a hung mount fails the upload instead of holding it up
        for ever.  The thread itself stays stuck until the kernel returns, so another
        takes its place; ``discard`` releases what the call returns if it comes back
        after the wait was given up."""
        workers = self._reads if long else self._io
        limit = self.timeout + (ep.attempt_budget(size, 1) if size else 0.0)
        call = workers.submit(fn, *args, discard=discard)
        try:
            wait = limit
            while True:
                try:
                    return await asyncio.wait_for(asyncio.shield(call.future), wait)
                except TimeoutError:
                    # the time counts from when a thread began the call; not begun: every
                    # thread is stuck in an earlier call, so a new one takes this call
                    if call.started is None:
                        if not workers.grow():
                            raise
                        continue
                    wait = call.started + limit - time.monotonic()
                    if wait <= 0:
                        raise
        except TimeoutError as err:
            call.future.cancel()
            workers.grow()
            raise PermanentTransferError(
                f"a file-system call ({getattr(fn, '__name__', 'read')}) took longer than "
                f"{limit:g} s (daemon.file_timeout): a hung mount?",
                reason=Reason.FILE_UNREADABLE) from err
        except asyncio.CancelledError:
            call.future.cancel()
            raise
        except OSError as err:
            raise classify(err) from err
