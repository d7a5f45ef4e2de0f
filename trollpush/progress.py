"""Progress of one request, for a requester that asked to watch it (``trollpush send``).

A :class:`Meter` counts the bytes of a request's files read to be sent, where the bodies
are read: the threads aiohttp reads a streamed body in store one int per chunk (no lock,
no call into the loop), a body sent whole counts once it is sent.  :func:`watch` runs a
timer on the loop beside the request that turns the count into progress frames, at most
one per ``INTERVAL`` and only when the count moved: the cost is one timer per watched
request, nothing per byte but an int stored per chunk read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Hashable, Sequence

from . import messages
from .models import Job, ProgressReader, Request

#: seconds between two progress frames of one request (at most 4 a second)
INTERVAL = 0.25


class Meter:
    """Bytes read to be sent, per body (a single PUT, or one part), counted once.

    Each body's count is the furthest position read in it, so a retried attempt that
    reads the body again does not count it twice.  Keys are added on the loop (by
    :meth:`tally`, when a body is built); the reading threads only store into existing
    keys, so the loop can sum them while they read.
    """

    def __init__(self, total: int) -> None:
        self.total = total  # the size of the request's files (at receipt)
        self._seen: dict[Hashable, int] = {}
        self._finished = False

    def __repr__(self) -> str:
        return f"<Meter {self.done}/{self.total} bodies={len(self._seen)}>"

    def tally(self, key: Hashable) -> Callable[[int], None]:
        """What a body reader calls with its position after each read (call on the loop)."""
        seen = self._seen
        seen.setdefault(key, 0)

        def at(position: int) -> None:
            if position > seen[key]:
                seen[key] = position

        return at

    def sent(self, key: Hashable, size: int) -> None:
        """A body sent whole (read into memory before): ``size`` bytes at once."""
        self.tally(key)(size)

    def finish(self) -> None:
        """Every file landed (some perhaps sent earlier, or resumed): all of it is done."""
        self._finished = True

    @property
    def done(self) -> int:
        if self._finished:
            return self.total
        return min(sum(self._seen.values()), self.total)


#: what an unwatched request runs in (nearly every one): nothing
_UNWATCHED: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()


def watch(request: Request, jobs: Sequence[Job], *, interval: float = INTERVAL
          ) -> contextlib.AbstractAsyncContextManager[Meter | None]:
    """While the body runs the request's jobs: a Meter for the engine, and progress
    frames to the requester, if it asked for them (else None, and nothing runs).

    A frame goes when the count moved, at most once per ``interval``; one more when the
    body ends without an error (the whole size once :meth:`Meter.finish` was called)."""
    reply = request.reply
    if not (jobs and getattr(reply, "wants_progress", False)
            and isinstance(reply, ProgressReader)):
        return _UNWATCHED
    return _watched(request, reply, jobs, interval)


@contextlib.asynccontextmanager
async def _watched(request: Request, reply: ProgressReader, jobs: Sequence[Job],
                   interval: float) -> AsyncIterator[Meter]:
    meter = Meter(sum(u.source.stat[0] for job in jobs for u in job.uploads
                      if u.source.stat is not None))
    last = -1

    async def frame() -> None:
        nonlocal last
        done = meter.done
        if done != last:
            last = done
            await reply.progress(messages.progress(request, done, meter.total))

    async def tick() -> None:
        while True:
            await frame()
            await asyncio.sleep(interval)

    task = asyncio.get_running_loop().create_task(tick(), name=f"progress {request.id}")
    try:
        yield meter
    finally:
        task.cancel()
        await asyncio.wait([task])
    await frame()
