"""The journal kept in memory: the contract without durability (lost on a crash).

For tests, and for ``journal.path: memory``; the reference for what every journal
answers (:mod:`trollpush.journal.protocol`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..models import Job, MultipartState, Request, Stat, Upload, UploadResult
from .protocol import PRUNE_EVERY, JobRecord, State, _answer, _found, _objects, advance


@dataclass
class _JobEntry:
    job: Job
    state: State
    reason: str | None = None
    results: tuple[UploadResult, ...] = ()


@dataclass
class _Multipart:
    endpoint: str
    upload_id: str
    part_size: int | None
    source_stat: Stat | None
    parts: dict[int, tuple[str, str | None]] = field(default_factory=dict)


@dataclass
class _Entry:
    request: Request
    seq: int
    jobs: dict[str | None, _JobEntry] = field(default_factory=dict)
    failure: str | None = None
    multipart: dict[tuple[str | None, str, str], _Multipart] = field(default_factory=dict)


@dataclass
class _Landed:
    stat: Stat
    result: UploadResult
    at: float


class MemoryJournal:
    """Journal kept in memory: the contract without durability (lost on a crash)."""

    def __init__(self, *, keep_landed_seconds: float = 7 * 86400,
                 keep_landed_max: int = 100_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.keep_landed_seconds = keep_landed_seconds
        self.keep_landed_max = keep_landed_max
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._landed: dict[tuple[str, str, str], _Landed] = {}
        self._seq = 0
        self._since_prune = 0
        self.counts: Counter[str] = Counter()

    def __repr__(self) -> str:
        return (f"<MemoryJournal open={len(self._entries)} landed={len(self._landed)} "
                f"{ {str(k): v for k, v in self.counts.items()} }>")

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def accepted(self, request: Request) -> None:
        self.counts[State.ACCEPTED] += 1
        if request.id not in self._entries:
            self._seq += 1
            self._entries[request.id] = _Entry(request, self._seq)

    async def transferring(self, job: Job) -> None:
        if self._set(job.request, job, State.TRANSFERRING) is State.TRANSFERRING:
            for obj in _objects(job):
                self._landed.pop(obj, None)

    async def begin(self, job: Job, lookup: bool) -> dict[int, UploadResult]:
        found = _found(self.landed, job, lookup)
        if len(found) < len(job.uploads):
            await self.transferring(job)
        return found

    async def multipart_started(self, job: Job, upload: Upload, upload_id: str, *,
                                part_size: int | None = None,
                                source_stat: Stat | None = None) -> None:
        entry = self._entries.get(job.request.id)
        if entry is None:
            return
        if job.target not in entry.jobs:
            self._set(job.request, job, State.TRANSFERRING)
        self._landed.pop((job.endpoint, upload.bucket, upload.key), None)
        key = (job.target, upload.bucket, upload.key)
        old = entry.multipart.get(key)
        if old is not None and old.upload_id == upload_id and old.endpoint == job.endpoint:
            old.part_size = part_size if part_size is not None else old.part_size
            old.source_stat = source_stat if source_stat is not None else old.source_stat
        else:
            entry.multipart[key] = _Multipart(job.endpoint, upload_id, part_size, source_stat)

    async def part_done(self, job: Job, upload: Upload, number: int, etag: str,
                        checksum: str | None) -> None:
        entry = self._entries.get(job.request.id)
        mp = entry.multipart.get((job.target, upload.bucket, upload.key)) if entry else None
        if mp is not None:
            mp.parts[number] = (etag, checksum)

    async def uploaded(self, job: Job, results: tuple[UploadResult, ...]) -> None:
        self._set(job.request, job, State.UPLOADED, results=tuple(results))
        entry = self._entries.get(job.request.id)
        if entry is not None:
            for key in [k for k in entry.multipart if k[0] == job.target]:
                del entry.multipart[key]
        now = self._clock()
        for r in results:
            obj = (job.endpoint, r.upload.bucket, r.upload.key)
            if r.ok and r.source_stat is not None:
                self._landed.pop(obj, None)  # re-inserted: the newest is last
                self._landed[obj] = _Landed(r.source_stat, _answer(
                    r.upload, r.size, r.etag, r.checksum, r.checksum_algorithm, r.parts,
                    r.source_stat, r.part_size, version_id=r.version_id,
                    storage_class=r.storage_class, encryption=r.encryption,
                    written_with=r.written_with), now)
            else:
                self._landed.pop(obj, None)

    async def announced(self, job: Job) -> None:
        self._set(job.request, job, State.ANNOUNCED)

    async def concluded(self, job: Job, results: tuple[UploadResult, ...], *,
                        finish: bool = False) -> None:
        await self.uploaded(job, results)
        await self.announced(job)
        if finish:
            await self.finished(job.request)

    async def failed(self, request: Request, job: Job | None, reason: str) -> None:
        self._set(request, job, State.FAILED, reason=reason)

    async def finished(self, request: Request) -> None:
        self.counts["finished"] += 1
        if self._entries.pop(request.id, None) is not None:
            self._since_prune += 1
            if self._since_prune >= PRUNE_EVERY:
                await self.prune()

    async def prune(self) -> int:
        """Forget landed objects beyond the retention window or the count; how many."""
        self._since_prune = 0
        horizon = self._clock() - self.keep_landed_seconds
        drop = [k for k, v in self._landed.items() if v.at < horizon]
        newest = sorted(self._landed.items(), key=lambda kv: kv[1].at, reverse=True)
        drop += [k for k, _ in newest[self.keep_landed_max:]]
        for k in drop:
            self._landed.pop(k, None)
        return len(set(drop))

    @property
    def backlog(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int | None:
        return None

    def oldest_accepted(self) -> float | None:
        return min((e.request.accepted_at for e in self._entries.values()), default=None)

    def unfinished(self) -> list[Request]:
        entries = sorted(self._entries.values(), key=lambda e: (e.request.accepted_at, e.seq))
        return [replace(e.request, reply=None) for e in entries]

    def jobs(self, request: Request) -> list[JobRecord]:
        entry = self._entries.get(request.id)
        if entry is None:
            return []
        return [JobRecord(replace(je.job, request=request), je.state, je.results, je.reason)
                for je in entry.jobs.values()]

    def multipart(self, job: Job, upload: Upload) -> MultipartState | None:
        entry = self._entries.get(job.request.id)
        mp = entry.multipart.get((job.target, upload.bucket, upload.key)) if entry else None
        if mp is None or mp.endpoint != job.endpoint:
            return None
        return MultipartState(mp.upload_id, dict(sorted(mp.parts.items())), mp.part_size,
                              mp.source_stat)

    def landed(self, endpoint: str, bucket: str, key: str, stat: Stat | None = None
               ) -> UploadResult | None:
        hit = self._landed.get((endpoint, bucket, key))
        if (hit is None or (stat is not None and hit.stat != tuple(stat))
                or hit.at < self._clock() - self.keep_landed_seconds):
            return None
        return hit.result

    def state(self, request_id: str) -> dict[str | None, State]:
        """Per-job states of an open request (empty once finished); None: the request."""
        entry = self._entries.get(request_id)
        if entry is None:
            return {}
        out: dict[str | None, State] = {t: je.state for t, je in entry.jobs.items()}
        if entry.failure is not None and None not in out:
            out[None] = State.FAILED
        return out

    def _set(self, request: Request, job: Job | None, state: State, *,
             reason: str | None = None,
             results: tuple[UploadResult, ...] | None = None) -> State | None:
        self.counts[state] += 1
        entry = self._entries.get(request.id)
        if entry is None:
            return None
        if job is None:
            entry.failure = reason
            return state
        je = entry.jobs.get(job.target)
        if je is None:
            je = entry.jobs[job.target] = _JobEntry(job, state)
        new = advance(je.state, state)
        if new is state:
            je.job, je.state, je.reason = job, new, reason
            if results is not None:
                je.results = results
        return new
