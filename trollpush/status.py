"""``trollpush status``: what a running daemon is doing, and whether it is healthy.

One function, :func:`snapshot`, builds the status from the stats registry and the
service; both transports serve it (a ``status`` message on the REQ/REP socket, ``GET
/status`` on the HTTP input), answered at once: nothing is journaled, queued or counted
as a request.  :class:`Activity` keeps what the registry does not: a bounded ring of
per-second samples (rates over the last minute) and, per endpoint, the last error and
since when every upload has failed.  :func:`health` turns a snapshot into an exit code
(``--check``); :func:`render` into a compact table; :func:`fetch_http` reads ``GET
/status``.  Light: the client side imports neither the daemon nor the S3 stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from posttroll.message import Message

from . import __version__, stats
from .errors import Reason, TrollpushError
from .messages import new_message

if TYPE_CHECKING:
    from .service import Service

#: exit codes of ``status --check``
HEALTHY, DEGRADED, UNREACHABLE = 0, 1, 2
#: seconds of failures (and nothing landed) after which an endpoint is degraded
FAILING_FOR = 60.0
#: the rates' window and the sampling step, in seconds
WINDOW, EVERY = 60.0, 1.0
#: failures that say nothing about the store: the file's fault, the requester's, a stop
NOT_THE_STORE = frozenset({Reason.FILE_MISSING, Reason.FILE_CHANGED, Reason.FILE_UNREADABLE,
                           Reason.NOT_A_FILE, Reason.NOT_ALLOWED, Reason.CLIENT_GONE,
                           Reason.SHUTDOWN})
#: the request outcomes a status shows (stats.REQUESTS)
OUTCOMES = ("accepted", "rejected", "completed", "failed", "abandoned", "resumed")
RATED = ("accepted", "completed", "failed")
#: the REQ/REP request for the daemon's status, and its answer (whose data is the
#: snapshot): answered at once, never journaled, queued or counted as a request
STATUS_TYPE = "status"
STATUS_SUBJECT = "/trollpush/status/"


def is_status(raw: bytes) -> bool:
    """Whether a REQ/REP frame is a status request: only its header is read."""
    head = raw[:512].split(b" ", 2)
    return len(head) == 3 and head[0].startswith(b"pytroll:") and head[1] == b"status"


def status_reply(snapshot: dict[str, Any]) -> Message:
    """The answer to a status request."""
    return new_message(STATUS_SUBJECT, STATUS_TYPE, snapshot)


def versions() -> dict[str, str]:
    """What runs: trollpush, Python, aiobotocore and posttroll (package metadata only:
    nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"version": __version__, "python": platform.python_version()}
    for package in ("aiobotocore", "posttroll"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:  # pragma: no cover (dependencies)
            out[package] = "unknown"
    return out


# --- the daemon's side ------------------------------------------------------------------


@dataclass
class _Sample:
    at: float  # monotonic
    requests: dict[str, float]
    landed_bytes: dict[str, float]  # by endpoint


@dataclass
class _Endpoint:
    """What the registry does not keep of one endpoint: its last error, and since when
    every upload to it has failed (None: one landed since, or none failed)."""

    landed: float = 0.0  # uploads completed or reused, as last seen
    failed: dict[str, float] = field(default_factory=dict)  # by reason, as last seen
    last_error: tuple[float, str] | None = None  # (Unix time, reason)
    failing_since: float | None = None


class Activity:
    """Samples the registry every ``every`` seconds into a ring that spans ``window``
    (bounded: ``window / every + 2`` samples), and follows each endpoint's failures."""

    def __init__(self, registry: stats.Stats, endpoints: Callable[[], Iterable[str]], *,
                 every: float = EVERY, window: float = WINDOW,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.stats = registry
        self._endpoints = endpoints
        self.every, self.window = every, window
        self._clock, self._wall = clock, wall
        self._ring: deque[_Sample] = deque(maxlen=int(window / every) + 2)
        self._ends: dict[str, _Endpoint] = {}
        self._task: asyncio.Task[None] | None = None
        self.started = wall()
        self._started_at = clock()

    def __repr__(self) -> str:
        return f"<Activity samples={len(self._ring)} endpoints={len(self._ends)}>"

    def start(self) -> None:
        """Sample now, then every ``every`` seconds (on the running loop)."""
        self.started, self._started_at = self._wall(), self._clock()
        self.observe()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="activity")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            self.observe()

    def now(self) -> float:
        """Unix time, by the clock the endpoints' failures are timed with."""
        return self._wall()

    @property
    def uptime(self) -> float:
        return self._clock() - self._started_at

    def observe(self) -> _Sample:
        """Read the registry now: the endpoints' failures are followed, and the sample
        joins the ring when the last one there is ``every`` old (a status asked for
        often does not crowd the ring)."""
        now, wall = self._clock(), self._wall()
        requests = {k: float(v) for k, v in self.stats.outcomes().items()}
        landed_bytes: dict[str, float] = {}
        for labels, value in self.stats.values(stats.BYTES):
            name = labels.get("endpoint", "")
            landed_bytes[name] = landed_bytes.get(name, 0.0) + value
        self._follow(wall)
        sample = _Sample(now, requests, landed_bytes)
        if not self._ring or now - self._ring[-1].at >= self.every * 0.999:
            self._ring.append(sample)
        return sample

    def _follow(self, wall: float) -> None:
        landed: dict[str, float] = {}
        failed: dict[str, dict[str, float]] = {}
        for labels, value in self.stats.values(stats.UPLOADS):
            name, outcome = labels.get("endpoint", ""), labels.get("outcome")
            if outcome in ("completed", "reused", "already_there"):
                landed[name] = landed.get(name, 0.0) + value
            elif outcome == "failed" and (reason := labels.get("reason", "")) not in \
                    NOT_THE_STORE:
                by = failed.setdefault(name, {})
                by[reason] = by.get(reason, 0.0) + value
        for name in set(landed) | set(failed) | set(self._endpoints()):
            end = self._ends.setdefault(name, _Endpoint())
            now_landed, now_failed = landed.get(name, 0.0), failed.get(name, {})
            grown = {r: n - end.failed.get(r, 0.0) for r, n in now_failed.items()
                     if n > end.failed.get(r, 0.0)}
            if now_landed > end.landed:
                end.failing_since = None
            elif grown and end.failing_since is None:
                end.failing_since = wall
            if grown:
                end.last_error = (wall, max(grown, key=lambda r: grown[r]))
            end.landed, end.failed = now_landed, dict(now_failed)

    def rates(self, now: _Sample) -> tuple[float, dict[str, float], dict[str, float]]:
        """(seconds covered, requests per second by outcome, bytes per second by
        endpoint) from the oldest sample within the window to ``now``."""
        base = next((s for s in self._ring if now.at - s.at <= self.window * 1.001), None)
        span = now.at - base.at if base is not None else 0.0
        if base is None or span <= 0:
            return 0.0, dict.fromkeys(RATED, 0.0), {}
        per_request = {k: (now.requests.get(k, 0.0) - base.requests.get(k, 0.0)) / span
                       for k in RATED}
        per_endpoint = {k: (v - base.landed_bytes.get(k, 0.0)) / span
                        for k, v in now.landed_bytes.items()}
        return span, per_request, per_endpoint

    def endpoint(self, name: str) -> _Endpoint:
        return self._ends.get(name) or _Endpoint()


def snapshot(service: Service) -> dict[str, Any]:
    """The status of a running daemon, as plain JSON (times are Unix times by the
    daemon's clock; ``time`` is its now).  Nothing secret: names, counts, addresses."""
    activity, registry = service.activity, service.stats
    now = activity.observe()
    span, rates, byte_rates = activity.rates(now)
    counts = {k: int(now.requests.get(k, 0)) for k in OUTCOMES}
    journal = service.journal
    try:
        oldest = journal.oldest_accepted()
    except Exception:  # a journal that cannot be read now: shown, never raised
        oldest = None
    out: dict[str, Any] = {
        "version": __version__,
        "pid": os.getpid(),
        "time": round(activity.now(), 3),
        "started": round(activity.started, 3),
        "uptime_seconds": round(activity.uptime, 3),
        "inputs": [_input(each) for each in service.inputs],
        "requests": {**counts,
                     "queued": int(registry.total(stats.QUEUED)),
                     "in_flight": int(registry.total(stats.IN_FLIGHT)),
                     "rates": {"window_seconds": round(span, 3),
                               **{k: round(v, 4) for k, v in rates.items()}}},
        "endpoints": {name: _endpoint(registry, activity, name, byte_rates.get(name, 0.0))
                      for name in service.config.endpoints},
        "journal": {"backlog": journal.backlog, "oldest_accepted": oldest,
                    "size_bytes": journal.size_bytes,
                    "max_age": service.config.daemon.max_age},
    }
    code, problems = health(out)
    out["health"] = {"status": "healthy" if code == HEALTHY else "degraded",
                     "problems": problems}
    return out


def _input(each: Any) -> dict[str, Any]:
    """One input: its name, what it listens on, what it took in; and ``details``, from
    an input that has a ``details()`` (plain JSON: the jetstream input's consumer)."""
    out: dict[str, Any] = {"name": each.name, "description": each.describe(),
                           "received": each.received}
    details = getattr(each, "details", None)
    if callable(details):
        try:
            out["details"] = details()
        except Exception as err:  # one input's trouble never costs the whole status
            out["details"] = {"error": f"{type(err).__name__}: {err}"[:200]}
    return out


def _endpoint(registry: stats.Stats, activity: Activity, name: str, rate: float
              ) -> dict[str, Any]:
    def read(series: str, **match: object) -> float:
        return registry.total(series, endpoint=name, **match)

    end = activity.endpoint(name)
    last_success = read(stats.LAST_SUCCESS)
    return {
        "connections_open": int(read(stats.POOL_OPEN)),
        "connections_idle": int(read(stats.POOL_IDLE)),
        "uploads_in_flight": int(read(stats.UPLOADS_IN_FLIGHT)),
        "parts_in_flight": int(read(stats.ACTIVE)),
        "uploads_completed": int(read(stats.UPLOADS, outcome="completed")),
        "uploads_failed": int(read(stats.UPLOADS, outcome="failed")),
        "bytes": int(read(stats.BYTES)),
        "rate_bytes_per_second": round(rate, 1),
        "last_success": last_success or None,
        "last_error": None if end.last_error is None else {
            "time": round(end.last_error[0], 3), "reason": end.last_error[1]},
        "failing_since": end.failing_since,
    }


# --- health -------------------------------------------------------------------------------


def health(snap: Mapping[str, Any], *, failing_for: float = FAILING_FOR
           ) -> tuple[int, list[str]]:
    """(HEALTHY or DEGRADED, what is wrong): degraded when the journal's backlog holds a
    request older than half of ``daemon.max_age`` (it may not land in time), or when
    every upload to an endpoint has failed for ``failing_for`` seconds (none landed
    since its first failure)."""
    now = float(snap["time"])
    problems = []
    journal = snap.get("journal", {})
    oldest, max_age = journal.get("oldest_accepted"), journal.get("max_age")
    if journal.get("backlog") and oldest is not None and max_age is not None:
        age = now - float(oldest)
        if age > float(max_age) / 2:
            problems.append(f"journal backlog: {journal['backlog']} request(s), the oldest "
                            f"accepted {_ago(age)} ago (more than daemon.max_age/2 = "
                            f"{float(max_age) / 2:g} s)")
    for name, end in sorted(snap.get("endpoints", {}).items()):
        since = end.get("failing_since")
        if since is not None and now - float(since) >= failing_for:
            error = end.get("last_error") or {}
            problems.append(f"endpoint {name}: every upload failed for {_ago(now - since)} "
                            f"(last: {error.get('reason', '?')})")
    return (DEGRADED if problems else HEALTHY), problems


# --- reading it -------------------------------------------------------------------------


class StatusUnavailable(TrollpushError):
    """The daemon did not answer with its status (unreachable, refused, or not one)."""


def fetch_http(url: str, *, timeout: float, token: str | None = None) -> dict[str, Any]:
    """``GET /status`` (``url``: the HTTP input's base URL, or the full one)."""
    if not url.startswith(("http://", "https://")):
        url = f"http://{url}"
    if url.rstrip("/").count("/") <= 2:  # no path: the route
        url = url.rstrip("/") + "/status"
    import urllib.error  # here: `trollpush send` imports this module for two names
    import urllib.request

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(16 << 20)
    except urllib.error.HTTPError as err:
        with err:
            raise StatusUnavailable(f"{url}: {err.code} {err.reason}") from err
    except (OSError, ValueError) as err:  # refused, timed out, a bad URL
        raise StatusUnavailable(f"{url}: {getattr(err, 'reason', err)}") from err
    try:
        out = json.loads(body)
    except ValueError as err:
        raise StatusUnavailable(f"{url}: the answer is not JSON") from err
    if not isinstance(out, dict) or "time" not in out:
        raise StatusUnavailable(f"{url}: the answer is not a trollpush status")
    return out


# --- the command --------------------------------------------------------------------------


def command(args: Any) -> int:
    """``trollpush status``: print the status; with ``--check``, its health as the exit
    code (2: no status to judge)."""
    from . import logsafe

    try:
        snap = _fetch(args)
    except TrollpushError as err:
        print(f"trollpush status: {logsafe.escape(str(err))}", file=sys.stderr)
        return UNREACHABLE
    if args.json:
        print(json.dumps(snap, indent=2, default=str))
    else:
        for line in render(snap, failing_for=args.failing_for).splitlines():
            print(logsafe.escape(line))  # (names and addresses come from the daemon)
    if not args.check:
        return HEALTHY
    code, problems = health(snap, failing_for=args.failing_for)
    for problem in problems:
        print(f"trollpush status: degraded: {logsafe.escape(problem)}", file=sys.stderr)
    return code


def _fetch(args: Any) -> dict[str, Any]:
    if args.http is None:
        from .client import status

        return status(args.server, timeout=args.timeout)
    token = None
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as fh:
                token = fh.readline(4096).strip()
        except OSError as err:
            raise StatusUnavailable(f"--token-file: {err.strerror}") from err
    return fetch_http(args.http, timeout=args.timeout, token=token)


# --- showing it ---------------------------------------------------------------------------


def _ago(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def _details(details: Mapping[str, Any]) -> list[str]:
    """An input's details, whatever they are: ``ack pending 3``, a dict as ``sent ack=2
    nak=1``, ``age 4 s`` for seconds, a true flag by its name; nothing for null."""
    out = []
    for key, value in details.items():
        name = key.replace("_", " ")
        if value is None or value is False:
            continue
        if value is True:
            out.append(name)
        elif isinstance(value, Mapping):
            out.append(f"{name} " + " ".join(f"{k}={v}" for k, v in value.items()))
        elif key.endswith("_seconds") and isinstance(value, int | float):
            out.append(f"{name.removesuffix(' seconds')} {_ago(value)}")
        else:
            out.append(f"{name} {value}")
    return out


def _wrapped(items: list[str], *, indent: int, width: int = 100) -> list[str]:
    """Items joined by commas into lines of at most ``width`` (an item is never cut)."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + 2 + len(item) <= width:
            lines[-1] += f", {item}"
        else:
            if lines:
                lines[-1] += ","
            lines.append(" " * indent + item)
    return lines


def render(snap: Mapping[str, Any], *, failing_for: float = FAILING_FOR) -> str:
    """The snapshot as a compact table, for a terminal."""
    now = float(snap["time"])
    code, problems = health(snap, failing_for=failing_for)
    req, journal = snap["requests"], snap["journal"]
    rates = req.get("rates", {})
    lines = [f"trollpush {snap['version']} (pid {snap.get('pid', '?')}), up "
             f"{_ago(float(snap['uptime_seconds']))}, "
             f"{'healthy' if code == HEALTHY else 'DEGRADED'}"]
    for i, each in enumerate(snap.get("inputs", [])):
        lines.append(f"{'inputs' if i == 0 else '':<10} {each['description']} "
                     f"({each['received']} received)")
        lines.extend(_wrapped(_details(each.get("details") or {}), indent=13))
    lines.append(f"{'requests':<10} {req['accepted']} accepted, {req['completed']} "
                 f"completed, {req['failed']} failed, {req['rejected']} rejected; "
                 f"{req['queued']} queued, {req['in_flight']} in flight")
    lines.append(f"{'last ' + format(rates.get('window_seconds', 0), '.0f') + ' s':<10} "
                 + ", ".join(f"{rates.get(k, 0):.2f}/s {k}" for k in RATED))
    oldest = journal.get("oldest_accepted")
    lines.append(f"{'journal':<10} backlog {journal['backlog']}"
                 + (f" (oldest {_ago(now - oldest)} ago)" if oldest is not None else "")
                 + (f", {_bytes(journal['size_bytes'])}" if journal.get("size_bytes")
                    else ""))
    head = ("endpoint", "open", "idle", "uploading", "landed", "failed", "bytes", "rate",
            "last success", "last error")
    rows = [head]
    for name, end in sorted(snap.get("endpoints", {}).items()):
        error = end.get("last_error")
        rows.append((name, str(end["connections_open"]), str(end["connections_idle"]),
                     str(end["uploads_in_flight"]), str(end["uploads_completed"]),
                     str(end["uploads_failed"]), _bytes(end["bytes"]),
                     _bytes(end["rate_bytes_per_second"]) + "/s",
                     f"{_ago(now - end['last_success'])} ago" if end.get("last_success")
                     else "-",
                     f"{_ago(now - error['time'])} ago {error['reason']}" if error else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines.append("")
    for row in rows:
        cells = [c.ljust(w) if i in (0, 8, 9) else c.rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    lines.extend(f"problem: {p}" for p in problems)
    return "\n".join(lines)


__all__ = ["DEGRADED", "HEALTHY", "STATUS_SUBJECT", "STATUS_TYPE", "UNREACHABLE", "Activity",
           "StatusUnavailable", "command", "fetch_http", "health", "is_status", "render",
           "snapshot", "status_reply", "versions"]
