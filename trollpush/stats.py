"""One registry of counters, gauges and histograms that every stage reports to.

The stop summary, the tests and (later) Prometheus metrics and ``trollpush status`` are
views of it, so a number is counted once, in the stage where it happens.  Series are
named here (one place) and carry labels, as Prometheus does; reads and writes may come
from any thread.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

# --- the series (labels in brackets) --------------------------------------------------

#: requests by what happened to them [input, outcome, reason]; outcomes: ``accepted``,
#: ``rejected`` (not accepted: bad, refused, or the journal down), ``completed``,
#: ``failed``, ``abandoned`` (cut off by a stop), ``resumed`` (from the journal)
REQUESTS = "requests"
#: uploads (one file to one object) by outcome [endpoint, outcome, reason]
UPLOADS = "uploads"
#: bytes of uploads that landed [endpoint]
BYTES = "bytes_uploaded"
#: store calls made for uploads, and the ones that were retries [endpoint]
ATTEMPTS = "attempts"
RETRIES = "retries"
#: journal writes that failed after a request was accepted
JOURNAL_ERRORS = "journal_errors"
#: gauges: requests waiting for a slot, and running
QUEUED = "requests_queued"
IN_FLIGHT = "requests_in_flight"
#: gauge: store calls (PUTs and parts) running [endpoint]
ACTIVE = "uploads_active"
#: histogram: seconds a request waited between its receipt and its start [input]
QUEUED_SECONDS = "request_queued_seconds"
#: histograms of one upload [endpoint]: seconds from acceptance to landing, on the wire
TOTAL_SECONDS = "upload_total_seconds"
TRANSFER_SECONDS = "upload_transfer_seconds"

#: histogram bounds, in seconds: 1 ms to ~9 min in steps of ~2.5x
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 25.0, 60.0, 150.0, 300.0, 600.0)

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Mapping[str, object]) -> Labels:
    return tuple(sorted((k, str(v)) for k, v in labels.items() if v is not None))


@dataclass
class Histogram:
    """Counts of observations per bucket (cumulative on read), their sum and number."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1


class Stats:
    """The registry; ``inc``/``set``/``observe`` report, the rest read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, Labels], float] = {}
        self._gauges: dict[tuple[str, Labels], float | Callable[[], float]] = {}
        self._histograms: dict[tuple[str, Labels], Histogram] = {}

    def __repr__(self) -> str:
        return f"<Stats {self.summary() or 'empty'}>"

    # --- reporting ------------------------------------------------------------------------

    def inc(self, name: str, amount: float = 1, **labels: object) -> None:
        key = (name, _labels(labels))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + amount

    def set(self, name: str, value: float | Callable[[], float], **labels: object) -> None:
        """A gauge: a value, or a function read when the gauge is (queue depth, say)."""
        with self._lock:
            self._gauges[(name, _labels(labels))] = value

    def observe(self, name: str, value: float, *,
                buckets: tuple[float, ...] = SECONDS_BUCKETS, **labels: object) -> None:
        key = (name, _labels(labels))
        with self._lock:
            hist = self._histograms.get(key)
            if hist is None:
                hist = self._histograms[key] = Histogram(buckets)
            hist.observe(value)

    # --- reading --------------------------------------------------------------------------

    def total(self, name: str, **match: object) -> float:
        """The sum of a counter (or gauge) over every series whose labels include
        ``match``: ``total(REQUESTS, outcome="failed")`` counts failures of any reason."""
        want = set(_labels(match))
        return sum(value for (_, labels), value in self._series(name) if want <= set(labels))

    def count(self, name: str, **match: object) -> int:
        return int(self.total(name, **match))

    def histogram(self, name: str, **labels: object) -> Histogram | None:
        with self._lock:
            return self._histograms.get((name, _labels(labels)))

    def series(self) -> Iterator[tuple[str, Labels, float]]:
        """Every counter and gauge now: (name, labels, value)."""
        with self._lock:
            items = [*self._counters.items(), *self._gauges.items()]
        for (name, labels), value in sorted(items, key=lambda item: item[0]):
            yield name, labels, value() if callable(value) else value

    def outcomes(self) -> Counter[str]:
        """Requests by outcome, over every input and reason."""
        out: Counter[str] = Counter()
        for (_, labels), value in self._series(REQUESTS):
            out[dict(labels).get("outcome", "?")] += int(value)
        return out

    def summary(self) -> str:
        """``12 accepted, 11 completed, 1 failed``: the requests, for a log line."""
        return ", ".join(f"{n} {k}" for k, n in sorted(self.outcomes().items()) if n)

    def _series(self, name: str) -> list[tuple[tuple[str, Labels], float]]:
        with self._lock:
            counters = [(k, v) for k, v in self._counters.items() if k[0] == name]
            gauges = [(k, v) for k, v in self._gauges.items() if k[0] == name]
        return counters + [(k, v() if callable(v) else v) for k, v in gauges]
