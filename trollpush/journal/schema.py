"""The SQLite journal's schema, its upgrades, and the quarantine of unreadable records.

Kept apart from :mod:`trollpush.journal.sqlite` (the writer thread and the records it
writes): everything here runs on the writer's connection while the journal opens, before
any reader exists.

A record that cannot be read back (a damaged file, a hand edit, a record from another
version) must not stop every other request from resuming.  :func:`sweep` reads every open
request and its jobs exactly as recovery will; a request that fails, or any job of which
fails, is moved whole (its requests, jobs, multipart and parts rows) into the
``quarantine`` table: kept for an operator, never resumed, pruned after
:data:`QUARANTINE_KEEP_SECONDS` or beyond :data:`QUARANTINE_MAX_ROWS` rows.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import JournalError
from ..models import Request
from .codec import UNREADABLE, _job_record, _request, unreadable

logger = logging.getLogger(__name__)

#: the SQLite schema this version writes (``PRAGMA user_version``)
SCHEMA_VERSION = 3
#: quarantined rows are kept this long for an operator to look at
QUARANTINE_KEEP_SECONDS = 30 * 86400
#: and at most this many (the newest): a bound on the file, whatever goes wrong
QUARANTINE_MAX_ROWS = 10_000

_QUARANTINE = [
    # body and request_id have no type: kept exactly as they were stored
    """CREATE TABLE quarantine (
        seq INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        source TEXT NOT NULL,
        request_id,
        error TEXT NOT NULL,
        body,
        fields TEXT NOT NULL)""",
    "CREATE INDEX quarantine_at ON quarantine (at)",
]

SCHEMA = [
    """CREATE TABLE requests (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        accepted_at REAL NOT NULL,
        failure TEXT,
        body TEXT NOT NULL)""",
    """CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL,
        slot TEXT NOT NULL,
        target TEXT,
        state TEXT NOT NULL,
        reason TEXT,
        body TEXT NOT NULL,
        results TEXT,
        UNIQUE (request_id, slot))""",
    """CREATE TABLE multipart (
        seq INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL,
        slot TEXT NOT NULL,
        bucket TEXT NOT NULL,
        key TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        upload_id TEXT NOT NULL,
        part_size INTEGER,
        st_size INTEGER,
        st_mtime_ns INTEGER,
        st_ino INTEGER,
        UNIQUE (request_id, slot, bucket, key))""",
    """CREATE TABLE parts (
        multipart INTEGER NOT NULL,
        number INTEGER NOT NULL,
        etag TEXT NOT NULL,
        checksum TEXT,
        PRIMARY KEY (multipart, number)) WITHOUT ROWID""",
    # part_size (v2): the part size a multipart object was uploaded with (NULL: a single
    # PUT, or not recorded); last, where the v1 -> v2 upgrade adds it.  v3 adds what a
    # completion of the object says (version_id, storage_class, encryption) and the
    # fingerprint of the object options it was written with (``options``: '' for none,
    # what every object written before v3 had; NULL: not known)
    """CREATE TABLE landed (
        endpoint TEXT NOT NULL,
        bucket TEXT NOT NULL,
        key TEXT NOT NULL,
        st_size INTEGER NOT NULL,
        st_mtime_ns INTEGER NOT NULL,
        st_ino INTEGER NOT NULL,
        at REAL NOT NULL,
        size INTEGER NOT NULL,
        etag TEXT,
        checksum TEXT,
        checksum_algorithm TEXT,
        parts INTEGER NOT NULL,
        uri TEXT NOT NULL,
        path TEXT NOT NULL,
        uid TEXT NOT NULL,
        part_size INTEGER,
        version_id TEXT,
        storage_class TEXT,
        encryption TEXT,
        options TEXT DEFAULT '',
        PRIMARY KEY (endpoint, bucket, key))""",
    "CREATE INDEX landed_at ON landed (at)",
    *_QUARANTINE,
]

#: statements that take a file from version ``v`` to ``v + 1``; every row stays
_UPGRADES: dict[int, list[str]] = {
    1: [*_QUARANTINE, "ALTER TABLE landed ADD COLUMN part_size INTEGER"],
    2: ["ALTER TABLE landed ADD COLUMN version_id TEXT",
        "ALTER TABLE landed ADD COLUMN storage_class TEXT",
        "ALTER TABLE landed ADD COLUMN encryption TEXT",
        "ALTER TABLE landed ADD COLUMN options TEXT DEFAULT ''"],
}


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Create the schema in a new file, or upgrade an older one in one transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise JournalError(f"journal {path} has schema version {version}; this "
                           f"trollpush knows versions up to {SCHEMA_VERSION}")
    if version == 0:
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables:
            raise JournalError(f"{path} is not a trollpush journal (it has tables but "
                               "no schema version)")
        steps = SCHEMA
    else:
        steps = [s for v in range(version, SCHEMA_VERSION) for s in _UPGRADES[v]]
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in steps:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if version:
        logger.info("journal %s: schema upgraded from version %d to %d", path, version,
                    SCHEMA_VERSION)


# --- quarantine ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Quarantined:
    """One row set aside: where it came from, why, and what it held."""

    seq: int
    at: float  # wall clock when it was set aside
    source: str  # the table it came from: requests, jobs, multipart or parts
    request_id: Any  # as stored (text, unless the damage changed that too)
    error: str  # why its request could not be read back
    body: Any  # the raw body (requests and jobs rows), as stored
    fields: dict[str, Any]  # the row's other columns (bytes as {"$hex": ...})


# what moves with a request: table, its columns, which rows are the request's
_ROWS = [
    ("requests", ("seq", "id", "accepted_at", "failure", "body"), "id = ?"),
    ("jobs", ("seq", "request_id", "slot", "target", "state", "reason", "body", "results"),
     "request_id = ?"),
    ("multipart", ("seq", "request_id", "slot", "bucket", "key", "endpoint", "upload_id",
                   "part_size", "st_size", "st_mtime_ns", "st_ino"), "request_id = ?"),
    ("parts", ("multipart", "number", "etag", "checksum"),
     "multipart IN (SELECT seq FROM multipart WHERE request_id = ?)"),
]


def _jsonable(value: Any) -> Any:
    return {"$hex": value.hex()} if isinstance(value, bytes) else value


def set_aside(conn: sqlite3.Connection, rid: Any, error: str, now: float) -> bool:
    """Move every row of request ``rid`` into the quarantine (in the caller's
    transaction); whether there was a request row."""
    for table, columns, where in _ROWS:
        rows = conn.execute(f"SELECT {', '.join(columns)} FROM {table} WHERE {where}",
                            (rid,)).fetchall()
        for row in rows:
            values = dict(zip(columns, row, strict=True))
            body = values.pop("body", None)
            fields = json.dumps({c: _jsonable(v) for c, v in values.items()})
            conn.execute("INSERT INTO quarantine (at, source, request_id, error, body, fields) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (now, table, rid, error, body, fields))
    for table, _, where in reversed(_ROWS[1:]):  # parts first: they name their multipart
        conn.execute(f"DELETE FROM {table} WHERE {where}", (rid,))
    return bool(conn.execute("DELETE FROM requests WHERE id = ?", (rid,)).rowcount)


def sweep(conn: sqlite3.Connection, now: float
          ) -> tuple[list[Request], list[tuple[Any, str]]]:
    """Read every open request and its jobs as recovery will; set aside each request that
    fails (in the caller's transaction).  Returns the requests that read back, oldest
    first (what :meth:`unfinished` answers), and (request id, why) of those set aside."""
    good: list[Request] = []
    bad: list[tuple[Any, str]] = []
    for rid, at, body in conn.execute("SELECT id, accepted_at, body FROM requests "
                                      "ORDER BY accepted_at, seq"):
        try:
            request = _request(rid, at, body)
        except UNREADABLE as err:
            bad.append((rid, f"requests row: {unreadable(err)}"))
            continue
        for slot, target, state, reason, jbody, results in conn.execute(
                "SELECT slot, target, state, reason, body, results FROM jobs "
                "WHERE request_id = ? ORDER BY seq", (rid,)):
            try:
                _job_record(request, target, state, reason, jbody, results)
            except UNREADABLE as err:
                bad.append((rid, f"jobs row {slot!r}: {unreadable(err)}"))
                break
        else:
            good.append(request)
    # rows whose request row is gone (its id damaged): a later request with that id
    # must not inherit them
    bad += [(rid, "jobs or multipart rows without their request row") for (rid,) in
            conn.execute("SELECT request_id FROM jobs WHERE request_id NOT IN "
                         "(SELECT id FROM requests) UNION SELECT request_id FROM multipart "
                         "WHERE request_id NOT IN (SELECT id FROM requests)").fetchall()]
    for rid, why in bad:
        set_aside(conn, rid, why, now)
    return good, bad


def prune_quarantine(conn: sqlite3.Connection, now: float) -> int:
    """Forget quarantined rows older than the keep time, or beyond the count."""
    n = int(conn.execute("DELETE FROM quarantine WHERE at < ?",
                         (now - QUARANTINE_KEEP_SECONDS,)).rowcount)
    n += int(conn.execute("DELETE FROM quarantine WHERE seq IN (SELECT seq FROM quarantine "
                          "ORDER BY at DESC, seq DESC LIMIT -1 OFFSET ?)",
                          (QUARANTINE_MAX_ROWS,)).rowcount)
    return n


def quarantined(rows: list[Any]) -> list[Quarantined]:
    """Rows of ``SELECT seq, at, source, request_id, error, body, fields FROM quarantine``."""
    out = []
    for seq, at, source, rid, error, body, fields in rows:
        try:
            extra = json.loads(fields)
        except ValueError:
            extra = {"$raw": fields}
        out.append(Quarantined(seq, at, source, rid, error, body, extra))
    return out
