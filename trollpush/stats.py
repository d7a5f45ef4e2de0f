"""One registry of counters, gauges and histograms that every stage reports to.

The stop summary, the tests, Prometheus metrics (:mod:`trollpush.metrics`) and
``trollpush status`` (:mod:`trollpush.status`) are views of it, so a number is counted
once, in the stage where it happens.  Series are named and described here (one place,
:data:`SERIES`) and carry labels, as Prometheus does; reads and writes may come from any
thread.

A stage reports in one of three ways: ``inc``/``observe`` where the event happens (a few
updates per request, never per byte); ``set`` a gauge to a value or to a function read
when the registry is (queue depth, connections open); ``follow`` a counter that the
stage already keeps as a plain number (frames received, messages published), read the
same way: nothing is added to its hot path.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# --- the series (labels in brackets) --------------------------------------------------
# Names are Prometheus-style, with their unit; the exporter adds the ``trollpush_``
# prefix, and ``_total`` to counters.

#: requests by what happened to them [input, outcome, reason]; outcomes: ``accepted``,
#: ``rejected`` (not accepted: bad, refused, or the journal down), ``completed``,
#: ``failed``, ``abandoned`` (cut off by a stop), ``resumed`` (from the journal),
#: ``handed_over`` (recovered from the journal, and done by another instance)
REQUESTS = "requests"
#: what each input took in before any check [input]: messages (subscribe, requests),
#: connections (s3daemon), POSTs (http), ready files (watch)
RECEIVED = "requests_received"
#: uploads (one file to one object) by outcome [endpoint, outcome, reason]
UPLOADS = "uploads"
#: bytes of uploads that landed [endpoint]
BYTES = "upload_bytes"
#: store calls made for uploads, and the ones that were retries [endpoint]
ATTEMPTS = "upload_attempts"
RETRIES = "upload_retries"
#: journal writes that failed after a request was accepted
JOURNAL_ERRORS = "journal_errors"
#: gauges: requests waiting for a slot, and running
QUEUED = "requests_queued"
IN_FLIGHT = "requests_in_flight"
#: gauges [endpoint]: files being uploaded, and store calls (PUTs and parts) running
UPLOADS_IN_FLIGHT = "uploads_in_flight"
ACTIVE = "parts_in_flight"
#: histogram: seconds a request waited between its receipt and its start [input]
QUEUED_SECONDS = "request_queued_seconds"
#: histograms of one upload [endpoint]: seconds from acceptance to landing, on the wire
TOTAL_SECONDS = "upload_total_seconds"
TRANSFER_SECONDS = "upload_transfer_seconds"
#: histogram of one landed upload [endpoint]: its bytes over its transfer seconds
RATE = "upload_rate_bytes_per_second"
#: gauges [endpoint]: the pool's connections open, and those not carrying a request
POOL_OPEN = "pool_connections_open"
POOL_IDLE = "pool_connections_idle"
#: the cheap requests that open and keep the pool's connections warm [endpoint]
KEEPWARM = "keepwarm_requests"
#: gauges: requests accepted and not finished in the journal; its files' bytes
JOURNAL_BACKLOG = "journal_backlog_requests"
JOURNAL_SIZE = "journal_size_bytes"
#: gauge: when an upload last landed, Unix time (0: never) [endpoint]
LAST_SUCCESS = "last_success_timestamp_seconds"
#: completions and failures sent on posttroll, and sends that failed [outcome]
ANNOUNCEMENTS = "announcements"
#: config reloads [outcome]: ``applied`` or ``refused`` (the config did not validate)
RELOADS = "config_reloads"
#: gauge, always 1: what runs [version, python, aiobotocore]
BUILD_INFO = "build_info"
#: TCP_INFO of the pool's sockets, read every few seconds [endpoint]: smoothed RTT (the
#: mean over open connections), and segments and bytes sent again
TCP_RTT = "tcp_rtt_seconds"
TCP_RETRANS_SEGMENTS = "tcp_retransmitted_segments"
TCP_RETRANS_BYTES = "tcp_retransmitted_bytes"
#: gauges [stream, consumer] of the shared JetStream consumer, as last read (every few
#: seconds, inputs/_jetstream_info.py): messages not yet delivered to any instance,
#: delivered and not acknowledged, and of those, delivered more than once; the seconds
#: since that reading (it grows while the server cannot be read)
JS_PENDING = "jetstream_pending_messages"
JS_ACK_PENDING = "jetstream_ack_pending_messages"
JS_REDELIVERED = "jetstream_redelivered_messages"
JS_AGE = "jetstream_info_age_seconds"
#: gauge [stream]: messages in the stream (a work queue: those not yet acknowledged)
JS_MESSAGES = "jetstream_stream_messages"
#: what the jetstream input told JetStream of its messages [stream, consumer, kind]:
#: ack, term, nak, missing (handed back, the file missing here), progress
JS_ACKS = "jetstream_acks"
JS_BRIDGED = "jetstream_bridged"

#: histogram bounds, in seconds: 1 ms to ~9 min in steps of ~2.5x
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 25.0, 60.0, 150.0, 300.0, 600.0)
#: histogram bounds, in bytes per second: 10 kB/s to 10 GB/s in steps of 2-2.5x
RATE_BUCKETS = (*(m * 10.0 ** e for e in range(4, 10) for m in (1, 2.5, 5)), 1e10)


@dataclass(frozen=True)
class Series:
    """What one series is: its kind (``counter``, ``gauge``, ``histogram``), the labels
    it may carry, and what it means (the exporter's help text)."""

    kind: str
    labels: tuple[str, ...]
    help: str


def _s(kind: str, help_: str, *labels: str) -> Series:
    return Series(kind, labels, help_)


#: every series, by name: what the exporter exposes and docs/metrics.md describes
SERIES: Mapping[str, Series] = MappingProxyType({
    REQUESTS: _s("counter", "Requests by input, outcome (accepted, rejected, completed, "
                 "failed, abandoned, resumed, handed_over) and reason of a rejection or "
                 "failure.",
                 "input", "outcome", "reason"),
    RECEIVED: _s("counter", "What each input took in, before any check: messages, "
                 "connections (s3daemon), POSTs (http) or ready files (watch).", "input"),
    UPLOADS: _s("counter", "Uploads (one file to one object) by endpoint, outcome "
                "(completed: written; failed; reused: answered from the journal; "
                "already_there: the same content found at the object, nothing written) "
                "and reason of a failure.",
                "endpoint", "outcome", "reason"),
    BYTES: _s("counter", "Bytes of the uploads that landed.", "endpoint"),
    ATTEMPTS: _s("counter", "Store calls made for uploads (PUTs and parts).", "endpoint"),
    RETRIES: _s("counter", "Store calls made again after a failed attempt.", "endpoint"),
    JOURNAL_ERRORS: _s("counter", "Journal writes that failed after a request was "
                       "accepted."),
    QUEUED: _s("gauge", "Requests accepted and waiting for a slot (daemon.max_in_flight)."),
    IN_FLIGHT: _s("gauge", "Requests running."),
    UPLOADS_IN_FLIGHT: _s("gauge", "Files being uploaded.", "endpoint"),
    ACTIVE: _s("gauge", "Store calls (single PUTs and parts) in progress.", "endpoint"),
    QUEUED_SECONDS: _s("histogram", "Seconds from a request's receipt to its start.",
                       "input"),
    TOTAL_SECONDS: _s("histogram", "Seconds from a request's acceptance to the landing "
                      "of one of its uploads.", "endpoint"),
    TRANSFER_SECONDS: _s("histogram", "Seconds one upload took, its attempts included.",
                         "endpoint"),
    RATE: _s("histogram", "Bytes per second of one landed upload.", "endpoint"),
    POOL_OPEN: _s("gauge", "Connections the endpoint's pool holds open.", "endpoint"),
    POOL_IDLE: _s("gauge", "Open connections carrying no request now.", "endpoint"),
    KEEPWARM: _s("counter", "Cheap requests sent to open connections or keep them warm.",
                 "endpoint"),
    JOURNAL_BACKLOG: _s("gauge", "Requests accepted in the journal and not finished."),
    JOURNAL_SIZE: _s("gauge", "Bytes of the journal's files (database and WAL)."),
    LAST_SUCCESS: _s("gauge", "When an upload to the endpoint last landed, Unix time "
                     "(0: none since start).", "endpoint"),
    ANNOUNCEMENTS: _s("counter", "posttroll messages: published, or failed to send.",
                      "outcome"),
    RELOADS: _s("counter", "Config reloads: applied, or refused (invalid config).",
                "outcome"),
    BUILD_INFO: _s("gauge", "Always 1: the versions that run.",
                   "version", "python", "aiobotocore"),
    TCP_RTT: _s("gauge", "Smoothed round-trip time of the pool's open connections "
                "(TCP_INFO, their mean, read every few seconds).", "endpoint"),
    TCP_RETRANS_SEGMENTS: _s("counter", "TCP segments the pool's connections sent again "
                             "(TCP_INFO).", "endpoint"),
    TCP_RETRANS_BYTES: _s("counter", "Bytes the pool's connections sent again "
                          "(TCP_INFO).", "endpoint"),
    JS_PENDING: _s("gauge", "Messages of the JetStream consumer not yet delivered to any "
                   "instance (as last read).", "stream", "consumer"),
    JS_ACK_PENDING: _s("gauge", "Messages delivered by the JetStream consumer and not yet "
                       "acknowledged, by any instance (as last read).", "stream", "consumer"),
    JS_REDELIVERED: _s("gauge", "Of the messages not yet acknowledged, those delivered more "
                       "than once (as last read).", "stream", "consumer"),
    JS_AGE: _s("gauge", "Seconds since the JetStream consumer's counts were last read.",
               "stream", "consumer"),
    JS_MESSAGES: _s("gauge", "Messages in the JetStream stream (as last read).", "stream"),
    JS_ACKS: _s("counter", "What the jetstream input told JetStream of its messages: ack, "
                "term, nak, missing (handed back: the file is missing here), progress.",
                "stream", "consumer", "kind"),
    JS_BRIDGED: _s("counter", "Requests the bridge took from this instance's other inputs: "
                   "published (into the stream), duplicate (the stream had it already: "
                   "another instance heard it too), fallback (done here: the stream could "
                   "not take it), reply (outcomes relayed to a waiting caller).", "outcome"),
})

Labels = tuple[tuple[str, str], ...]
#: a gauge's or followed counter's function; None: no value now
Reader = Callable[[], float | None]


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
        if len(self.counts) != len(self.bounds) + 1:
            self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def copy(self) -> Histogram:
        return Histogram(self.bounds, list(self.counts), self.total, self.count)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), ending with (inf, count)."""
        out, seen = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            seen += n
            out.append((bound, seen))
        return out


def _plus(base: float, read: Reader) -> Reader:
    def total() -> float:
        return base + (read() or 0.0)
    return total


class Stats:
    """The registry; ``inc``/``set``/``follow``/``observe`` report, the rest read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, Labels], float] = {}
        self._followed: dict[tuple[str, Labels], Reader] = {}
        self._gauges: dict[tuple[str, Labels], float | Reader] = {}
        self._histograms: dict[tuple[str, Labels], Histogram] = {}

    def __repr__(self) -> str:
        return f"<Stats {self.summary() or 'empty'}>"

    # --- reporting ------------------------------------------------------------------------

    def inc(self, name: str, amount: float = 1, **labels: object) -> None:
        key = (name, _labels(labels))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + amount

    def set(self, name: str, value: float | Reader, **labels: object) -> None:
        """A gauge: a value, or a function read when the gauge is (queue depth, say);
        a function that returns None has no value now."""
        with self._lock:
            self._gauges[(name, _labels(labels))] = value

    def follow(self, name: str, read: Reader, *, carry: bool = False,
               **labels: object) -> None:
        """A counter that a stage keeps itself (a plain number that only grows), read
        when the registry is: the stage's hot path pays nothing.  Added to what ``inc``
        counted under the same name and labels, if anything.  ``carry``: the stage
        replaces one followed under these labels (a reload's new input or pool), whose
        count so far the counter keeps: it never goes back."""
        key = (name, _labels(labels))
        with self._lock:
            old = self._followed.get(key) if carry else None
        if old is not None:
            base = old() or 0.0
            read = _plus(base, read)
        with self._lock:
            self._followed[key] = read

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

    def values(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Every series of one name that has a value now: (labels, value)."""
        return [(dict(labels), value) for (_, labels), value in self._series(name)]

    def histogram(self, name: str, **labels: object) -> Histogram | None:
        with self._lock:
            return self._histograms.get((name, _labels(labels)))

    def series(self) -> Iterator[tuple[str, Labels, float]]:
        """Every counter and gauge that has a value now: (name, labels, value), a
        counter followed and counted under the same labels once, summed."""
        for (name, labels), value in sorted(self._values(None).items()):
            yield name, labels, value

    def histograms(self) -> list[tuple[str, Labels, Histogram]]:
        """A copy of every histogram: (name, labels, histogram)."""
        with self._lock:
            return sorted((name, labels, hist.copy())
                          for (name, labels), hist in self._histograms.items())

    def outcomes(self) -> Counter[str]:
        """Requests by outcome, over every input and reason."""
        out: Counter[str] = Counter()
        for (_, labels), value in self._series(REQUESTS):
            out[dict(labels).get("outcome", "?")] += int(value)
        return out

    def summary(self) -> str:
        """``12 accepted, 11 completed, 1 failed``: the requests, for a log line."""
        return listed(self.outcomes())

    def _series(self, name: str) -> list[tuple[tuple[str, Labels], float]]:
        return list(self._values(name).items())

    def _values(self, name: str | None) -> dict[tuple[str, Labels], float]:
        """Counters (followed ones added) and gauges with a value now, of one name or
        all; functions are called outside the lock."""
        with self._lock:
            counters = [(k, v) for k, v in self._counters.items() if name in (None, k[0])]
            followed = [(k, v) for k, v in self._followed.items() if name in (None, k[0])]
            gauges = [(k, v) for k, v in self._gauges.items() if name in (None, k[0])]
        out = dict(counters)
        for key, read in followed:
            if (value := read()) is not None:
                out[key] = out.get(key, 0) + value
        for key, gauge in gauges:
            if (value := gauge() if callable(gauge) else gauge) is not None:
                out[key] = value
        return out


def listed(counts: Mapping[str, int]) -> str:
    """``12 accepted, 11 completed, 1 failed``: non-zero counts by name, for a log line."""
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()) if n)
