"""The journal: the contract on both implementations, durability on real SQLite files."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trollpush.config import default_journal_path
from trollpush.errors import JournalError
from trollpush.journal import (
    SCHEMA_VERSION,
    Journal,
    MemoryJournal,
    MultipartState,
    SQLiteJournal,
    State,
)
from trollpush.journal.codec import _dumps, _loads
from trollpush.models import Job, Request, SourceFile, Upload, UploadResult

ROOT = Path(__file__).resolve().parents[1]
AnyJournal = MemoryJournal | SQLiteJournal
CEST = dt.timezone(dt.timedelta(hours=2))
T0 = 1_800_000_000.0


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


#: every journal the contract tests run on, by kind: a new one plugs in here
JOURNALS: dict[str, Callable[..., AnyJournal]] = {
    "memory": lambda tmp_path, **kw: MemoryJournal(**kw),
    "sqlite": lambda tmp_path, **kw: SQLiteJournal(tmp_path / "state" / "journal.sqlite", **kw),
}


def new_journal(kind: str, tmp_path: Path, clock: Clock | None = None,
                **kw: Any) -> AnyJournal:
    if clock is not None:
        kw["clock"] = clock
    return JOURNALS[kind](tmp_path, **kw)


def make_request(n: int, *, files: int = 1, accepted_at: float | None = None,
                 blob: str = "") -> Request:
    """A request shaped as posttroll decodes one: datetimes naive and aware, nesting."""
    sources = tuple(SourceFile(uri=f"/data/in/g{n}_{i}.h5", path=Path(f"/data/in/g{n}_{i}.h5"),
                               uid=f"g{n}_{i}.h5",
                               meta={"band": f"M{i:02d}",
                                     "start_time": dt.datetime(2026, 11, 21, 10, 5, i)})
                    for i in range(files))
    metadata: dict[str, Any] = {
        "platform_name": "NOAA-20", "orbit_number": 12345 + n,
        "start_time": dt.datetime(2026, 11, 21, 10, 5, 0, 123456),
        "end_time": dt.datetime(2026, 11, 21, 10, 6, 30, tzinfo=dt.UTC),
        "processed": dt.datetime(2026, 11, 21, 12, 0, tzinfo=CEST),
        "sensor": ["viirs", "atms"], "area": {"extent": [-1.5, 2.0], "nested": [{"a": None}]},
        "flags": {"ok": True, "score": 0.25}, "$weird": "a key that looks like a tag",
    }
    if blob:
        metadata["blob"] = blob
    kind = "file" if files == 1 else "dataset"
    data: dict[str, Any] = dict(metadata)
    if files == 1:
        data.update(uri=sources[0].uri, uid=sources[0].uid)
    else:
        data["dataset"] = [{"uri": f.uri, "uid": f.uid, **f.meta} for f in sources]
    return Request(id=f"req{n:05d}", subject=f"/new/file/viirs/{n}", type=kind, data=data,
                   metadata=metadata, files=sources, origin="request",
                   accepted_at=accepted_at if accepted_at is not None else T0 + n)


def make_job(request: Request, target: str | None = "viirs", *, endpoint: str = "default",
             bucket: str = "bucket", prefix: str = "out") -> Job:
    uploads = tuple(Upload(f, bucket, f"{prefix}/{f.uid}") for f in request.files)
    return Job(request=request, target=target, endpoint=endpoint, uploads=uploads,
               metadata={**request.metadata, "parsed": dt.datetime(2026, 11, 21, 10, 5)},
               publish_topic=f"/uploaded/{target or 'direct'}/")


def make_result(upload: Upload, stat: tuple[int, int, int] | None = (70_000, 1_700, 42), *,
                ok: bool = True) -> UploadResult:
    if not ok:
        return UploadResult(upload, 70_000, 3, 1.5, error="boom", reason="retries_exhausted")
    return UploadResult(upload, 70_000, 1, 0.125, etag='"abc"', checksum="AAAAAA==",
                        checksum_algorithm="crc32c", parts=0, source_stat=stat)


def fields(r: Request) -> tuple[Any, ...]:
    return (r.id, r.subject, r.type, r.data, r.metadata, r.files, r.origin, r.destination,
            r.endpoint, r.accepted_at)


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (tz-awareness and offsets too)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or repr(a) == repr(b)
    if isinstance(a, dt.datetime | dt.time):
        if (a.tzinfo is None) != (b.tzinfo is None):
            return False
        return bool(a == b and a.utcoffset() == b.utcoffset())
    if isinstance(a, dict):
        return (list(a) == list(b) and all(same(k, j) for k, j in zip(a, b, strict=True))
                and all(same(a[k], b[k]) for k in a))
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def tables(path: Path) -> dict[str, int]:
    """Rows per table, read with a separate connection."""
    with sqlite3.connect(path) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        out = {n: conn.execute(f"SELECT count(*) FROM {n}").fetchone()[0] for n in names}
    conn.close()
    return out


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=list(JOURNALS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def journal(kind: str, tmp_path: Path, clock: Clock) -> AsyncIterator[AnyJournal]:
    j = new_journal(kind, tmp_path, clock)
    await j.open()
    yield j
    await j.close()


def test_both_implement_the_protocol(tmp_path: Path) -> None:
    journals: list[Journal] = [MemoryJournal(), SQLiteJournal(tmp_path / "j.sqlite")]
    assert len(journals) == 2


# --- the contract, on both ----------------------------------------------------------------


async def test_one_script_of_calls_gets_the_same_answers(journal: Journal) -> None:
    """The contract as one script, through the :class:`Journal` protocol alone: every
    journal in :data:`JOURNALS` must answer it alike."""
    r1, r2, r3 = make_request(1, files=2), make_request(2), make_request(3, files=2)
    a, b = make_job(r1, "a", prefix="a"), make_job(r1, "b", endpoint="other", prefix="b")
    direct = make_job(r2, None, prefix="c")
    again = Job(r3, "a", "default", tuple(  # other files, to a's objects
        Upload(f, "bucket", u.key) for f, u in zip(r3.files, a.uploads, strict=True)), {}, "/t")

    def unfinished() -> list[str]:
        return [r.id for r in journal.unfinished()]

    def jobs(r: Request) -> list[tuple[str | None, str, int, str | None]]:
        return [(x.job.target, x.state, len(x.results), x.reason) for x in journal.jobs(r)]

    def landed(job: Job) -> list[tuple[str, int, tuple[int, int, int] | None] | None]:
        hits = [journal.landed(job.endpoint, u.bucket, u.key) for u in job.uploads]
        return [None if h is None else (h.upload.source.uri, h.attempts, h.source_stat)
                for h in hits]

    await journal.accepted(r1)
    await journal.accepted(r2)
    assert unfinished() == ["req00001", "req00002"]
    assert await journal.begin(a, True) == {}
    assert jobs(r1) == [("a", "transferring", 0, None)]
    up = a.uploads[0]
    await journal.multipart_started(a, up, "U1", part_size=5 << 20, source_stat=(1, 2, 3))
    await journal.part_done(a, up, 2, '"e2"', None)
    await journal.part_done(a, up, 1, '"e1"', "c1")
    assert journal.multipart(a, up) == MultipartState(
        "U1", {1: ('"e1"', "c1"), 2: ('"e2"', None)}, 5 << 20, (1, 2, 3))
    await journal.concluded(a, tuple(make_result(u, (n, n, n))
                                     for n, u in enumerate(a.uploads, 1)))
    assert jobs(r1) == [("a", "announced", 2, None)] and journal.multipart(a, up) is None
    assert landed(a) == [(r1.files[0].uri, 0, (1, 1, 1)), (r1.files[1].uri, 0, (2, 2, 2))]

    await journal.transferring(b)
    await journal.failed(r1, b, "retries_exhausted")
    assert jobs(r1)[1] == ("b", "failed", 0, "retries_exhausted")
    await journal.transferring(b)  # a retry
    await journal.uploaded(b, tuple(make_result(u, ok=False) for u in b.uploads))
    await journal.announced(b)
    assert jobs(r1) == [("a", "announced", 2, None), ("b", "announced", 2, None)]
    assert landed(b) == [None, None]
    await journal.failed(r2, None, "no_route")
    await journal.uploaded(direct, (make_result(direct.uploads[0], (9, 9, 9)),))
    assert jobs(r2) == [(None, "uploaded", 1, None)]
    await journal.finished(r1)
    assert unfinished() == ["req00002"] and jobs(r1) == []
    assert landed(a) == [(r1.files[0].uri, 0, (1, 1, 1)), (r1.files[1].uri, 0, (2, 2, 2))]

    await journal.accepted(r3)
    found = await journal.begin(again, True)  # candidates: what landed there before
    assert {i: (h.upload.source.uri, h.source_stat) for i, h in found.items()} == {
        0: (r1.files[0].uri, (1, 1, 1)), 1: (r1.files[1].uri, (2, 2, 2))}
    assert jobs(r3) == []  # everything found: nothing recorded
    assert await journal.begin(again, False) == {}
    assert jobs(r3) == [("a", "transferring", 0, None)] and landed(a) == [None, None]
    await journal.concluded(again, tuple(make_result(u, (7, 7, n))
                                         for n, u in enumerate(again.uploads)), finish=True)
    assert unfinished() == ["req00002"] and jobs(r3) == []
    assert landed(a) == [(r3.files[0].uri, 0, (7, 7, 0)), (r3.files[1].uri, 0, (7, 7, 1))]
    await journal.finished(r2)
    assert unfinished() == [] and landed(direct) == [(r2.files[0].uri, 0, (9, 9, 9))]


async def test_requests_round_trip_with_datetimes_and_nesting(journal: AnyJournal) -> None:
    requests = [make_request(1), make_request(2, files=3)]
    for r in requests:
        await journal.accepted(r)
    back = journal.unfinished()
    assert [fields(r) for r in back] == [fields(r) for r in requests]
    for got, sent in zip(back, requests, strict=True):
        assert got.reply is None
        assert same(dict(got.data), dict(sent.data))
        assert same(dict(got.metadata), dict(sent.metadata))
        assert same([dict(f.meta) for f in got.files], [dict(f.meta) for f in sent.files])
    start = back[0].metadata["start_time"]
    assert start.tzinfo is None and start.microsecond == 123456
    assert back[0].metadata["processed"].utcoffset() == dt.timedelta(hours=2)


async def test_a_request_keeps_its_ref_and_one_recorded_without_it_reads_back(
        journal: AnyJournal) -> None:
    """``ref`` (a JetStream message's identity) is journaled with its request; a body
    recorded before it existed has none."""
    from dataclasses import replace

    from trollpush.journal.codec import _request, _request_body

    tagged = replace(make_request(1), ref="jetstream:TROLLPUSH:42")
    await journal.accepted(tagged)
    assert [r.ref for r in journal.unfinished()] == ["jetstream:TROLLPUSH:42"]
    plain = make_request(2)
    body = _request_body(plain)
    assert '"ref"' not in body  # (nothing recorded when there is none)
    older = _loads(body)
    older.pop("ref", None)
    back = _request(plain.id, plain.accepted_at, _dumps(older, "older"))
    assert back.ref is None and fields(back) == fields(plain)


async def test_unfinished_is_oldest_first(journal: AnyJournal) -> None:
    for n, at in [(1, T0 + 30), (2, T0 + 10), (3, T0 + 20)]:
        await journal.accepted(make_request(n, accepted_at=at))
    assert [r.id for r in journal.unfinished()] == ["req00002", "req00003", "req00001"]


async def test_the_state_machine(journal: AnyJournal) -> None:
    r = make_request(1)
    viirs, direct = make_job(r), make_job(r, None, prefix="direct")
    await journal.accepted(r)
    assert journal.state(r.id) == {}
    await journal.transferring(viirs)
    await journal.transferring(direct)
    assert journal.state(r.id) == {"viirs": State.TRANSFERRING, None: State.TRANSFERRING}
    await journal.uploaded(viirs, tuple(make_result(u) for u in viirs.uploads))
    await journal.transferring(viirs)  # late: does not undo the upload
    assert journal.state(r.id)["viirs"] is State.UPLOADED
    assert journal.landed("default", "bucket", viirs.uploads[0].key, (70_000, 1_700, 42))
    await journal.announced(viirs)
    await journal.failed(r, viirs, "shutdown")  # the completion is out: announced is final
    assert journal.state(r.id)["viirs"] is State.ANNOUNCED
    await journal.failed(r, direct, "retries_exhausted")
    assert journal.state(r.id)[None] is State.FAILED
    await journal.transferring(direct)  # a retry may start a failed job again
    assert journal.state(r.id)[None] is State.TRANSFERRING
    await journal.finished(r)
    assert journal.state(r.id) == {} and journal.unfinished() == []
    await journal.transferring(viirs)  # after finished: ignored, nothing comes back
    assert journal.state(r.id) == {} and journal.jobs(r) == []


async def test_the_backlog_is_what_is_accepted_and_not_finished(journal: AnyJournal) -> None:
    """What the metrics read: the backlog, and the bytes on disk (none in memory)."""
    assert journal.backlog == 0
    first, second = make_request(1), make_request(2)
    for r in (first, second, first):  # accepting again is no second request
        await journal.accepted(r)
    assert journal.backlog == 2
    await journal.failed(first, None, "no_route")  # failed, not finished yet
    assert journal.backlog == 2
    await journal.finished(first)
    await journal.finished(first)
    assert journal.backlog == 1
    if isinstance(journal, MemoryJournal):
        assert journal.size_bytes is None
    else:
        assert journal.size_bytes is not None and journal.size_bytes > 0


async def test_the_oldest_open_request_is_known(journal: AnyJournal) -> None:
    """What ``trollpush status --check`` reads: the acceptance time of the oldest
    request not finished (None with an empty backlog)."""
    assert journal.oldest_accepted() is None
    old, new = make_request(1, accepted_at=T0 - 50), make_request(2, accepted_at=T0)
    for r in (new, old):
        await journal.accepted(r)
    assert journal.oldest_accepted() == T0 - 50
    await journal.failed(old, None, "no_route")  # failed, not finished: still open
    assert journal.oldest_accepted() == T0 - 50
    await journal.finished(old)
    assert journal.oldest_accepted() == T0
    await journal.finished(new)
    assert journal.oldest_accepted() is None


async def test_a_request_level_failure_is_recorded(journal: AnyJournal) -> None:
    r = make_request(1)
    await journal.accepted(r)
    await journal.failed(r, None, "no_route")
    assert journal.state(r.id) == {None: State.FAILED}


async def test_accepting_again_keeps_the_progress(journal: AnyJournal) -> None:
    r = make_request(1)
    await journal.accepted(r)
    await journal.transferring(make_job(r))
    await journal.accepted(r)
    assert len(journal.unfinished()) == 1
    assert journal.state(r.id) == {"viirs": State.TRANSFERRING}


async def test_jobs_come_back_with_their_results(journal: AnyJournal) -> None:
    r = make_request(1, files=2)
    a, b = make_job(r, "a", prefix="a"), make_job(r, "b", endpoint="other", prefix="b")
    await journal.accepted(r)
    assert journal.jobs(r) == []
    await journal.transferring(a)
    await journal.transferring(b)
    results = (make_result(a.uploads[0], (1, 2, 3)), make_result(a.uploads[1], (4, 5, 6)))
    await journal.uploaded(a, results)
    await journal.failed(r, b, "retries_exhausted")
    ra, rb = journal.jobs(r)
    assert ra.job == a and ra.state is State.UPLOADED and ra.results == results
    assert ra.reason is None
    assert same(dict(ra.job.metadata), dict(a.metadata))
    assert rb.job == b and rb.state is State.FAILED and rb.results == ()
    assert rb.reason == "retries_exhausted"
    await journal.announced(a)
    assert journal.jobs(r)[0].state is State.ANNOUNCED
    assert journal.jobs(r)[0].results == results  # kept: an announcement can be redone


async def test_multipart_state(journal: AnyJournal) -> None:
    r = make_request(1)
    job = make_job(r)
    up = job.uploads[0]
    await journal.accepted(r)
    assert journal.multipart(job, up) is None
    await journal.part_done(job, up, 1, '"e1"', None)  # no upload recorded: ignored
    await journal.multipart_started(job, up, "U1", part_size=8 << 20,
                                    source_stat=(1 << 30, 1_700, (1 << 64) - 5))
    assert journal.state(r.id) == {"viirs": State.TRANSFERRING}
    await asyncio.gather(*(journal.part_done(job, up, n, f'"e{n}"', f"c{n}") for n in (3, 1)))
    await journal.part_done(job, up, 3, '"e3b"', None)  # again: the latest wins
    want = MultipartState("U1", {1: ('"e1"', "c1"), 3: ('"e3b"', None)}, 8 << 20,
                          (1 << 30, 1_700, (1 << 64) - 5))
    assert journal.multipart(job, up) == want
    assert list(want.parts) == [1, 3]
    await journal.multipart_started(job, up, "U1")  # resumed: the parts stay
    assert journal.multipart(job, up) == want
    other = make_job(r, endpoint="elsewhere")
    assert journal.multipart(other, other.uploads[0]) is None  # its id means nothing there
    await journal.multipart_started(job, up, "U2")  # started over: a new id, no parts
    assert journal.multipart(job, up) == MultipartState("U2", {}, None, None)
    await journal.part_done(job, up, 1, '"f1"', None)
    await journal.uploaded(job, (make_result(up),))
    assert journal.multipart(job, up) is None  # complete: nothing to resume


async def test_multipart_state_goes_with_finished(journal: AnyJournal) -> None:
    r = make_request(1)
    job = make_job(r)
    await journal.accepted(r)
    await journal.multipart_started(job, job.uploads[0], "U1")
    await journal.part_done(job, job.uploads[0], 1, '"e1"', None)
    await journal.finished(r)
    assert journal.multipart(job, job.uploads[0]) is None


async def test_landed_answers_only_the_exact_file_and_object(journal: AnyJournal) -> None:
    r = make_request(1)
    job = make_job(r)
    up = job.uploads[0]
    stat = (70_000, 1_763_719_500_123_456_789, 987_654)
    await journal.accepted(r)
    await journal.transferring(job)
    await journal.uploaded(job, (make_result(up, stat),))
    await journal.announced(job)
    await journal.finished(r)  # the request is gone; what landed is remembered
    hit = journal.landed("default", "bucket", up.key, stat)
    assert hit is not None
    assert (hit.etag, hit.checksum, hit.checksum_algorithm, hit.size, hit.parts) == (
        '"abc"', "AAAAAA==", "crc32c", 70_000, 0)
    assert hit.ok and hit.attempts == 0 and hit.source_stat == stat
    assert hit.upload.url == up.url and hit.upload.source.uri == up.source.uri
    size, mtime, ino = stat
    for miss in [(size + 1, mtime, ino), (size, mtime + 1, ino), (size, mtime, ino + 1)]:
        assert journal.landed("default", "bucket", up.key, miss) is None
    assert journal.landed("other", "bucket", up.key, stat) is None
    assert journal.landed("default", "bucket2", up.key, stat) is None
    assert journal.landed("default", "bucket", up.key + "x", stat) is None


async def test_landed_follows_what_the_object_holds(journal: AnyJournal) -> None:
    """Another file to the same object replaces the entry; an upload under way or a
    failed one forgets it; a multipart landing is answered with its parts."""
    first, second = make_request(1), make_request(2)
    j1 = make_job(first)
    j2 = Job(second, "viirs", "default", (Upload(second.files[0], "bucket", j1.uploads[0].key),),
             {}, "/t")
    key = j1.uploads[0].key
    for r in (first, second):
        await journal.accepted(r)
    await journal.uploaded(j1, (make_result(j1.uploads[0], (1, 1, 1)),))
    assert journal.landed("default", "bucket", key, (1, 1, 1)) is not None
    await journal.transferring(j2)  # the object may change under us from now on
    assert journal.landed("default", "bucket", key, (1, 1, 1)) is None
    multi = UploadResult(j2.uploads[0], 9 << 20, 2, 3.0, etag='"m-2"', checksum="X-2",
                         checksum_algorithm="crc32c", parts=2, source_stat=(2, 2, 2))
    await journal.uploaded(j2, (multi,))
    hit = journal.landed("default", "bucket", key, (2, 2, 2))
    assert hit is not None and (hit.parts, hit.checksum, hit.size) == (2, "X-2", 9 << 20)
    assert hit.upload.source.uri == second.files[0].uri
    assert journal.landed("default", "bucket", key, (1, 1, 1)) is None
    await journal.uploaded(j1, (make_result(j1.uploads[0], ok=False),))
    assert journal.landed("default", "bucket", key, (2, 2, 2)) is None


async def test_begin_answers_what_landed_and_records_the_rest(journal: AnyJournal) -> None:
    """One step: the uploads found in the landed index come back by index; the job is
    ``transferring`` unless all were found, and the objects it will write lose their
    entries until it concludes."""
    first = make_request(1, files=2)
    j1 = make_job(first)
    await journal.accepted(first)
    assert await journal.begin(j1, True) == {}
    assert journal.state(first.id) == {"viirs": State.TRANSFERRING}
    await journal.concluded(j1, tuple(make_result(u, (n, n, n))
                                      for n, u in enumerate(j1.uploads, 1)), finish=True)
    assert journal.state(first.id) == {} and journal.unfinished() == []

    again = make_request(2, files=2)
    j2 = Job(again, "viirs", "default", tuple(  # the same two objects
        Upload(f, "bucket", u.key) for f, u in zip(again.files, j1.uploads, strict=True)),
        {}, "/t")
    await journal.accepted(again)
    everything = await journal.begin(j2, True)
    assert sorted(everything) == [0, 1] and everything[1].source_stat == (2, 2, 2)
    assert everything[0].attempts == 0 and everything[0].upload.url == j1.uploads[0].url
    assert journal.state(again.id) == {}, "nothing to transfer: nothing recorded"
    assert await journal.begin(j2, False) == {}, "no look-up (overwrite)"
    assert journal.state(again.id) == {"viirs": State.TRANSFERRING}
    assert journal.landed("default", "bucket", j1.uploads[0].key, (1, 1, 1)) is None

    third = make_request(3, files=2)
    j3 = make_job(third, prefix="other")
    await journal.accepted(third)
    await journal.concluded(j3, tuple(make_result(u, (5, 5, 5)) for u in j3.uploads))
    # found by object: whether it still holds this file is for the engine to check
    both = await journal.begin(make_job(third, "viirs2", prefix="other"), True)
    assert sorted(both) == [0, 1] and both[1].source_stat == (5, 5, 5)
    assert journal.state(third.id) == {"viirs": State.ANNOUNCED}
    await journal.transferring(make_job(third, "viirs2", prefix="other"))
    assert journal.landed("default", "bucket", j3.uploads[0].key) is None


async def test_concluded_records_uploaded_and_announced_in_one_step(
        journal: AnyJournal) -> None:
    r = make_request(1)
    job = make_job(r)
    await journal.accepted(r)
    await journal.begin(job, True)
    await journal.concluded(job, (make_result(job.uploads[0], (7, 7, 7)),))
    [record] = journal.jobs(r)
    assert record.state is State.ANNOUNCED and record.results[0].etag == '"abc"'
    assert [x.id for x in journal.unfinished()] == [r.id], "not finished unless asked"
    assert journal.landed("default", "bucket", job.uploads[0].key, (7, 7, 7)) is not None
    await journal.finished(r)
    assert journal.unfinished() == []



async def test_landed_is_pruned_by_age(kind: str, tmp_path: Path, clock: Clock) -> None:
    j = new_journal(kind, tmp_path, clock, keep_landed_seconds=3600)
    await j.open()
    r = make_request(1)
    job = make_job(r)
    await j.accepted(r)
    await j.uploaded(job, (make_result(job.uploads[0]),))
    await j.finished(r)
    args = ("default", "bucket", job.uploads[0].key, (70_000, 1_700, 42))
    clock.now += 3500
    assert j.landed(*args) is not None
    assert await j.prune() == 0
    clock.now += 200
    assert j.landed(*args) is None  # out of the window even before it is pruned
    assert await j.prune() == 1
    assert await j.prune() == 0
    await j.close()


async def test_landed_is_pruned_by_count(kind: str, tmp_path: Path, clock: Clock) -> None:
    j = new_journal(kind, tmp_path, clock, keep_landed_max=3)
    await j.open()
    jobs = []
    for n in range(5):
        r = make_request(n)
        jobs.append(make_job(r))
        await j.accepted(r)
        await j.uploaded(jobs[-1], (make_result(jobs[-1].uploads[0], (n, n, n)),))
        await j.finished(r)
        clock.now += 1
    assert await j.prune() == 2
    found = [j.landed("default", "bucket", job.uploads[0].key, (n, n, n)) is not None
             for n, job in enumerate(jobs)]
    assert found == [False, False, True, True, True]  # the oldest go first
    await j.close()


async def test_repr_shows_live_state(journal: AnyJournal) -> None:
    r = make_request(1)
    await journal.accepted(r)
    text = repr(journal)
    assert "accepted" in text
    assert "open=1" in text if isinstance(journal, MemoryJournal) else "1 open request" in text


# --- SQLite: durability ---------------------------------------------------------------------


async def test_everything_survives_a_restart(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "journal.sqlite"
    j = SQLiteJournal(path, clock=clock)
    await j.open()
    r1, r2 = make_request(1), make_request(2, files=2)
    j1, j2 = make_job(r1), make_job(r2, "both", prefix="p")
    for r in (r1, r2):
        await j.accepted(r)
    await j.transferring(j1)
    await j.multipart_started(j1, j1.uploads[0], "U1", part_size=5 << 20,
                              source_stat=(1, 2, 3))
    await j.part_done(j1, j1.uploads[0], 1, '"e1"', "c1")
    results = tuple(make_result(u, (7, 8, n)) for n, u in enumerate(j2.uploads))
    await j.uploaded(j2, results)  # uploaded, not yet announced
    await j.close()
    assert "closed" in repr(j)

    again = SQLiteJournal(path, clock=clock)  # a new process, as far as the file knows
    await again.open()
    back = again.unfinished()
    assert [fields(r) for r in back] == [fields(r1), fields(r2)]
    assert same(dict(back[1].metadata), dict(r2.metadata))
    (rec1,) = again.jobs(back[0])
    assert rec1.state is State.TRANSFERRING and rec1.job.uploads[0].url == j1.uploads[0].url
    assert again.multipart(rec1.job, rec1.job.uploads[0]) == MultipartState(
        "U1", {1: ('"e1"', "c1")}, 5 << 20, (1, 2, 3))
    (rec2,) = again.jobs(back[1])
    assert rec2.state is State.UPLOADED
    assert rec2.job.uploads == tuple(Upload(f, "bucket", f"p/{f.uid}") for f in back[1].files)
    assert [r.etag for r in rec2.results] == ['"abc"', '"abc"']
    assert [r.source_stat for r in rec2.results] == [(7, 8, 0), (7, 8, 1)]
    assert again.landed("default", "bucket", j2.uploads[1].key, (7, 8, 1)) is not None
    await again.close()


def _crash_child(path: str) -> None:
    """Run in a subprocess: record, then die without closing anything."""
    async def main() -> None:
        j = SQLiteJournal(path)
        await j.open()
        await asyncio.gather(*(j.accepted(make_request(n)) for n in range(50)))
        job = make_job(make_request(7))
        await j.transferring(job)
        await j.multipart_started(job, job.uploads[0], "UP-7", part_size=5 << 20)
        await asyncio.gather(*(j.part_done(job, job.uploads[0], n, f'"p{n}"', None)
                               for n in (1, 2, 3)))
        print("recorded", flush=True)
        os._exit(9)

    asyncio.run(main())


async def test_records_survive_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", "import sys; from tests.test_journal import _crash_child; "
         "_crash_child(sys.argv[1])", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 9, proc.stderr
    assert proc.stdout.strip() == "recorded"
    assert path.with_name(path.name + "-wal").stat().st_size > 0  # never checkpointed
    j = SQLiteJournal(path)
    await j.open()  # the dead process's lock went with it
    back = j.unfinished()
    assert [r.id for r in back] == [f"req{n:05d}" for n in range(50)]
    assert same(dict(back[7].metadata), dict(make_request(7).metadata))
    (rec,) = j.jobs(back[7])
    state = j.multipart(rec.job, rec.job.uploads[0])
    assert state is not None and state.upload_id == "UP-7" and sorted(state.parts) == [1, 2, 3]
    await j.close()


async def test_group_commit_takes_thousands_of_accepts(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    j = SQLiteJournal(path)
    await j.open()
    requests = [make_request(n) for n in range(2000)]
    start = time.monotonic()
    await asyncio.gather(*(j.accepted(r) for r in requests))
    elapsed = time.monotonic() - start
    assert elapsed < 5.0, f"2,000 accepts took {elapsed:.2f} s"
    assert j.counts["accepted"] == 2000 and j.commits < 100, repr(j)  # fsyncs were shared
    assert "2000 open request(s)" in repr(j)
    await j.close()
    again = SQLiteJournal(path)
    await again.open()
    assert [r.id for r in again.unfinished()] == [r.id for r in requests]
    await again.close()


async def test_one_bad_operation_fails_alone(tmp_path: Path) -> None:
    """Operations share a transaction, not their fate: a savepoint each."""
    j = SQLiteJournal(tmp_path / "journal.sqlite")
    await j.open()

    def slow(conn: sqlite3.Connection, tally: object) -> None:
        time.sleep(0.3)  # holds the writer: what comes next is committed as one group

    def bad(conn: sqlite3.Connection, tally: object) -> None:
        conn.execute("DELETE FROM requests")  # undone with the rest of this operation
        conn.execute("INSERT INTO requests (id) VALUES ('x')")

    commits = j.commits
    outcomes = await asyncio.gather(j._run(slow), j.accepted(make_request(1)), j._run(bad),
                                    j.accepted(make_request(2)), return_exceptions=True)
    assert j.commits - commits <= 2, repr(j)  # the last three were committed together
    assert outcomes[0] is None and outcomes[1] is None and outcomes[3] is None
    assert isinstance(outcomes[2], JournalError) and "NOT NULL" in str(outcomes[2])
    assert isinstance(outcomes[2].__cause__, sqlite3.IntegrityError)
    assert [r.id for r in j.unfinished()] == ["req00001", "req00002"]
    await j.close()


async def test_an_unrecordable_value_is_refused_clearly(journal: AnyJournal) -> None:
    r = make_request(1)
    bad = Request(id="bad", subject="/x", type="file", data={},
                  metadata={"area": {"corners": [1, {2, 3}]}}, files=r.files, origin="cli")
    if isinstance(journal, SQLiteJournal):
        with pytest.raises(JournalError, match=r"request bad\.metadata\.area\.corners\[1\]: "
                                               r"cannot record a set"):
            await journal.accepted(bad)
    await journal.accepted(r)  # and the journal goes on
    assert r.id in [x.id for x in journal.unfinished()]


async def test_finished_compacts_the_file(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    j = SQLiteJournal(path, keep_landed_max=1000)
    await j.open()
    r = make_request(1)
    job = make_job(r)
    await j.accepted(r)
    await j.transferring(job)
    await j.multipart_started(job, job.uploads[0], "U1")
    await j.part_done(job, job.uploads[0], 1, '"e1"', None)
    assert tables(path) == {"requests": 1, "jobs": 1, "multipart": 1, "parts": 1, "landed": 0,
                            "quarantine": 0}
    await j.uploaded(job, (make_result(job.uploads[0]),))
    await j.finished(r)
    assert tables(path) == {"requests": 0, "jobs": 0, "multipart": 0, "parts": 0, "landed": 1,
                            "quarantine": 0}

    blob = "x" * 1000  # 5,000 requests would leave > 10 MB behind without compaction
    sizes = []
    for wave in range(20):
        batch = [make_request(1000 + wave * 250 + i, blob=blob) for i in range(250)]
        await asyncio.gather(*(_cycle(j, r, n % 20) for n, r in enumerate(batch)))
        sizes.append(path.stat().st_size)
        wal = path.with_name(path.name + "-wal").stat().st_size
        assert wal < 8 << 20, wal  # checkpointed as it goes, and truncated
    assert j.counts["finished"] == 5001
    assert tables(path) == {"requests": 0, "jobs": 0, "multipart": 0, "parts": 0,
                            "landed": 21, "quarantine": 0}
    await j.close()
    assert max(sizes) < 3 << 20, sizes
    assert path.stat().st_size < 1 << 20, path.stat().st_size  # checkpointed on close
    assert not path.with_name(path.name + "-wal").exists()


async def _cycle(j: SQLiteJournal, r: Request, slot: int) -> None:
    job = Job(r, "viirs", "default", (Upload(r.files[0], "bucket", f"obj{slot}"),),
              r.metadata, "/t")
    await j.accepted(r)
    await j.transferring(job)
    await j.uploaded(job, (make_result(job.uploads[0], (slot, slot, slot)),))
    await j.announced(job)
    await j.finished(r)


# --- SQLite: the file ---------------------------------------------------------------------


async def test_the_file_is_wal_versioned_and_locked(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "journal.sqlite"  # parents are created
    j = SQLiteJournal(path)
    await j.open()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    conn.close()
    second = SQLiteJournal(path)
    with pytest.raises(JournalError, match="in use by another process"):
        await second.open()
    await j.close()
    await j.close()  # twice is fine
    await second.open()  # free again
    await second.close()


async def test_a_closed_journal_refuses_work(tmp_path: Path) -> None:
    j = SQLiteJournal(tmp_path / "journal.sqlite")
    with pytest.raises(JournalError, match="not open"):
        await j.accepted(make_request(1))
    with pytest.raises(JournalError, match="not open"):
        j.unfinished()
    await j.open()
    with pytest.raises(JournalError, match="already open"):
        await j.open()
    await j.close()
    with pytest.raises(JournalError, match="not open"):
        await j.finished(make_request(1))


async def test_foreign_files_are_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.sqlite"
    j = SQLiteJournal(newer)
    await j.open()
    await j.close()
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(JournalError, match="schema version 99"):
        await SQLiteJournal(newer).open()

    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(JournalError, match="not a trollpush journal"):
        await SQLiteJournal(other).open()

    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(JournalError, match="file is not a database"):
        await SQLiteJournal(garbage).open()


def test_default_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_journal_path() == tmp_path / "state" / "trollpush" / "journal.sqlite"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/is/ignored")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_journal_path() == tmp_path / ".local/state/trollpush/journal.sqlite"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_journal_path() == tmp_path / ".local/state/trollpush/journal.sqlite"


# --- the encoding -------------------------------------------------------------------------

_offsets = st.integers(-1439, 1439).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))
_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
            | st.text(max_size=8) | st.datetimes(timezones=st.none() | _offsets)
            | st.dates() | st.times() | st.timedeltas())
_values = st.recursive(
    _scalars,
    lambda inner: (st.lists(inner, max_size=4) | st.lists(inner, max_size=3).map(tuple)
                   | st.dictionaries(st.text(max_size=4), inner, max_size=4)
                   | st.dictionaries(st.integers() | st.text(max_size=2), inner, max_size=3)),
    max_leaves=16)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_the_encoding_restores_values_exactly(value: Any) -> None:
    assert same(_loads(_dumps(value, "x")), value)


async def test_landed_keeps_the_part_size_of_a_multipart_object(journal: AnyJournal) -> None:
    """A repeat's composite checksum can only be computed again with the same part size."""
    r = make_request(1)
    job = make_job(r)
    await journal.accepted(r)
    multi = UploadResult(job.uploads[0], 11 << 20, 3, 1.0, etag='"m-3"', checksum="X-3",
                         checksum_algorithm="crc32c", parts=3, part_size=5 << 20,
                         source_stat=(11 << 20, 1, 1))
    await journal.concluded(job, (multi,), finish=True)
    hit = journal.landed("default", "bucket", job.uploads[0].key)
    assert hit is not None and (hit.parts, hit.part_size) == (3, 5 << 20)
