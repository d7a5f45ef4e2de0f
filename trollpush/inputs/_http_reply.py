"""The HTTP input's answers: s3nd's status codes and reply JSON, built from what the
pipeline answers any requester (the final posttroll message) and what each job's uploads
did (timings, attempts, parts).

One table, :data:`STATUS`, maps trollpush's reason codes to HTTP status codes; the reply
carries the reason code too, and the failure announced on posttroll carries the same one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from posttroll.message import Message

from .. import __version__
from ..errors import Reason, _safe
from ..messages import FAILURE_TYPE, parts
from ..models import Job, UploadResult

#: the S3 error code that has a status of its own (in a permanent_error's detail)
NO_SUCH_BUCKET = "NoSuchBucket"
#: the HTTP status of each reason code: s3nd's codes where s3nd has the case
STATUS: Mapping[str, int] = {
    # the request itself is wrong (s3nd: 400)
    Reason.BAD_MESSAGE: 400, Reason.UNSUPPORTED_TYPE: 400, Reason.MISSING_URI: 400,
    Reason.REMOTE_FILE: 400, Reason.FILE_MISSING: 400, Reason.NOT_A_FILE: 400,
    Reason.NOT_ALLOWED: 400, Reason.FILE_UNREADABLE: 400, Reason.BAD_DESTINATION: 400,
    Reason.NO_ROUTE: 400, Reason.COMPOSE_ERROR: 400, Reason.BAD_OBJECT_OPTIONS: 400,
    Reason.TOO_LARGE: 413,
    # if_none_match: another object is at the key, and was kept
    Reason.EXISTS: 409,
    # the store (s3nd: 404 NoSuchBucket, 408 queue timeout, 502 other S3 errors, 504 the
    # last attempt timed out)
    NO_SUCH_BUCKET: 404,
    Reason.QUEUE_TIMEOUT: 408,
    Reason.PERMANENT: 502, Reason.UPLOAD_FAILED: 502,
    Reason.TIMEOUT: 504,
    # the daemon cannot take or finish it now: ask again later
    Reason.SHUTDOWN: 503, Reason.JOURNAL_UNAVAILABLE: 503,
    # never sent (nobody listens any more): s3nd's code for its logs
    Reason.CLIENT_GONE: 418,
    # anything else (s3nd: 500)
    Reason.FILE_CHANGED: 500, Reason.INTERNAL: 500,
}
#: a reason missing from STATUS
OTHER = 500
#: the longest X-Error header sent
MAX_HEADER = 1000


def status_of(reason: str, error: str = "") -> int:
    """The HTTP status of a failure with ``reason`` (and the store's ``error`` text)."""
    if reason == Reason.PERMANENT and NO_SUCH_BUCKET in error:
        return STATUS[NO_SUCH_BUCKET]
    return STATUS.get(reason, OTHER)


def header_text(text: str) -> str:
    """``text`` fit for an HTTP header: one line of printable ASCII, bounded."""
    flat = text.encode("ascii", "backslashreplace").decode("ascii")
    flat = "".join(c if c.isprintable() else " " for c in flat)
    return flat[:MAX_HEADER]


@dataclass
class Task:
    """One POST /upload, as its reply describes it."""

    id: str
    received: float = field(default_factory=time.monotonic)
    file: str | None = None
    uri: str | None = None  # as the client gave it: None routes the file
    slug: str | None = None
    wait: bool = True
    size: int = 0  # of the file, as checked on receipt

    def brief(self) -> dict[str, Any]:
        """What the reply says of any request: its id and what the client sent."""
        out: dict[str, Any] = {"id": self.id}
        for key in ("uri", "file", "slug"):
            if (value := getattr(self, key)) is not None:
                out[key] = value
        return out


class HttpReply:
    """The pipeline's answer to one HTTP request (a ``Replier`` and ``ResultReader``):
    the final message, and what each job's uploads did before it."""

    wants_ack = False

    def __init__(self, *, wait: bool) -> None:
        self.wants_final = wait
        self.final: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.collected: list[tuple[Job, tuple[UploadResult, ...]]] = []

    def __repr__(self) -> str:
        return f"<HttpReply wait={self.wants_final} answered={self.final.done()}>"

    async def send(self, message: Any) -> None:
        if not self.final.done():
            self.final.set_result(message)

    def results(self, job: Job, results: Sequence[UploadResult]) -> None:
        self.collected.append((job, tuple(results)))


def body(code: int, msg: str, task: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """s3nd's reply: version, code, msg, and the task when there is one."""
    out: dict[str, Any] = {"version": __version__, "code": code, "msg": msg}
    if task is not None:
        out["task"] = dict(task)
    return out


def accepted(task: Task) -> dict[str, Any]:
    """The reply to ``wait=false``: the request is in the journal."""
    return body(202, "accepted", task.brief())


def answer(task: Task, message: Message, reply: HttpReply) -> tuple[int, dict[str, Any]]:
    """The status and JSON body for the final message of a request."""
    uploads = _uploads(message, reply)
    failed = next((u for u in uploads if u["code"] != 200), None)
    code, msg = (failed["code"], failed["msg"]) if failed else (200, "upload succeeded")
    info = {**task.brief(), **_timings(task, reply)}
    urls = [u["uri"] for u in uploads if u.get("uri")]
    if task.uri is None:  # routed: every destination, with its own outcome
        info["uri"] = urls[0] if len(urls) == 1 else urls
        info["uploads"] = uploads
    elif urls:
        info["uri"] = urls[0]  # the key completed with the file name, if it ended in /
    checksum = next((u["checksum"] for u in uploads if u.get("checksum")), None)
    if checksum is not None:
        info["checksum"] = checksum
    if failed is not None:
        info["reason"] = failed["reason"]
    return code, body(code, msg, info)


def _uploads(message: Message, reply: HttpReply) -> list[dict[str, Any]]:
    """One entry per destination (or per failure that has none): its own outcome."""
    by_url = {r.upload.url: (job, r) for job, results in reply.collected for r in results}
    out: list[dict[str, Any]] = []
    for kind, data in parts(message):
        if kind == FAILURE_TYPE:
            reason, error = str(data.get("reason")), str(data.get("error"))
            entry: dict[str, Any] = {"uri": data.get("destination"),
                                     "code": status_of(reason, error), "msg": error,
                                     "reason": reason}
        else:
            entry = {"uri": data.get("uri"), "code": 200, "msg": "upload succeeded"}
            if data.get("checksum"):
                entry["checksum"] = data["checksum"]
        found = by_url.get(str(entry["uri"]))
        if found is not None:
            job, result = found
            entry.update(target=job.target, endpoint=job.endpoint, size=result.size,
                         attempts=result.attempts, seconds=round(result.seconds, 6),
                         parts=result.parts)
        elif data.get("endpoint") is not None:
            entry["endpoint"] = data["endpoint"]
        out.append(entry)
    return out


def _timings(task: Task, reply: HttpReply) -> dict[str, Any]:
    """s3nd's upload_* fields: the transfer is the longest upload (they run at once),
    the rest of the time since receipt was spent queued."""
    results = [r for _, rs in reply.collected for r in rs]
    total = time.monotonic() - task.received
    transfer = min(max((r.seconds for r in results), default=0.0), total)
    sent = [r for r in results if r.ok and r.attempts]
    size = max((r.size for r in results), default=task.size)
    rate = sum(r.size for r in sent) / transfer if sent and transfer > 0 else 0.0
    return {
        "upload_total": f"{total:.6f}s",
        "upload_total_seconds": round(total, 6),
        "upload_queued_seconds": round(total - transfer, 6),
        "upload_transfer_seconds": round(transfer, 6),
        "upload_attempts": sum(r.attempts for r in results),
        "upload_size_bytes": max(size, 0),
        "upload_rate": f"{rate * 8 / (1 << 20):.3f}Mbit/s",
        "upload_rate_bytes": round(rate, 3),
        "upload_parts": sum(max(r.parts, 1) for r in sent),
    }


def settings(value: Any, key: str = "") -> Any:
    """A config object as plain JSON, with secrets hidden (``GET /version``): values
    under keys that name a secret, and fields kept out of ``repr`` (credentials)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: "<hidden>" if not f.repr and getattr(value, f.name) is not None
                else settings(getattr(value, f.name), f.name)
                for f in dataclasses.fields(value)}
    safe = _safe(key, value)
    if safe is not value:
        return repr(safe)
    if isinstance(value, Mapping):
        return {str(k): settings(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [settings(v, key) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
