"""The durable journal: SQLite in WAL mode, one writer thread, group commits.

* one file in WAL mode with ``synchronous=FULL``; the schema version lives in
  ``PRAGMA user_version``; a ``<path>.lock`` file (``flock``) keeps a second daemon out;
* one writer thread owns the writing connection (:mod:`trollpush.journal.writer`).  The
  async methods queue an operation and await its future; the writer runs everything
  queued in ONE transaction (one bad operation fails alone) and commits once: one fsync
  for the whole group, which is what lets thousands of accepts per second through;
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

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import JournalError
from ..models import Job, MultipartState, Request, Stat, Upload, UploadResult
from . import records
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
from .protocol import PRUNE_EVERY, JobRecord, State, _found
from .schema import Quarantined, migrate, quarantined, set_aside, sweep
from .writer import Operation, Writer

logger = logging.getLogger(__name__)

_WAL_LIMIT = 4 << 20  # bytes the WAL file is truncated to after a checkpoint


# shape: the Journal protocol's sixteen operations, a few lines each (their SQL is in
# records.py, the writer thread in writer.py)
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
        self._stats = threading.Lock()
        self._writer = Writer(self.path, connect=self._connect, disconnect=self._disconnect,
                              before_commit=self._before_commit, committed=self._committed)
        self._conn: sqlite3.Connection | None = None  # the writer thread's
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._since_prune = 0
        self._cache = threading.Lock()  # the two below
        self._aside: set[Any] = set()  # request ids queued for the quarantine while open
        self._recovered: list[Request] | None = None  # read at open; good until a write

    def __repr__(self) -> str:
        with self._stats:
            counts = {str(k): v for k, v in self.counts.items() if v}
            return (f"<SQLiteJournal {self.path} {self._writer.state}: "
                    f"{self._open_requests} open request(s), {self._writer.queued} queued | "
                    f"{self.operations} operation(s) in {self.commits} commit(s) {counts}>")

    # --- life cycle ---------------------------------------------------------------------

    async def open(self) -> None:
        await self._writer.start()

    async def close(self) -> None:
        await self._writer.stop()

    async def prune(self) -> int:
        """Forget landed objects beyond the retention window or the count; how many."""
        return int(await self._run(lambda c, t: self._prune(c)))

    # --- recording ----------------------------------------------------------------------

    async def accepted(self, request: Request) -> None:
        row = (request.id, request.accepted_at, _request_body(request))
        await self._run(lambda c, t: records.accept(c, t, row))

    async def transferring(self, job: Job) -> None:
        body = _job_body(job)
        await self._run(lambda c, t: records.transferring(c, t, job, body))

    async def begin(self, job: Job, lookup: bool) -> dict[int, UploadResult]:
        body = _job_body(job)

        def op(c: sqlite3.Connection, tally: Counter[str]) -> dict[int, UploadResult]:
            # looked up on the writer's connection, in the same transaction as the write
            def rows(sql: str, params: Sequence[Any]) -> list[Any]:
                return c.execute(sql, params).fetchall()
            found = _found(lambda endpoint, bucket, key: records.landed(
                rows, endpoint, bucket, key, self._since()), job, lookup)
            if len(found) < len(job.uploads):
                records.transferring(c, tally, job, body)
            return found
        return dict(await self._run(op))

    async def multipart_started(self, job: Job, upload: Upload, upload_id: str, *,
                                part_size: int | None = None,
                                source_stat: Stat | None = None) -> None:
        body = _job_body(job)
        st = (source_stat[0], source_stat[1], _i64(source_stat[2])) if source_stat else None
        await self._run(lambda c, t: records.multipart_started(
            c, t, job, body, upload, upload_id, part_size, st))

    async def part_done(self, job: Job, upload: Upload, number: int, etag: str,
                        checksum: str | None) -> None:
        await self._run(lambda c, t: records.part_done(c, t, job, upload, number, etag,
                                                       checksum))

    async def uploaded(self, job: Job, results: tuple[UploadResult, ...]) -> None:
        body, rbody = _job_body(job), _results_body(job, results)
        index, forget = records.landed_rows(job, results, self._clock())
        await self._run(lambda c, t: records.uploaded(c, t, job, body, rbody, index, forget,
                                                      State.UPLOADED))

    async def announced(self, job: Job) -> None:
        body = _job_body(job)
        await self._run(lambda c, t: records.put_job(c, t, job, body, State.ANNOUNCED))

    async def concluded(self, job: Job, results: tuple[UploadResult, ...], *,
                        finish: bool = False) -> None:
        index, forget = records.landed_rows(job, results, self._clock())
        if finish:  # the request's rows go: only the landed index needs the results
            def op(c: sqlite3.Connection, tally: Counter[str]) -> None:
                records.land(c, index, forget)
                records.finished(c, tally, job.request.id)
            await self._run(op)
            return
        body, rbody = _job_body(job), _results_body(job, results)
        await self._run(lambda c, t: records.uploaded(c, t, job, body, rbody, index, forget,
                                                      State.ANNOUNCED))

    async def failed(self, request: Request, job: Job | None, reason: str) -> None:
        if job is not None:
            body = _job_body(job)
            await self._run(lambda c, t: records.put_job(c, t, job, body, State.FAILED,
                                                         reason=str(reason)))
            return
        rid, why = request.id, str(reason)
        await self._run(lambda c, t: records.request_failed(c, t, rid, why))

    async def finished(self, request: Request) -> None:
        rid = request.id
        await self._run(lambda c, t: records.finished(c, t, rid))

    async def _run(self, fn: Operation) -> Any:
        """Run ``fn`` on the writer's thread, committed with its batch: its value."""
        with self._cache:
            self._recovered = None  # what is open may change from here on
        return await self._writer.run(fn)

    # --- reading (any thread; a second, query-only connection) ----------------------------

    @property
    def backlog(self) -> int:
        return self._open_requests

    @property
    def size_bytes(self) -> int | None:
        """The database file and its WAL (the lock file is empty)."""
        total = 0
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        return total

    def oldest_accepted(self) -> float | None:
        rows = self._rows("SELECT MIN(accepted_at) FROM requests")
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    def unfinished(self) -> list[Request]:
        with self._cache:  # once after open, before any write: what opening read back
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
                          (job.request.id, records.slot(job.target), upload.bucket, upload.key))
        if not rows or rows[0][1] != job.endpoint:
            return None
        seq, _, upload_id, part_size, size, mtime, ino = rows[0]
        parts = self._rows("SELECT number, etag, checksum FROM parts WHERE multipart = ? "
                           "ORDER BY number", (seq,))
        stat = (size, mtime, _u64(ino)) if size is not None else None
        return MultipartState(upload_id, {n: (e, s) for n, e, s in parts}, part_size, stat)

    def landed(self, endpoint: str, bucket: str, key: str, stat: Stat | None = None
               ) -> UploadResult | None:
        return records.landed(self._rows, endpoint, bucket, key, self._since(), stat)

    def _since(self) -> float:
        """The oldest landing still within the retention window."""
        return self._clock() - self.keep_landed_seconds

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

        with self._cache:
            if rid in self._aside or not self._writer.enqueue(op):
                return
            self._aside.add(rid)
            self._recovered = None
        logger.warning("journal %s: request %r cannot be read back, set aside in the "
                       "quarantine: %r", self.path, rid, why)

    # --- the writer's hooks (its thread) --------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """Open the file: lock, WAL, schema; set aside what cannot be read back, prune;
        then the reader."""
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock(path)
        conn = self._conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        _setup(conn, path)
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
        with self._cache:
            self._aside.clear()
            self._recovered = recovered
        logger.info("journal %s open: %d unfinished request(s), %d record(s) quarantined "
                    "now (%d request(s) in the quarantine), %d landed object(s) pruned",
                    path, self._open_requests, len(bad), kept, pruned)
        return conn

    def _before_commit(self, conn: sqlite3.Connection, tally: Counter[str]) -> None:
        """Prune every :data:`PRUNE_EVERY` finished requests, in the batch's transaction
        (a failure costs only the prune)."""
        self._since_prune += tally["finished"]
        if self._since_prune < PRUNE_EVERY:
            return
        self._since_prune = 0
        conn.execute("SAVEPOINT prune")
        try:
            self._prune(conn)
        except sqlite3.Error as err:
            conn.execute("ROLLBACK TO prune")
            logger.warning("journal %s: pruning failed: %s", self.path, err)
        conn.execute("RELEASE prune")

    def _committed(self, tally: Counter[str], operations: int) -> None:
        with self._stats:
            self._open_requests += tally.pop("open", 0)
            self.counts.update(tally)
            self.commits += 1
            self.operations += operations

    def _prune(self, conn: sqlite3.Connection) -> int:
        return records.prune(conn, now=self._clock(), keep_seconds=self.keep_landed_seconds,
                             keep_max=self.keep_landed_max, path=self.path)

    def _disconnect(self) -> None:
        """Close both connections (the writer last: it checkpoints) and the lock."""
        with self._read_lock:
            reader, self._reader = self._reader, None
        with self._cache:
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


# --- the file -----------------------------------------------------------------------------


def _lock(path: Path) -> int:
    """Take ``<path>.lock`` (``flock``): one daemon per journal.  Its descriptor."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JournalError(f"journal {path} is in use by another process "
                           f"(lock {path}.lock)") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _setup(conn: sqlite3.Connection, path: Path) -> None:
    """WAL mode, full synchronous commits, a bounded WAL file."""
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes on a new file
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise JournalError(f"journal {path}: SQLite refused WAL mode (got {mode!r}); "
                           "is it on a network file system?")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT}")
