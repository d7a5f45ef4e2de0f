"""Journal: the seam between "accepted" and "transferred".

Every request is recorded before it is acknowledged and moves through
accepted -> transferring -> uploaded -> announced (or failed).  This module defines
that contract and an in-memory implementation; a durable SQLite journal that survives
crashes and restarts plugs in behind the same interface.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from .models import Job, Request, UploadResult


class State(enum.StrEnum):
    ACCEPTED = "accepted"
    TRANSFERRING = "transferring"
    UPLOADED = "uploaded"
    ANNOUNCED = "announced"
    FAILED = "failed"


class Journal(Protocol):
    """What the daemon records, in order, for each request and each of its jobs."""

    async def accepted(self, request: Request) -> None:
        """The request is ours now: called before any acknowledgement."""

    async def transferring(self, job: Job) -> None:
        """The job's uploads are starting."""

    async def uploaded(self, job: Job, results: tuple[UploadResult, ...]) -> None:
        """Every upload of the job has landed."""

    async def announced(self, job: Job) -> None:
        """The job's completion has been published (or there was nothing to publish)."""

    async def failed(self, request: Request, job: Job | None, reason: str) -> None:
        """The job (or the whole request when job is None) ended in failure."""

    async def finished(self, request: Request) -> None:
        """Nothing more will happen to the request: its record may be compacted."""

    def unfinished(self) -> list[Request]:
        """Requests accepted but not finished, for recovery."""


@dataclass
class _Entry:
    request: Request
    jobs: dict[str | None, State] = field(default_factory=dict)
    state: State = State.ACCEPTED


class MemoryJournal:
    """Journal kept in memory: the contract without durability (lost on a crash)."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self.counts: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"<MemoryJournal open={len(self._entries)} {dict(self.counts)}>"

    async def accepted(self, request: Request) -> None:
        self._entries[request.id] = _Entry(request)
        self.counts[State.ACCEPTED] += 1

    async def transferring(self, job: Job) -> None:
        self._set(job.request, job, State.TRANSFERRING)

    async def uploaded(self, job: Job, results: tuple[UploadResult, ...]) -> None:
        self._set(job.request, job, State.UPLOADED)

    async def announced(self, job: Job) -> None:
        self._set(job.request, job, State.ANNOUNCED)

    async def failed(self, request: Request, job: Job | None, reason: str) -> None:
        self._set(request, job, State.FAILED)

    async def finished(self, request: Request) -> None:
        self._entries.pop(request.id, None)

    def unfinished(self) -> list[Request]:
        return [e.request for e in self._entries.values()]

    def state(self, request_id: str) -> dict[str | None, State]:
        """Per-job states of an open request (empty once finished)."""
        entry = self._entries.get(request_id)
        return dict(entry.jobs) if entry else {}

    def _set(self, request: Request, job: Job | None, state: State) -> None:
        self.counts[state] += 1
        entry = self._entries.get(request.id)
        if entry is not None:
            entry.jobs[job.target if job else None] = state
