"""Client side of the REQ/REP input: what ``trollpush send`` does.

It talks to the daemon's ROUTER socket through a DEALER socket using the REQ envelope,
asking for two replies (``reply: both``): the acknowledgement tells that the daemon is
reachable and has accepted the request, the second one is the result.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
import zmq
from posttroll.message import Message

from .announce import ACK_TYPE, FAILURE_TYPE, MULTIPLE_TYPE
from .errors import Reason, TrollpushError, UsageError
from .receive import decode_message
from .route import parse_destination

DEFAULT_SERVER = "tcp://127.0.0.1:15556"
SEND_SUBJECT = "/trollpush/send/"


class Unreachable(TrollpushError):
    """The daemon did not answer in time."""


@dataclass(frozen=True)
class SendResult:
    """The daemon's answer to one ``send``."""

    ok: bool
    message: Message  # the ack (no-wait), the completion, or the failure

    @property
    def error(self) -> str | None:
        if self.ok:
            return None
        failures = _failures(self.message)
        if not failures:
            return "no result"
        return "; ".join(f"{f.get('error')} ({f.get('reason')})" for f in failures)


def _failures(message: Message) -> list[Mapping[str, Any]]:
    if message.type == FAILURE_TYPE:
        return [message.data]
    if message.type == MULTIPLE_TYPE:
        return [m["data"] for m in message.data["messages"] if m["type"] == FAILURE_TYPE]
    return []


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
                    endpoint: str | None = None, wait: bool = True,
                    subject: str = SEND_SUBJECT) -> Message:
    """The request for one file; raises RouteError for a bad destination."""
    abspath = os.path.abspath(path)
    name = os.path.basename(abspath)
    bucket, key = parse_destination(destination, name)
    data = dict(meta or {})
    data.update({"uri": abspath, "uid": name, "destination": f"s3://{bucket}/{key}",
                 "reply": "both" if wait else "accepted"})
    if endpoint is not None:
        data["endpoint"] = endpoint
    return Message(subject, "file", data)


def send(path: str, destination: str, *, meta: Mapping[str, Any] | None = None,
         endpoint: str | None = None, server: str = DEFAULT_SERVER, timeout: float = 30.0,
         wait: bool = True) -> SendResult:
    """Submit one file and return the daemon's answer; Unreachable if it does not answer.

    A bad destination raises RouteError (reason ``bad_destination``) before anything is sent.
    """
    message = request_message(path, destination, meta=meta, endpoint=endpoint, wait=wait)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    deadline = time.monotonic() + timeout
    try:
        sock.connect(server)
        sock.send_multipart([b"", message.encode().encode()])
        first = _receive(sock, deadline)
        if first is None:
            raise Unreachable(f"no answer from the daemon at {server} within {timeout:g} s")
        if first.type != ACK_TYPE or not wait:
            return SendResult(first.type not in (FAILURE_TYPE, MULTIPLE_TYPE)
                              or not _failures(first), first)
        final = _receive(sock, deadline)
        if final is None:
            timeout_msg = Message(first.subject, FAILURE_TYPE, {
                "uri": message.data["uri"], "destination": message.data["destination"],
                "reason": Reason.TIMEOUT, "attempts": 0,
                "error": f"accepted, but no result within {timeout:g} s "
                         "(the daemon carries on with the upload)"})
            return SendResult(False, timeout_msg)
        return SendResult(not _failures(final), final)
    finally:
        sock.close(linger=0)
        ctx.term()


def _receive(sock: zmq.Socket[bytes], deadline: float) -> Message | None:
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not sock.poll(int(left * 1000) + 1):
            return None
        frames = sock.recv_multipart()
        if frames and frames[-1]:
            return decode_message(frames[-1].decode())
