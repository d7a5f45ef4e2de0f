"""The SQL of each recording, and of the ``landed`` index, in the SQLite journal.

The recordings are functions of the writer's connection and a tally (what
:mod:`trollpush.journal.writer` runs in a batch); :class:`~trollpush.journal.SQLiteJournal`
builds their arguments on the event loop (the encoded bodies) and queues them.  The
look-up of the ``landed`` index runs on either connection: the reader's, or the writer's
inside a batch.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..models import Job, SourceFile, Stat, Upload, UploadResult
from .codec import _i64, _u64
from .protocol import State, _answer, _objects, advance
from .schema import prune_quarantine

logger = logging.getLogger(__name__)

#: a landed row as :func:`land` writes it; and an object: (endpoint, bucket, key)
Row = tuple[Any, ...]
Object = tuple[str, str, str]
#: runs a query, on one connection or the other: its rows
Rows = Callable[[str, Sequence[Any]], list[Any]]

_VACUUM_PAGES = 256  # free pages that make a prune give space back to the file system


def slot(target: str | None) -> str:
    """A job's key within its request (targets have names; a direct job has none)."""
    return "-" if target is None else f"t:{target}"


def accept(c: sqlite3.Connection, tally: Counter[str], row: tuple[str, float, str]) -> None:
    """A requests row, unless the request is open already (its progress stays)."""
    tally[State.ACCEPTED.value] += 1
    if c.execute("INSERT INTO requests (id, accepted_at, body) VALUES (?, ?, ?) "
                 "ON CONFLICT (id) DO NOTHING", row).rowcount:
        tally["open"] += 1


def put_job(c: sqlite3.Connection, tally: Counter[str], job: Job, body: str, state: State,
            *, reason: str | None = None, results: str | None = None) -> State | None:
    """Record ``state`` for the job; the state it is in now, or None when its request is
    not open."""
    tally[state.value] += 1
    key = (job.request.id, slot(job.target))
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


def transferring(c: sqlite3.Connection, tally: Counter[str], job: Job, body: str) -> None:
    if put_job(c, tally, job, body, State.TRANSFERRING) is State.TRANSFERRING:
        c.executemany("DELETE FROM landed WHERE endpoint = ? AND bucket = ? AND key = ?",
                      _objects(job))


def multipart_started(c: sqlite3.Connection, tally: Counter[str], job: Job, body: str,
                      upload: Upload, upload_id: str, part_size: int | None,
                      st: tuple[int, int, int] | None) -> None:
    tally["multipart_started"] += 1
    where = (job.request.id, slot(job.target), upload.bucket, upload.key)
    known = c.execute("SELECT state FROM jobs WHERE request_id = ? AND slot = ?",
                      where[:2]).fetchone()
    if known is None and put_job(c, tally, job, body, State.TRANSFERRING) is None:
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
              (*where, job.endpoint, upload_id, part_size, *(st or (None, None, None))))


def part_done(c: sqlite3.Connection, tally: Counter[str], job: Job, upload: Upload,
              number: int, etag: str, checksum: str | None) -> None:
    tally["part_done"] += 1
    where = (job.request.id, slot(job.target), upload.bucket, upload.key)
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


def landed_rows(job: Job, results: tuple[UploadResult, ...], now: float
                ) -> tuple[list[Row], list[Object]]:
    """The landed rows the results make, and the objects they leave unknown."""
    index: list[Row] = []
    forget: list[Object] = []
    for r in results:
        obj = (job.endpoint, r.upload.bucket, r.upload.key)
        if r.ok and r.source_stat is not None:
            size, mtime, ino = r.source_stat
            f = r.upload.source
            index.append((*obj, size, mtime, _i64(ino), now, r.size, r.etag, r.checksum,
                          r.checksum_algorithm, r.parts, f.uri, str(f.path), f.uid,
                          r.part_size, r.version_id, r.storage_class, r.encryption,
                          r.written_with))
        else:
            forget.append(obj)
    return index, forget


def uploaded(c: sqlite3.Connection, tally: Counter[str], job: Job, body: str, rbody: str,
             index: list[Row], forget: list[Object], state: State) -> None:
    if put_job(c, tally, job, body, state, results=rbody) is not None:
        c.execute("DELETE FROM parts WHERE multipart IN (SELECT seq FROM multipart "
                  "WHERE request_id = ? AND slot = ?)", (job.request.id, slot(job.target)))
        c.execute("DELETE FROM multipart WHERE request_id = ? AND slot = ?",
                  (job.request.id, slot(job.target)))
    land(c, index, forget)


def land(c: sqlite3.Connection, index: list[Row], forget: list[Object]) -> None:
    c.executemany("INSERT OR REPLACE INTO landed (endpoint, bucket, key, st_size, "
                  "st_mtime_ns, st_ino, at, size, etag, checksum, checksum_algorithm, "
                  "parts, uri, path, uid, part_size, version_id, storage_class, encryption, "
                  "options) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                  "?)", index)
    if forget:
        c.executemany("DELETE FROM landed WHERE endpoint = ? AND bucket = ? AND key = ?",
                      forget)


def request_failed(c: sqlite3.Connection, tally: Counter[str], rid: str, reason: str) -> None:
    tally[State.FAILED.value] += 1
    c.execute("UPDATE requests SET failure = ? WHERE id = ?", (reason, rid))


def finished(c: sqlite3.Connection, tally: Counter[str], rid: str) -> None:
    tally["finished"] += 1
    c.execute("DELETE FROM parts WHERE multipart IN "
              "(SELECT seq FROM multipart WHERE request_id = ?)", (rid,))
    c.execute("DELETE FROM multipart WHERE request_id = ?", (rid,))
    c.execute("DELETE FROM jobs WHERE request_id = ?", (rid,))
    if c.execute("DELETE FROM requests WHERE id = ?", (rid,)).rowcount:
        tally["open"] -= 1


# --- the landed index ---------------------------------------------------------------------


def landed(rows_of: Rows, endpoint: str, bucket: str, key: str, since: float,
           stat: Stat | None = None) -> UploadResult | None:
    """What landed at the object at ``since`` or later (with ``stat``: that file only)."""
    rows = rows_of("SELECT size, etag, checksum, checksum_algorithm, parts, uri, path, "
                   "uid, part_size, version_id, storage_class, encryption, options, "
                   "st_size, st_mtime_ns, st_ino FROM landed WHERE "
                   "endpoint = ? AND bucket = ? AND key = ? AND at >= ?",
                   (endpoint, bucket, key, since))
    if not rows:
        return None
    (rsize, etag, checksum, algorithm, parts, uri, path, uid, part_size, version_id,
     storage_class, encryption, options, *st) = rows[0]
    recorded = (st[0], st[1], _u64(st[2]))
    if stat is not None and recorded != tuple(stat):
        return None
    upload = Upload(SourceFile(uri=uri, path=Path(path), uid=uid), bucket, key)
    return _answer(upload, rsize, etag, checksum, algorithm, parts, recorded, part_size,
                   version_id=version_id, storage_class=storage_class,
                   encryption=encryption, written_with=options)


def prune(conn: sqlite3.Connection, *, now: float, keep_seconds: float, keep_max: int,
          path: Path) -> int:
    """Forget landed objects beyond the retention window or the count (and quarantined
    rows past theirs); give space back when much is free.  How many objects."""
    n = int(conn.execute("DELETE FROM landed WHERE at < ?", (now - keep_seconds,)).rowcount)
    n += int(conn.execute("DELETE FROM landed WHERE rowid IN (SELECT rowid FROM landed "
                          "ORDER BY at DESC, rowid DESC LIMIT -1 OFFSET ?)",
                          (keep_max,)).rowcount)
    aside = prune_quarantine(conn, now)
    if aside:
        logger.info("journal %s: %d quarantined row(s) pruned", path, aside)
    if conn.execute("PRAGMA freelist_count").fetchone()[0] > _VACUUM_PAGES:
        conn.execute("PRAGMA incremental_vacuum").fetchall()
    if n:
        logger.info("journal %s: %d landed object(s) pruned", path, n)
    return n
