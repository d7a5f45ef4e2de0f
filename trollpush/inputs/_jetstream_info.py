"""What JetStream says of the shared consumer, for ``trollpush status`` and the metrics.

The work waiting in the stream is not this instance's to count: JetStream keeps it for
every instance sharing the consumer.  :class:`ConsumerWatch` asks the server for the
consumer's info (and the stream's message count) every :attr:`ConsumerWatch.EVERY`
seconds, one call after the other, each bounded, and keeps the last reading: a status
or a scrape reads that, never the server.  A failed reading keeps the last values,
marked stale with their age; it never reaches the input.

:func:`follow_counts` is how the JetStream side reports the plain numbers it keeps (the
input's outcomes sent back; the bridge's counts when it has them): followed, read
when the registry is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import stats

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

logger = logging.getLogger("trollpush.receive")


@dataclass(frozen=True)
class Reading:
    """One answer of the server: the consumer's counts, the stream's messages."""

    pending: int  # in the stream, not yet delivered to any instance
    ack_pending: int  # delivered, not yet acknowledged (held by some instance)
    redelivered: int  # of those, delivered more than once
    waiting: int  # pull requests waiting at the server
    delivered_seq: int  # the last stream sequence delivered
    ack_floor_seq: int  # every message up to this one is acknowledged
    messages: int | None  # in the stream (work queue: what is not yet acknowledged)
    at: float  # monotonic time of the answer


#: what the status shows of a reading, in this order
SHOWN = ("pending", "ack_pending", "redelivered", "waiting", "messages", "delivered_seq",
         "ack_floor_seq")


class ConsumerWatch:
    """The consumer's info, read every ``EVERY`` seconds on the loop, the last kept."""

    #: seconds between two readings (the next starts once the last has ended)
    EVERY = 5.0

    def __init__(self, stream: str, consumer: str, *, timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.consumer = consumer
        self._timeout = timeout  # one reading (both calls) at most
        self._clock = clock
        self.reading: Reading | None = None
        self.error: str | None = None  # why the last reading failed (None: it did not)
        self.reads = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        r = self.reading
        return (f"<ConsumerWatch {self.stream}/{self.consumer} "
                + (f"pending={r.pending} ack_pending={r.ack_pending} "
                   f"redelivered={r.redelivered} age={self.age:.1f}s" if r else "unread")
                + (" stale>" if self.stale else ">"))

    @property
    def age(self) -> float | None:
        """Seconds since the last good reading (None: none yet)."""
        return None if self.reading is None else self._clock() - self.reading.at

    @property
    def stale(self) -> bool:
        """The last reading failed: the values shown are older ones."""
        return self.error is not None

    def start(self, js: JetStreamContext, registry: stats.Stats, *,
              sent: Mapping[str, int]) -> None:
        """Read now, then every ``EVERY`` seconds; the series join ``registry``
        (``sent``: the input's outcomes sent back, by kind)."""
        self._follow(registry, sent)
        self._task = asyncio.get_running_loop().create_task(self._run(js),
                                                            name="jetstream-info")

    async def stop(self) -> None:
        """Stop reading; the gauges have no value from here on (idempotent)."""
        task, self._task = self._task, None
        self.reading = None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self.reading = None  # (an answer that came while it was cancelled)

    async def _run(self, js: JetStreamContext) -> None:
        while True:
            await self.read(js)
            await asyncio.sleep(self.EVERY)

    async def read(self, js: JetStreamContext) -> bool:
        """One reading, bounded; a failure is kept (logged once), never raised."""
        try:
            async with asyncio.timeout(self._timeout):
                consumer = await js.consumer_info(self.stream, self.consumer)
                stream = await js.stream_info(self.stream)
        except Exception as err:  # the server away, a timeout, the consumer deleted
            self.failures += 1
            if self.error is None:
                logger.warning("jetstream: cannot read consumer %s of stream %s (%s); its "
                               "counts shown are stale until it can", self.consumer,
                               self.stream, type(err).__name__)
            self.error = f"{type(err).__name__}: {err}"[:200]
            return False
        if self.error is not None:
            logger.info("jetstream: consumer %s of stream %s read again", self.consumer,
                        self.stream)
        self.reading = _reading(consumer, stream, at=self._clock())
        self.error = None
        self.reads += 1
        return True

    def details(self) -> dict[str, Any]:
        """The last reading for the status (None where there is none)."""
        r, age = self.reading, self.age
        return {"stream": self.stream, "consumer": self.consumer,
                **{name: None if r is None else getattr(r, name) for name in SHOWN},
                "age_seconds": None if age is None else round(age, 3),
                "stale": self.stale, "error": self.error}

    def _follow(self, registry: stats.Stats, sent: Mapping[str, int]) -> None:
        on = {"stream": self.stream, "consumer": self.consumer}
        for series, field in ((stats.JS_PENDING, "pending"),
                              (stats.JS_ACK_PENDING, "ack_pending"),
                              (stats.JS_REDELIVERED, "redelivered")):
            registry.set(series, self._gauge(field), **on)
        registry.set(stats.JS_MESSAGES, self._gauge("messages"), stream=self.stream)
        registry.set(stats.JS_AGE, lambda: self.age, **on)
        follow_counts(registry, stats.JS_ACKS, sent, "kind", **on)

    def _gauge(self, field: str) -> stats.Reader:
        def read() -> float | None:
            r = self.reading
            return None if r is None else getattr(r, field)
        return read


def follow_counts(registry: stats.Stats, series: str, counts: Mapping[str, int],
                  label: str, **labels: object) -> None:
    """Follow each of a dict of plain counts (kind -> n, kept by its owner) as a
    counter labelled ``label=kind``.  Carried: a reload's new input (or bridge) counts
    on from the one it replaces."""
    for key in counts:
        registry.follow(series, _count(counts, key), carry=True, **{label: key}, **labels)


def _count(counts: Mapping[str, int], key: str) -> stats.Reader:
    return lambda: counts.get(key, 0)


def _reading(consumer: Any, stream: Any, *, at: float) -> Reading:
    def seq(info: Any) -> int:
        return int(getattr(info, "stream_seq", 0) or 0)

    state = getattr(stream, "state", None)
    return Reading(pending=int(consumer.num_pending or 0),
                   ack_pending=int(consumer.num_ack_pending or 0),
                   redelivered=int(consumer.num_redelivered or 0),
                   waiting=int(consumer.num_waiting or 0),
                   delivered_seq=seq(consumer.delivered), ack_floor_seq=seq(consumer.ack_floor),
                   messages=None if state is None else int(state.messages),
                   at=at)


__all__ = ["ConsumerWatch", "Reading", "follow_counts"]
