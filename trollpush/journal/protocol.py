"""The journal's contract: the seam between "accepted" and "transferred".

Every request is recorded before it is acknowledged and moves through
accepted -> transferring -> uploaded -> announced (or failed).  This module defines that
contract (:class:`Journal`) and what every implementation shares; the implementations are
:class:`~trollpush.journal.MemoryJournal` (no durability) and
:class:`~trollpush.journal.SQLiteJournal` (survives crashes, restarts and power loss).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..models import Job, MultipartState, Request, Stat, Upload, UploadResult

#: the landed index is pruned after this many finished requests (and on open)
PRUNE_EVERY = 1000


class State(enum.StrEnum):
    ACCEPTED = "accepted"
    TRANSFERRING = "transferring"
    UPLOADED = "uploaded"
    ANNOUNCED = "announced"
    FAILED = "failed"



_RANK = {State.ACCEPTED: 0, State.TRANSFERRING: 1, State.UPLOADED: 2, State.ANNOUNCED: 3}


def advance(old: State | None, new: State) -> State:
    """The state a job is in after ``new`` is recorded over ``old``.

    Forward only (a late ``transferring`` does not undo ``uploaded``); ``failed`` is
    taken from any state but ``announced`` (the completion is out: that is final); a
    failed job may start again (a retry, or a resume after a restart).
    """
    if old is None or old is State.FAILED:
        return new
    if new is State.FAILED:
        return old if old is State.ANNOUNCED else new
    return new if _RANK[new] >= _RANK[old] else old


@dataclass(frozen=True)
class JobRecord:
    """One job of a request as the journal has it."""

    job: Job
    state: State
    results: tuple[UploadResult, ...] = ()  # in upload order, once uploaded
    reason: str | None = None  # why it failed, when it did


class Journal(Protocol):
    """What the daemon records, in order, for each request and each of its jobs.

    A job is known by its request and its target (``None``: an explicit destination); an
    upload by its job, bucket and key.  Recording something for a request that is not
    (or no longer) accepted is ignored.
    """

    async def open(self) -> None:
        """Get ready (create, lock, recover the file); before any other call."""

    async def close(self) -> None:
        """Commit what is queued and release everything; safe to call twice."""

    async def accepted(self, request: Request) -> None:
        """The request is ours now: called before any acknowledgement.

        Accepting a request id that is already open keeps its recorded progress.
        """

    async def transferring(self, job: Job) -> None:
        """The job's uploads are starting.

        Its objects lose their ``landed`` entries until ``uploaded`` records them again:
        consult :meth:`landed` before this call, not after.
        """

    async def begin(self, job: Job, lookup: bool) -> dict[int, UploadResult]:
        """:meth:`landed` for each upload (when ``lookup``), then :meth:`transferring`
        unless every upload was found: one step.

        Returns what landed at the job's objects earlier, by upload index: candidates
        only, since only the file's content and the store can tell whether the object
        still holds this file (the engine checks both).  This is what the daemon calls per
        job (one record instead of a read and a write).
        """

    async def multipart_started(self, job: Job, upload: Upload, upload_id: str, *,
                                part_size: int | None = None,
                                source_stat: Stat | None = None) -> None:
        """A multipart upload was created for ``upload``.

        A new upload id replaces the one recorded (and forgets its parts); the same id
        again keeps them.
        """

    async def part_done(self, job: Job, upload: Upload, number: int, etag: str,
                        checksum: str | None) -> None:
        """Part ``number`` of the upload's recorded multipart upload has landed."""

    async def uploaded(self, job: Job, results: tuple[UploadResult, ...]) -> None:
        """Every upload of the job has landed.

        Results with a ``source_stat`` become (or replace) their object's ``landed``
        entry; the job's multipart records are dropped.
        """

    async def announced(self, job: Job) -> None:
        """The job's completion has been published (or there was nothing to publish)."""

    async def concluded(self, job: Job, results: tuple[UploadResult, ...], *,
                        finish: bool = False) -> None:
        """:meth:`uploaded` and :meth:`announced` in one step, and :meth:`finished` of
        the job's request too when ``finish`` (its only job).

        For a completion already published: a crash before this is recorded costs an
        upload and a completion again, never a lost one (at least once).
        """

    async def failed(self, request: Request, job: Job | None, reason: str) -> None:
        """The job (or the whole request when job is None) ended in failure."""

    async def finished(self, request: Request) -> None:
        """Nothing more will happen to the request: its record may be compacted."""

    def unfinished(self) -> list[Request]:
        """Requests accepted but not finished, oldest first, for recovery (reply=None)."""

    @property
    def backlog(self) -> int:
        """How many requests are accepted and not finished now (cheap: a metric)."""

    @property
    def size_bytes(self) -> int | None:
        """Bytes the journal takes on disk now (None: it keeps nothing on disk)."""

    def oldest_accepted(self) -> float | None:
        """When the oldest request accepted and not finished was accepted (Unix time;
        None: the backlog is empty).  For ``trollpush status`` (on demand, not a metric)."""

    def jobs(self, request: Request) -> list[JobRecord]:
        """The jobs recorded for the request, rebuilt with it, in the order first seen."""

    def multipart(self, job: Job, upload: Upload) -> MultipartState | None:
        """The multipart upload recorded for this upload of this job (same endpoint)."""

    def landed(self, endpoint: str, bucket: str, key: str, stat: Stat | None = None
               ) -> UploadResult | None:
        """What landed last at this object (same endpoint, bucket and key), within the
        retention window; with ``stat``, only if the file was that (size, mtime_ns, inode).

        The result has ``attempts=0`` and ``seconds=0.0`` (nothing was sent) and the
        source, its stat, size and checksums as recorded then.
        """


def _answer(upload: Upload, size: int, etag: str | None, checksum: str | None,
            algorithm: str | None, parts: int, stat: Stat, part_size: int | None = None, *,
            version_id: str | None = None, storage_class: str | None = None,
            encryption: str | None = None, written_with: str | None = "") -> UploadResult:
    """What the landed index answers: what landed, and what its completion said."""
    return UploadResult(upload, size, 0, 0.0, etag=etag, checksum=checksum,
                        checksum_algorithm=algorithm, parts=parts, part_size=part_size,
                        source_stat=stat, version_id=version_id, storage_class=storage_class,
                        encryption=encryption, written_with=written_with)


def _found(landed: Callable[[str, str, str], UploadResult | None], job: Job,
           lookup: bool) -> dict[int, UploadResult]:
    """What landed at the job's objects, by upload index (``begin``'s look-up)."""
    if not lookup:
        return {}
    found = {}
    for i, u in enumerate(job.uploads):
        hit = landed(job.endpoint, u.bucket, u.key)
        if hit is not None:
            found[i] = hit
    return found


def _objects(job: Job) -> list[tuple[str, str, str]]:
    return [(job.endpoint, u.bucket, u.key) for u in job.uploads]

