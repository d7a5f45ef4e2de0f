"""The engine's endpoints by name, each with its warm pool, and how a reload changes them.

A reload opens the pools of new and changed endpoints first (nothing changes if one
cannot start), swaps them in at once (an endpoint whose settings did not change keeps
its pool, warm), and retires the pools it replaced or removed once the requests that
started with them are done: each request uploads through the snapshot of endpoints
taken when it started (``snapshot``; ``TransferEngine.view``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from .. import stats as series
from ..config import EndpointConfig
from ..stats import Reader, Stats
from .files import Files
from .policy import Endpoint
from .pool import EndpointPool

logger = logging.getLogger(__name__)


class Endpoints:
    """The current endpoints (``current``), and those a reload retired, still open."""

    def __init__(self, files: Files, stats: Stats) -> None:
        self._files = files
        self._stats = stats
        self.current: dict[str, Endpoint] = {}
        self._retiring: list[Endpoint] = []  # replaced or removed, not yet closed

    def __repr__(self) -> str:
        return (f"<Endpoints {', '.join(self.current) or 'none'}"
                f"{f' retiring={len(self._retiring)}' if self._retiring else ''}>")

    def snapshot(self) -> Mapping[str, Endpoint]:
        """The endpoints now, unchanged by a later reload (which swaps in a new dict)."""
        return MappingProxyType(self.current)

    async def start(self, configs: Mapping[str, EndpointConfig],
                    warm_buckets: Mapping[str, str]) -> None:
        for name, ep in configs.items():
            self.current[name] = end = await self._open(ep, warm_buckets.get(name))
            _follow(self._stats, name, end.pool)

    async def close(self) -> None:
        for end in [*self.current.values(), *self._retiring]:
            await end.pool.close()
        self.current.clear()
        self._retiring.clear()

    async def _open(self, ep: EndpointConfig, warm_bucket: str | None) -> Endpoint:
        pool = EndpointPool(ep, warm_bucket)
        try:
            await pool.start()
        except BaseException:
            await pool.close()
            raise
        logger.info("endpoint %s ready", ep.summary())
        return Endpoint(ep.name, pool, self._files, self._stats)

    # --- a reload ---------------------------------------------------------------------

    async def open(self, configs: Mapping[str, EndpointConfig], names: Iterable[str],
                   warm_buckets: Mapping[str, str]) -> dict[str, Endpoint]:
        """New pools for the endpoints ``names`` of ``configs``, unused until
        :meth:`swap`; if one cannot start, those started are closed and the error
        raised (nothing changed)."""
        opened: dict[str, Endpoint] = {}
        try:
            for name in names:
                opened[name] = await self._open(configs[name], warm_buckets.get(name))
        except BaseException:
            for end in opened.values():
                await end.pool.close()
            raise
        return opened

    def swap(self, configs: Mapping[str, EndpointConfig], opened: Mapping[str, Endpoint],
             warm_buckets: Mapping[str, str]) -> list[Endpoint]:
        """Make ``configs`` the endpoints, at once: those in ``opened`` take their
        place, the others keep their pool (and warmth).  The endpoints replaced or
        removed are returned still open (snapshots taken earlier use them) for
        :meth:`retire`."""
        retired = [end for name, end in self.current.items()
                   if name not in configs or name in opened]
        current = {name: opened[name] if name in opened else self.current[name]
                   for name in configs}
        for name, end in current.items():
            if name not in opened:
                end.pool.warm_bucket = warm_buckets.get(name)
        self.current = current  # a new dict: earlier snapshots keep the old one
        for name in opened:
            _follow(self._stats, name, current[name].pool, carry=True)
        self._retiring += retired
        return retired

    async def retire(self, ends: Iterable[Endpoint]) -> None:
        """Close the pools of endpoints a reload replaced or removed (once the requests
        that started with them are done); a pool closed already is skipped."""
        for end in ends:
            if any(end is r for r in self._retiring):
                self._retiring = [r for r in self._retiring if r is not end]
                await end.pool.close()
                logger.info("endpoint %s: the pool it had before the reload is closed",
                            end.name)


def _follow(stats: Stats, name: str, pool: EndpointPool, *, carry: bool = False) -> None:
    """The pool's own numbers, read when the registry is (nothing per request);
    ``carry``: a pool that replaces another, whose counts its counters go on from."""
    tcp = pool.tcp
    gauges: tuple[tuple[str, Reader], ...] = (
        (series.UPLOADS_IN_FLIGHT, lambda: pool.uploading),
        (series.ACTIVE, lambda: pool.active),
        (series.POOL_OPEN, lambda: pool.connections_open),
        (series.POOL_IDLE, lambda: pool.connections_idle),
        (series.LAST_SUCCESS, lambda: pool.last_success),
        (series.TCP_RTT, lambda: tcp.rtt))
    counters: tuple[tuple[str, Reader], ...] = (
        (series.KEEPWARM, lambda: pool.warm_requests),
        (series.TCP_RETRANS_SEGMENTS, lambda: tcp.retrans_segments),
        (series.TCP_RETRANS_BYTES, lambda: tcp.retrans_bytes))
    for gauge, read in gauges:
        stats.set(gauge, read, endpoint=name)
    for counter, read in counters:
        stats.follow(counter, read, endpoint=name, carry=carry)
