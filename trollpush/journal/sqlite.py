"""The durable journal: SQLite in WAL mode, one writer thread, group commits.

* one file in WAL mode with ``synchronous=FULL``; the schema version lives in
  ``PRAGMA user_version``; a ``<path>.lock`` file (``flock``) keeps a second daemon out;
* one writer thread owns the writing connection.  The async methods queue an operation
  and await its future; the writer takes everything queued, runs it in ONE transaction
  (a savepoint per operation, so one bad operation fails alone) and commits once: one
  fsync for the whole group, which is what lets thousands of accepts per second through;
* the sync read methods use a second, query-only connection: WAL readers never wait for
  the writer, and every awaited write is committed before its future resolves;
* ``finished`` deletes the request's rows; the ``landed`` index (one row per object:
  which file, by size, mtime and inode, landed there and how) outlives the request and is
  pruned by age and by count on open and every :data:`PRUNE_EVERY` finishes;
* on open, every open request is read back once, as recovery will read it: one that
  cannot be (nor any of its jobs) is moved to the ``quarantine`` table instead of
  stopping every other request from resuming (:mod:`trollpush.journal.schema`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._workers import post
from ..errors import JournalError
from ..models import Job, Request, SourceFile, Stat, Upload, UploadResult
from .codec import (
    UNREADABLE,
    _i64,
    _job_body,
    _job_record,
    _request,
    _request_body,
    _results_body,
    _u64,
    unreadable,
)
from .protocol import (
    PRUNE_EVERY,
    JobRecord,
    MultipartState,
    State,
    _answer,
    _found,
    _objects,
    _slot,
    advance,
)
from .schema import SCHEMA_VERSION as SCHEMA_VERSION
from .schema import (
    Quarantined,
    migrate,
    prune_quarantine,
    quarantined,
    set_aside,
    sweep,
)

logger = logging.getLogger(__name__)

_MAX_BATCH = 50_000  # operations per transaction, at most
_WAL_LIMIT = 4 << 20  # bytes the WAL file is truncated to after a checkpoint
_VACUUM_PAGES = 256  # free pages that make a prune give space back to the file system

_Fn = Callable[[sqlite3.Connection, Counter[str]], Any]


@dataclass(slots=True)
class _Op:
    fn: _Fn | None  # None: close
    future: asyncio.Future[Any] | None = None


class _Redo(Exception):
    """An operation of an optimistic batch failed: run the batch again, isolated."""


class SQLiteJournal:
    """The durable journal: one SQLite file, one writer thread, group commits."""

    def __init__(self, path: str | os.PathLike[str], *,
                 keep_landed_seconds: float = 7 * 86400, keep_landed_max: int = 100_000,
                 clock: Callable[[], float] = time.time) -> None:
        if keep_landed_seconds < 0 or keep_landed_max < 0:
            raise ValueError("keep_landed_seconds and keep_landed_max must be >= 0")
        self.path = Path(path)
        self.keep_landed_seconds = keep_landed_seconds
        self.keep_landed_max = keep_landed_max
        self._clock = clock
        self.counts: Counter[str] = Counter()  # operations committed, by kind
        self.commits = 0  # transactions committed: one fsync each
        self.operations = 0  # operations committed in them
        self._open_requests = 0
        self._state = "closed"  # closed | opening | open | closing
        self._gate = threading.Lock()  # state changes and queue puts
        self._stats = threading.Lock()
        self._queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None  # the writer thread's
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._since_prune = 0
        self._aside: set[Any] = set()  # request ids queued for the quarantine while open
        self._recovered: list[Request] | None = None  # read at open; good until a write

    def __repr__(self) -> str:
        with self._stats:
            counts = {str(k): v for k, v in self.counts.items() if v}
            return (f"<SQLiteJournal {self.path} {self._state}: "
                    f"{self._open_requests} open request(s), {self._queue.qsize()} queued | "
                    f"{self.operations} operation(s) in {self.commits} commit(s) {counts}>")

    # --- life cycle ---------------------------------------------------------------------

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        with self._gate:
            if self._state != "closed":
                raise JournalError(f"journal {self.path} is already {self._state}")
            self._state = "opening"
            self._queue = queue.SimpleQueue()
            self._aside.clear()
        self._thread = threading.Thread(target=self._serve, args=(ready,),
                                        name="journal-writer", daemon=True)
        self._thread.start()
        try:
            await ready
        except BaseException:
            with self._gate:
                if ready.cancelled():  # the writer may still come up: tell it to go
                    self._queue.put(_Op(None))
                self._state = "closed"
            raise
        with self._gate:
            self._state = "open"

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        with self._gate:
            if self._state != "open":
                return
            self._state = "closing"
            self._queue.put(_Op(None, done))
        try:
            await done
        finally:
            thread, self._thread = self._thread, None
            if thread is not None:
                await asyncio.to_thread(thread.join, 10)
            with self._gate:
                self._state = "closed"

    async def prune(self) -> int:
        """Forget landed objects beyond the retention window or the count; how many."""
        return int(await self._run(lambda c, t: self._prune(c)))

    # --- recording ----------------------------------------------------------------------

    async def accepted(self, request: Request) -> None:
        row = (request.id, request.accepted_at, _request_body(request))

        def op(c: sqlite3.Connection, tally: Counter[str]) -> None:
            tally[State.ACCEPTED.value] += 1
            if c.execute("INSERT INTO requests (id, accepted_at, body) VALUES (?, ?, ?) "
                         "ON CONFLICT (id) DO NOTHING", row).rowcount:
                tally["open"] += 1
        await self._run(op)

    async def transferring(self, job: Job) -> None:
        body = _job_body(job)
        await self._run(lambda c, t: self._transferring(c, t, job, body))

    async def begin(self, job: Job, lookup: bool) -> dict[int, UploadResult]:
        body = _job_body(job)

        def op(c: sqlite3.Connection, tally: Counter[str]) -> dict[int, UploadResult]:
            # looked up on the writer's connection, in the same transaction as the write
            found = _found(lambda *a: self._landed(
                lambda sql, params: c.execute(sql, params).fetchall(), *a), job, lookup)
            if len(found) < len(job.uploads):
                self._transferring(c, tally, job, body)
            return found
        return dict(await self._run(op))

    def _transferring(self, c: sqlite3.Connection, tally: Counter[str], job: Job,
                      body: str) -> None:
        if self._put_job(c, tally, job, body, State.TRANSFERRING) is State.TRANSFERRING:
            c.executemany("DELETE FROM landed WHERE endpoint = ? AND bucket = ? AND key = ?",
                          _objects(job))

    async def multipart_started(self, job: Job, upload: Upload, upload_id: str, *,
                                part_size: int | None = None,
                                source_stat: Stat | None = None) -> None:
        body = _job_body(job)
        where = (job.request.id, _slot(job.target), upload.bucket, upload.key)
        st = (source_stat[0], source_stat[1], _i64(source_stat[2])) if source_stat else None

        def op(c: sqlite3.Connection, tally: Counter[str]) -> None:
            tally["multipart_started"] += 1
            known = c.execute("SELECT state FROM jobs WHERE request_id = ? AND slot = ?",
                              where[:2]).fetchone()
            if known is None and self._put_job(c, tally, job, body,
                                               State.TRANSFERRING) is None:
                return  # not an open request
            c.execute("DELETE FROM landed WHERE endpoint = ? AND bucket = ? AND key = ?",
                      (job.endpoint, upload.bucket, upload.key))
            row = c.execute("SELECT seq, upload_id, endpoint FROM multipart WHERE "
                            "request_id = ? AND slot = ? AND bucket = ? AND key = ?",
                            where).fetchone()
            if row is not None and row[1] == upload_id and row[2] == job.endpoint:
                c.execute("UPDATE multipart SET part_size = coalesce(?, part_size), "
                          "st_size = coalesce(?, st_size), st_mtime_ns = coalesce(?, "
                          "st_mtime_ns), st_ino = coalesce(?, st_ino) WHERE seq = ?",
                          (part_size, *(st or (None, None, None)), row[0]))
                return
            if row is not None:
                c.execute("DELETE FROM parts WHERE multipart = ?", (row[0],))
                c.execute("DELETE FROM multipart WHERE seq = ?", (row[0],))
            c.execute("INSERT INTO multipart (request_id, slot, bucket, key, endpoint, "
                      "upload_id, part_size, st_size, st_mtime_ns, st_ino) VALUES "
                      "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (*where, job.endpoint, upload_id, part_size,
                       *(st or (None, None, None))))
        await self._run(op)

    async def part_done(self, job: Job, upload: Upload, number: int, etag: str,
                        checksum: str | None) -> None:
        where = (job.request.id, _slot(job.target), upload.bucket, upload.key)

        def op(c: sqlite3.Connection, tally: Counter[str]) -> None:
            tally["part_done"] += 1
            row = c.execute("SELECT seq FROM multipart WHERE request_id = ? AND slot = ? "
                            "AND bucket = ? AND key = ?", where).fetchone()
            if row is None:
                logger.debug("journal: part %d of %s: no multipart upload recorded", number,
                             upload.url)
                return
            c.execute("INSERT INTO parts (multipart, number, etag, checksum) VALUES "
                      "(?, ?, ?, ?) ON CONFLICT (multipart, number) DO UPDATE SET "
                      "etag = excluded.etag, checksum = excluded.checksum",
                      (row[0], number, etag, checksum))
        await self._run(op)

    async def uploaded(self, job: Job, results: tuple[UploadResult, ...]) -> None:
        body, rbody = _job_body(job), _results_body(job, results)
        index, forget = self._index(job, results)
        await self._run(lambda c, t: self._uploaded(c, t, job, body, rbody, index, forget,
                                                    State.UPLOADED))

    async def announced(self, job: Job) -> None:
        body = _job_body(job)
        await self._run(lambda c, t: self._put_job(c, t, job, body, State.ANNOUNCED))

    async def concluded(self, job: Job, results: tuple[UploadResult, ...], *,
                        finish: bool = False) -> None:
        index, forget = self._index(job, results)
        if finish:  # the request's rows go: only the landed index needs the results
            def op(c: sqlite3.Connection, tally: Counter[str]) -> None:
                self._land(c, index, forget)
                self._finished(c, tally, job.request.id)
            await self._run(op)
            return
        body, rbody = _job_body(job), _results_body(job, results)
        await self._run(lambda c, t: self._uploaded(c, t, job, body, rbody, index, forget,
                                                    State.ANNOUNCED))

    def _index(self, job: Job, results: tuple[UploadResult, ...]
               ) -> tuple[list[tuple[Any, ...]], list[tuple[str, str, str]]]:
        """The landed rows the results make, and the objects they leave unknown."""
        now = self._clock()
        index: list[tuple[Any, ...]] = []
        forget: list[tuple[str, str, str]] = []
        for r in results:
            obj = (job.endpoint, r.upload.bucket, r.upload.key)
            if r.ok and r.source_stat is not None:
                size, mtime, ino = r.source_stat
                f = r.upload.source
                index.append((*obj, size, mtime, _i64(ino), now, r.size, r.etag, r.checksum,
                              r.checksum_algorithm, r.parts, f.uri, str(f.path), f.uid,
                              r.part_size))
            else:
                forget.append(obj)
        return index, forget

    def _uploaded(self, c: sqlite3.Connection, tally: Counter[str], job: Job, body: str,
                  rbody: str, index: list[tuple[Any, ...]],
                  forget: list[tuple[str, str, str]], state: State) -> None:
        if self._put_job(c, tally, job, body, state, results=rbody) is not None:
            c.execute("DELETE FROM parts WHERE multipart IN (SELECT seq FROM multipart "
                      "WHERE request_id = ? AND slot = ?)", (job.request.id, _slot(job.target)))
            c.execute("DELETE FROM multipart WHERE request_id = ? AND slot = ?",
                      (job.request.id, _slot(job.target)))
        self._land(c, index, forget)

    @staticmethod
    def _land(c: sqlite3.Connection, index: list[tuple[Any, ...]],
              forget: list[tuple[str, str, str]]) -> None:
        c.executemany("INSERT OR REPLACE INTO landed (endpoint, bucket, key, st_size, "
                      "st_mtime_ns, st_ino, at, size, etag, checksum, checksum_algorithm, "
                      "parts, uri, path, uid, part_size) VALUES "
                      "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", index)
        if forget:
            c.executemany("DELETE FROM landed WHERE endpoint = ? AND bucket = ? AND key = ?",
                          forget)

    async def failed(self, request: Request, job: Job | None, reason: str) -> None:
        if job is not None:
            body = _job_body(job)
            await self._run(lambda c, t: self._put_job(c, t, job, body, State.FAILED,
                                                       reason=str(reason)))
            return

        def op(c: sqlite3.Connection, tally: Counter[str]) -> None:
            tally[State.FAILED.value] += 1
            c.execute("UPDATE requests SET failure = ? WHERE id = ?", (str(reason), request.id))
        await self._run(op)

    async def finished(self, request: Request) -> None:
        rid = request.id
        await self._run(lambda c, t: self._finished(c, t, rid))

    @staticmethod
    def _finished(c: sqlite3.Connection, tally: Counter[str], rid: str) -> None:
        tally["finished"] += 1
        c.execute("DELETE FROM parts WHERE multipart IN "
                  "(SELECT seq FROM multipart WHERE request_id = ?)", (rid,))
        c.execute("DELETE FROM multipart WHERE request_id = ?", (rid,))
        c.execute("DELETE FROM jobs WHERE request_id = ?", (rid,))
        if c.execute("DELETE FROM requests WHERE id = ?", (rid,)).rowcount:
            tally["open"] -= 1

    def _put_job(self, c: sqlite3.Connection, tally: Counter[str], job: Job, body: str,
                 state: State, *, reason: str | None = None,
                 results: str | None = None) -> State | None:
        """Record ``state`` for the job (writer thread); the state it is in now, or None
        when its request is not open."""
        tally[state.value] += 1
        key = (job.request.id, _slot(job.target))
        row = c.execute("SELECT state FROM jobs WHERE request_id = ? AND slot = ?",
                        key).fetchone()
        if row is None:
            if c.execute("SELECT 1 FROM requests WHERE id = ?", key[:1]).fetchone() is None:
                return None
            c.execute("INSERT INTO jobs (request_id, slot, target, state, reason, body, "
                      "results) VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (*key, job.target, state.value, reason, body, results))
            return state
        new = advance(State(row[0]), state)
        if new is not state:
            logger.debug("journal: %s stays %s (not %s)", job.describe(), new, state)
            return new
        c.execute("UPDATE jobs SET state = ?, reason = ?, body = ?, "
                  "results = coalesce(?, results) WHERE request_id = ? AND slot = ?",
                  (state.value, reason, body, results, *key))
        return state

    # --- reading (any thread; a second, query-only connection) ----------------------------

    def unfinished(self) -> list[Request]:
        with self._gate:  # once after open, before any write: what opening read back
            cached, self._recovered = self._recovered, None
        if cached is not None:
            return cached
        rows = self._rows("SELECT id, accepted_at, body FROM requests "
                          "ORDER BY accepted_at, seq")
        out = []
        for rid, at, body in rows:  # opening read them all once: these fail only if the
            try:                    # file was changed behind this process's back
                out.append(_request(rid, at, body))
            except UNREADABLE as err:
                self._set_aside_later(rid, f"requests row: {unreadable(err)}")
        return out

    def jobs(self, request: Request) -> list[JobRecord]:
        rows = self._rows("SELECT slot, target, state, reason, body, results FROM jobs "
                          "WHERE request_id = ? ORDER BY seq", (request.id,))
        out = []
        for slot, target, state, reason, body, results in rows:
            try:
                out.append(_job_record(request, target, state, reason, body, results))
            except UNREADABLE as err:
                why = f"jobs row {slot!r}: {unreadable(err)}"
                self._set_aside_later(request.id, why)
                raise JournalError(f"journal {self.path}: request {request.id!r} cannot be "
                                   f"read back ({why}); set aside in the quarantine") from err
        return out

    def quarantined(self) -> list[Quarantined]:
        """The rows set aside because their request could not be read back, oldest first
        (kept for an operator; pruned after 30 days or beyond 10,000 rows)."""
        return quarantined(self._rows("SELECT seq, at, source, request_id, error, body, "
                                      "fields FROM quarantine ORDER BY seq"))

    def multipart(self, job: Job, upload: Upload) -> MultipartState | None:
        rows = self._rows("SELECT seq, endpoint, upload_id, part_size, st_size, st_mtime_ns, "
                          "st_ino FROM multipart WHERE request_id = ? AND slot = ? AND "
                          "bucket = ? AND key = ?",
                          (job.request.id, _slot(job.target), upload.bucket, upload.key))
        if not rows or rows[0][1] != job.endpoint:
            return None
        seq, _, upload_id, part_size, size, mtime, ino = rows[0]
        parts = self._rows("SELECT number, etag, checksum FROM parts WHERE multipart = ? "
                           "ORDER BY number", (seq,))
        stat = (size, mtime, _u64(ino)) if size is not None else None
        return MultipartState(upload_id, {n: (e, s) for n, e, s in parts}, part_size, stat)

    def landed(self, endpoint: str, bucket: str, key: str, stat: Stat | None = None
               ) -> UploadResult | None:
        return self._landed(self._rows, endpoint, bucket, key, stat)

    def _landed(self, rows_of: Callable[[str, Sequence[Any]], list[Any]], endpoint: str,
                bucket: str, key: str, stat: Stat | None = None) -> UploadResult | None:
        rows = rows_of("SELECT size, etag, checksum, checksum_algorithm, parts, uri, path, "
                       "uid, part_size, st_size, st_mtime_ns, st_ino FROM landed WHERE "
                       "endpoint = ? AND bucket = ? AND key = ? AND at >= ?",
                       (endpoint, bucket, key, self._clock() - self.keep_landed_seconds))
        if not rows:
            return None
        rsize, etag, checksum, algorithm, parts, uri, path, uid, part_size, *st = rows[0]
        recorded = (st[0], st[1], _u64(st[2]))
        if stat is not None and recorded != tuple(stat):
            return None
        upload = Upload(SourceFile(uri=uri, path=Path(path), uid=uid), bucket, key)
        return _answer(upload, rsize, etag, checksum, algorithm, parts, recorded, part_size)

    def state(self, request_id: str) -> dict[str | None, State]:
        """Per-job states of an open request (empty once finished); None: the request."""
        rows = self._rows("SELECT target, state FROM jobs WHERE request_id = ? ORDER BY seq",
                          (request_id,))
        out: dict[str | None, State] = {t: State(s) for t, s in rows}
        failure = self._rows("SELECT failure FROM requests WHERE id = ?", (request_id,))
        if failure and failure[0][0] is not None and None not in out:
            out[None] = State.FAILED
        return out

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._read_lock:
            if self._reader is None:
                raise JournalError(f"journal {self.path} is not open")
            try:
                return self._reader.execute(sql, params).fetchall()
            except sqlite3.Error as err:
                raise JournalError(f"journal {self.path}: {err}") from err

    def _set_aside_later(self, rid: Any, why: str) -> None:
        """Queue the move of an unreadable open request into the quarantine (a read
        method found it; the read connection cannot write); logged once."""
        def op(c: sqlite3.Connection, tally: Counter[str]) -> None:
            try:
                if set_aside(c, rid, why, self._clock()):
                    tally["open"] -= 1
                tally["quarantined"] += 1
            except sqlite3.Error as err:  # nobody awaits this one: say it here
                logger.error("journal %s: setting request %r aside failed: %s", self.path,
                             rid, err)
                raise

        with self._gate:
            if self._state != "open" or rid in self._aside:
                return
            self._aside.add(rid)
            self._recovered = None
            logger.warning("journal %s: request %r cannot be read back, set aside in the "
                           "quarantine: %r", self.path, rid, why)
            self._queue.put(_Op(op))

    # --- the writer thread ----------------------------------------------------------------

    async def _run(self, fn: _Fn) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        with self._gate:
            if self._state != "open":
                raise JournalError(f"journal {self.path} is not open ({self._state})")
            self._recovered = None  # what is open may change from here on
            self._queue.put(_Op(fn, future))
        return await future

    def _serve(self, ready: asyncio.Future[None]) -> None:
        try:
            self._connect()
        except BaseException as err:
            self._disconnect()
            self._post([(_Op(None, ready), None, self._error(err))])
            return
        self._post([(_Op(None, ready), None, None)])
        while True:
            batch = [self._queue.get()]
            while batch[-1].fn is not None and len(batch) < _MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1].fn is None
            work = batch[:-1] if stop else batch
            if work:
                self._commit(work)
            if stop:
                self._disconnect()
                self._post([(batch[-1], None, None)])
                with self._gate:
                    self._state = "closed"
                    left: list[_Op] = []
                    while not self._queue.empty():
                        left.append(self._queue.get_nowait())
                self._post([(op, None, JournalError(f"journal {self.path} is closed"))
                            for op in left])
                return

    def _commit(self, work: list[_Op]) -> None:
        """Run the operations in one transaction and commit once.  Optimistically without
        a savepoint per operation (a third of the statements of a small file); if one
        fails, the batch runs again with savepoints, so that only that one fails."""
        conn = self._conn
        assert conn is not None
        try:
            try:
                tally, outcomes = self._transaction(conn, work, isolate=False)
            except _Redo:
                tally, outcomes = self._transaction(conn, work, isolate=True)
        except Exception as err:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            logger.error("journal %s: commit of %d operation(s) failed: %s", self.path,
                         len(work), err)
            outcomes = [(op, None, self._error(err)) for op in work]
        else:
            with self._stats:
                self._open_requests += tally.pop("open", 0)
                self.counts.update(tally)
                self.commits += 1
                self.operations += len(work)
        self._post(outcomes)

    def _transaction(self, conn: sqlite3.Connection, work: list[_Op], *, isolate: bool
                     ) -> tuple[Counter[str], list[tuple[_Op, Any, BaseException | None]]]:
        outcomes: list[tuple[_Op, Any, BaseException | None]] = []
        tally: Counter[str] = Counter()
        conn.execute("BEGIN IMMEDIATE")
        for op in work:
            assert op.fn is not None
            mine: Counter[str] = Counter()
            if isolate:
                conn.execute("SAVEPOINT op")
            try:
                value = op.fn(conn, mine)
            except Exception as err:
                if not isolate:
                    conn.execute("ROLLBACK")
                    raise _Redo from err
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                outcomes.append((op, None, self._error(err)))
                continue
            if isolate:
                conn.execute("RELEASE op")
            tally.update(mine)
            outcomes.append((op, value, None))
        self._since_prune += tally["finished"]
        if self._since_prune >= PRUNE_EVERY:
            self._since_prune = 0
            conn.execute("SAVEPOINT prune")
            try:
                self._prune(conn)
            except sqlite3.Error as err:
                conn.execute("ROLLBACK TO prune")
                logger.warning("journal %s: pruning failed: %s", self.path, err)
            conn.execute("RELEASE prune")
        conn.execute("COMMIT")
        return tally, outcomes

    @staticmethod
    def _post(outcomes: list[tuple[_Op, Any, BaseException | None]]) -> None:
        """Hand the outcomes to their event loops: one wake-up per loop and batch."""
        post([(op.future, value, err) for op, value, err in outcomes if op.future is not None])

    def _error(self, err: BaseException) -> BaseException:
        if isinstance(err, (sqlite3.Error, OSError)):
            wrapped = JournalError(f"journal {self.path}: {type(err).__name__}: {err}")
            wrapped.__cause__ = err
            return wrapped
        return err

    def _connect(self) -> None:
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JournalError(f"journal {path} is in use by another process "
                               f"(lock {path}.lock)") from None
        conn = self._conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes on a new file
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise JournalError(f"journal {path}: SQLite refused WAL mode (got {mode!r}); "
                               "is it on a network file system?")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT}")
        migrate(conn, path)
        conn.execute("BEGIN IMMEDIATE")
        recovered, bad = sweep(conn, self._clock())
        pruned = self._prune(conn)
        conn.execute("COMMIT")
        for rid, why in bad:
            logger.warning("journal %s: request %r cannot be read back, set aside in the "
                           "quarantine: %r", path, rid, why)
        kept = conn.execute("SELECT count(DISTINCT request_id) FROM quarantine").fetchone()[0]
        with self._stats:
            self.counts["quarantined"] += len(bad)
        self._open_requests = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
        reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                 timeout=10.0)
        reader.execute("PRAGMA query_only = ON")
        with self._read_lock:
            self._reader = reader
        with self._gate:
            self._recovered = recovered
        logger.info("journal %s open: %d unfinished request(s), %d record(s) quarantined "
                    "now (%d request(s) in the quarantine), %d landed object(s) pruned",
                    path, self._open_requests, len(bad), kept, pruned)

    def _prune(self, conn: sqlite3.Connection) -> int:
        now = self._clock()
        horizon = now - self.keep_landed_seconds
        n = int(conn.execute("DELETE FROM landed WHERE at < ?", (horizon,)).rowcount)
        n += int(conn.execute("DELETE FROM landed WHERE rowid IN (SELECT rowid FROM landed "
                              "ORDER BY at DESC, rowid DESC LIMIT -1 OFFSET ?)",
                              (self.keep_landed_max,)).rowcount)
        aside = prune_quarantine(conn, now)
        if aside:
            logger.info("journal %s: %d quarantined row(s) pruned", self.path, aside)
        if conn.execute("PRAGMA freelist_count").fetchone()[0] > _VACUUM_PAGES:
            conn.execute("PRAGMA incremental_vacuum").fetchall()
        if n:
            logger.info("journal %s: %d landed object(s) pruned", self.path, n)
        return n

    def _disconnect(self) -> None:
        """Close both connections (the writer last: it checkpoints) and the lock."""
        with self._read_lock:
            reader, self._reader = self._reader, None
        with self._gate:
            self._recovered = None
        for conn in (reader, self._conn):
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error as err:
                    logger.warning("journal %s: closing failed: %s", self.path, err)
        self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
