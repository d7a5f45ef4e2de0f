"""What the bridge and the jetstream input say to each other through NATS: the headers of
a bridged request, its de-duplication identity, its payload, and the per-upload results
that travel back with its outcome (the HTTP input's s3nd-style answer reports them).

No connection here, and nothing that imports nats-py: both sides use these pure helpers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

from ..messages import DIRECT_ORIGINS, new_message
from ..models import Job, Request, Upload, UploadResult

logger = logging.getLogger("trollpush.receive")  # the name users' log configs know

#: JetStream drops a message whose id it saw within the stream's duplicate window
MSG_ID = "Nats-Msg-Id"
#: the input a bridged request came from (its rights: see BRIDGED_DIRECT)
ORIGIN_HEADER = "Trollpush-Origin"
#: where the caller of a bridged request waits for its outcome (a core NATS subject)
REPLY_HEADER = "Trollpush-Reply"
#: what each upload of a bridged request did, sent back with its outcome
RESULTS_HEADER = "Trollpush-Results"
#: origins whose requests name their destination: the requester's own ``destination``,
#: ``endpoint`` and ``overwrite`` (REQ/REP, s3daemon; HTTP through its ``uri`` field)
BRIDGED_DIRECT = DIRECT_ORIGINS | {"http"}
#: results beyond this many characters are not sent back (the answer then has the
#: outcome without timings; a NATS message holds 1 MiB by default)
MAX_RESULTS = 256 * 1024


def identity(request: Request, instance: str) -> str:
    """The ``Nats-Msg-Id`` of a request.  One that somebody waits for (REQ/REP, HTTP,
    s3daemon) is one call to this instance: unique.  One nobody waits for (``subscribe``,
    ``watch``) is an event that every instance may hear: its subject, type and data (and,
    for a watched file, its size and mtime), hashed, so that it enters the stream once."""
    if request.reply is not None:
        return f"{instance}-{request.id}"
    shape: list[Any] = [request.subject, request.type, request.data]
    if request.origin == "watch":  # a file written again under the same name is new
        shape.append([list(f.stat[:2]) if f.stat else None for f in request.files])
    text = json.dumps(shape, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def payload(request: Request) -> bytes:
    """The posttroll message that stands for ``request`` in the stream.  A request from
    a direct origin carries what it asked for (``destination``, ``endpoint``,
    ``overwrite``) as the requester gave it; another one carries its data unchanged (a
    ``destination`` key there gets no rights on the other side)."""
    data = dict(request.data)
    if request.origin in BRIDGED_DIRECT:
        asked = {"destination": request.destination, "endpoint": request.endpoint,
                 "overwrite": request.overwrite or None}
        for key, value in asked.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
    return str(new_message(request.subject, request.type, data).encode()).encode()


def results_header(collected: Sequence[tuple[Job, Sequence[UploadResult]]]
                   ) -> dict[str, str]:
    """What each upload did, as a header for the outcome (none when too large)."""
    jobs = [{"target": job.target, "endpoint": job.endpoint,
             "results": [[r.upload.url, r.size, r.attempts, round(r.seconds, 6), r.parts,
                          r.error, r.reason] for r in results]}
            for job, results in collected]
    text = json.dumps(jobs, separators=(",", ":"))
    return {RESULTS_HEADER: text} if len(text) <= MAX_RESULTS else {}


def read_results(text: str, request: Request
                 ) -> list[tuple[Job, tuple[UploadResult, ...]]]:
    """The results of ``results_header`` again, for ``request`` (its caller's
    ResultReader); an unreadable header gives none."""
    out: list[tuple[Job, tuple[UploadResult, ...]]] = []
    try:
        for job in json.loads(text):
            results = []
            for i, (url, size, attempts, seconds, parts, error, reason) in enumerate(
                    job["results"]):
                bucket, _, key = str(url).removeprefix("s3://").partition("/")
                source = request.files[min(i, len(request.files) - 1)]
                results.append(UploadResult(Upload(source, bucket, key), int(size),
                                            int(attempts), float(seconds), error=error,
                                            reason=reason, parts=int(parts)))
            out.append((Job(request, job["target"], str(job["endpoint"]),
                            tuple(r.upload for r in results), {}, ""), tuple(results)))
    except (ValueError, TypeError, KeyError, IndexError) as err:
        logger.warning("bridge: the results sent with an outcome are unreadable (%s)", err)
        return []
    return out
