"""Client side of the REQ/REP input: what ``trollpush send`` does.

It talks to the daemon's ROUTER socket through a DEALER socket using the REQ envelope,
asking for two replies (``reply: both``): the acknowledgement tells that the daemon is
reachable and has accepted the request, the second one is the result.  A DEALER may take
more frames than one per request, so a caller that watches the upload asks for progress
frames too (``progress: true``), which come between the two.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml
import zmq
from posttroll.message import Message
from zmq.utils.monitor import recv_monitor_message

from .config.defaults import REQUEST_ADDRESS
from .errors import Reason, TrollpushError, UsageError
from .messages import (
    ACK_TYPE,
    FAILURE_TYPE,
    PROGRESS_TYPE,
    decode_message,
    failures_of,
    parse_destination,
)
from .status import STATUS_SUBJECT, STATUS_TYPE

DEFAULT_SERVER = REQUEST_ADDRESS
SEND_SUBJECT = "/trollpush/send/"


class Unreachable(TrollpushError):
    """The daemon did not answer in time."""


@dataclass(frozen=True)
class SendResult:
    """The daemon's answer to one ``send``."""

    ok: bool
    message: Message  # the ack (no-wait), the completion, or the failure
    seconds: float = 0.0  # from sending the request to this answer

    @property
    def error(self) -> str | None:
        if self.ok:
            return None
        failures = failures_of(self.message)
        if not failures:
            return "no result"
        return "; ".join(f"{f.get('error')} ({f.get('reason')})" for f in failures)


def parse_meta(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs into metadata; values are read as YAML scalars (12 -> int)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--meta {pair!r}: expected KEY=VALUE")
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            parsed = value
        out[key.strip()] = parsed if isinstance(parsed, (str, int, float, bool)) else value
    return out


def request_message(path: str, destination: str, *, meta: Mapping[str, Any] | None = None,
                    endpoint: str | None = None, wait: bool = True, overwrite: bool = False,
                    subject: str = SEND_SUBJECT, progress: bool = False) -> Message:
    """The request for one file; raises RouteError for a bad destination.  ``progress``:
    ask for progress frames (for a DEALER peer: a REQ socket takes one reply)."""
    abspath = os.path.abspath(path)
    name = os.path.basename(abspath)
    bucket, key = parse_destination(destination, name)
    data = dict(meta or {})
    data.update({"uri": abspath, "uid": name, "destination": f"s3://{bucket}/{key}",
                 "reply": "both" if wait else "accepted"})
    if endpoint is not None:
        data["endpoint"] = endpoint
    if overwrite:
        data["overwrite"] = True
    if progress:
        data["progress"] = True
    return Message(subject, "file", data)


def send(path: str, destination: str, *, meta: Mapping[str, Any] | None = None,
         endpoint: str | None = None, server: str = DEFAULT_SERVER, timeout: float = 10.0,
         result_timeout: float | None = None, wait: bool = True,
         overwrite: bool = False,
         progress: Callable[[int, int], None] | None = None) -> SendResult:
    """Submit one file and return the daemon's answer.

    ``timeout`` bounds the wait for the daemon to accept (else Unreachable);
    ``result_timeout`` bounds the wait for the result after that (None: as long as the
    daemon works on it; a daemon that goes away ends the wait with ``daemon_gone``).
    A bad destination raises RouteError (reason ``bad_destination``) before anything is sent.
    ``overwrite`` uploads the file even if it already landed at its object.
    ``progress``: called with (bytes sent, size) from the daemon's progress frames while
    it uploads (a few a second; a daemon older than these frames sends none).
    """
    message = request_message(path, destination, meta=meta, endpoint=endpoint, wait=wait,
                              overwrite=overwrite, progress=progress is not None and wait)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    # ZMTP heartbeats notice a daemon host that vanished without closing the connection
    sock.setsockopt(zmq.HEARTBEAT_IVL, 5000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 30000)
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        start = time.monotonic()
        first = _first(sock, server, message, timeout)
        if first.type != ACK_TYPE or not wait:
            return SendResult(not failures_of(first), first, time.monotonic() - start)
        deadline = None if result_timeout is None else time.monotonic() + result_timeout
        final = _receive(sock, monitor, deadline)
        while isinstance(final, Message) and final.type == PROGRESS_TYPE:
            if progress is not None:
                progress(int(final.data.get("bytes", 0)), int(final.data.get("size", 0)))
            final = _receive(sock, monitor, deadline)
        if isinstance(final, Message):
            return SendResult(not failures_of(final), final, time.monotonic() - start)
        if final is None:
            reason, error = Reason.TIMEOUT, (f"accepted, but no result within "
                                             f"{result_timeout:g} s (the daemon carries on)")
        else:
            reason, error = Reason.DAEMON_GONE, ("the daemon accepted the request, then its "
                                                 "connection closed before the result")
        return SendResult(False, Message(first.subject, FAILURE_TYPE, {
            "uri": message.data["uri"], "destination": message.data["destination"],
            "reason": reason, "error": error, "attempts": 0}))
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
        ctx.term()


def status(server: str = DEFAULT_SERVER, *, timeout: float = 5.0) -> dict[str, Any]:
    """The daemon's status (``trollpush status``): one ``status`` message on its
    REQ/REP socket, answered at once; Unreachable when no answer comes within
    ``timeout`` (the socket lingers on nothing: a dead address never hangs)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        reply = _first(sock, server, Message(STATUS_SUBJECT, STATUS_TYPE, {}), timeout)
        if reply.type != STATUS_TYPE or not isinstance(reply.data, dict):
            raise Unreachable(f"the daemon at {server} answered a {reply.type!r} message, "
                              "not its status (a daemon without `trollpush status`?)")
        return reply.data
    finally:
        sock.close(linger=0)
        ctx.term()


def _first(sock: zmq.Socket[bytes], server: str, message: Message, timeout: float
           ) -> Message:
    """Connect, send ``message``, and return the daemon's first answer within
    ``timeout`` (else Unreachable)."""
    try:
        sock.connect(server)
    except zmq.ZMQError as err:
        raise UsageError(f"--server {server!r}: {err}") from err
    sock.send_multipart([b"", message.encode().encode()])
    first = _receive(sock, None, time.monotonic() + timeout)
    if not isinstance(first, Message):
        raise Unreachable(f"no answer from the daemon at {server} within {timeout:g} s")
    return first


_GONE = object()


def _receive(sock: zmq.Socket[bytes], monitor: zmq.Socket[bytes] | None,
             deadline: float | None) -> Message | object | None:
    """The next reply; None at the deadline; _GONE if the connection to the daemon closed."""
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    if monitor is not None:
        poller.register(monitor, zmq.POLLIN)
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return None
        ready = dict(poller.poll(None if left is None else int(left * 1000) + 1))
        if ready.get(sock):
            frames = sock.recv_multipart()
            if frames and frames[-1]:
                try:
                    return decode_message(frames[-1].decode())
                except Exception as err:
                    raise TrollpushError(f"the daemon's reply is not a posttroll message "
                                         f"({type(err).__name__}: {err})") from err
        elif monitor is not None and ready.get(monitor):
            event = recv_monitor_message(monitor)
            if event["event"] == zmq.EVENT_DISCONNECTED:
                return _GONE
