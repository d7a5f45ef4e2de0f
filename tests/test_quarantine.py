"""A journal record that cannot be read back is set aside; every other request resumes.

Real SQLite files, damaged with ``sqlite3`` directly between runs (and once while open),
and a real daemon that starts from such a journal and finishes the good requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from trollpush.config import parse_config
from trollpush.errors import JournalError
from trollpush.journal import SCHEMA_VERSION, MultipartState, SQLiteJournal, State
from trollpush.journal.codec import _job_body, _request_body, _results_body
from trollpush.messages import build_request, new_message
from trollpush.models import Request
from trollpush.route import Router

from .helpers import assert_twin_of_a_new_journal, running_daemon, wait_until
from .test_journal import T0, Clock, fields, make_job, make_request, make_result, tables

DAY = 86400.0

#: what each kind of damage does to a record: (table, the request it hits, SQL)
DAMAGE = {
    "request body not JSON": ("requests", 2, "UPDATE requests SET body = substr(body, 1, 30) "
                              "WHERE id = ?"),
    "request key missing": ("requests", 2, "UPDATE requests SET body = "
                            "json_remove(body, '$.subject') WHERE id = ?"),
    "request column type": ("requests", 2, "UPDATE requests SET accepted_at = 'yesterday' "
                            "WHERE id = ?"),
    "job key missing": ("jobs", 1, "UPDATE jobs SET body = json_remove(body, '$.uploads') "
                        "WHERE request_id = ?"),
    "job type change": ("jobs", 1, "UPDATE jobs SET body = json_set(body, '$.uploads', 5) "
                        "WHERE request_id = ?"),
    "job state unknown": ("jobs", 1, "UPDATE jobs SET state = 'exploded' WHERE request_id = ?"),
    "job results damaged": ("jobs", 3, "UPDATE jobs SET results = '[{\"upload\": 0}]' "
                            "WHERE request_id = ?"),
}


async def _three_requests(path: Path, clock: Clock) -> list[Request]:
    """r1 transferring with a multipart upload and a part, r2 only accepted, r3 uploaded
    (not announced); closed."""
    j = SQLiteJournal(path, clock=clock)
    await j.open()
    r1, r2, r3 = make_request(1), make_request(2), make_request(3, files=2)
    for r in (r1, r2, r3):
        await j.accepted(r)
    j1, j3 = make_job(r1), make_job(r3, prefix="p")
    await j.transferring(j1)
    await j.multipart_started(j1, j1.uploads[0], "U1", part_size=5 << 20,
                              source_stat=(1, 2, 3))
    await j.part_done(j1, j1.uploads[0], 1, '"e1"', "c1")
    await j.uploaded(j3, tuple(make_result(u, (7, 8, n)) for n, u in enumerate(j3.uploads)))
    await j.close()
    return [r1, r2, r3]


def _damage(path: str | Path, sql: str, rid: str) -> None:
    with sqlite3.connect(path) as conn:
        assert conn.execute(sql, (rid,)).rowcount == 1
    conn.close()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "quarantine" in r.getMessage()]


@pytest.mark.parametrize("damage", list(DAMAGE))
async def test_an_unreadable_record_is_set_aside_and_the_others_resume(
        damage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    table, n, sql = DAMAGE[damage]
    path, clock = tmp_path / "journal.sqlite", Clock()
    requests = await _three_requests(path, clock)
    bad = requests[n - 1]
    good = [r for r in requests if r is not bad]
    _damage(path, sql, bad.id)
    before = tables(path)
    with sqlite3.connect(path) as conn:
        raw = conn.execute("SELECT body FROM requests WHERE id = ?", (bad.id,)).fetchone()[0]
    conn.close()

    caplog.set_level(logging.INFO, logger="trollpush")
    j = SQLiteJournal(path, clock=clock)
    await j.open()  # used to succeed, then unfinished() raised for everybody
    try:
        back = j.unfinished()
        assert [fields(r) for r in back] == [fields(r) for r in good]
        for r in back:  # every job of every other request reads back too
            for record in j.jobs(r):
                assert record.job.request is r
        if bad.id != "req00001":  # r1's multipart progress is still there to resume
            (rec1,) = j.jobs(back[0])
            assert j.multipart(rec1.job, rec1.job.uploads[0]) == MultipartState(
                "U1", {1: ('"e1"', "c1")}, 5 << 20, (1, 2, 3))
        reread = j.unfinished()  # read from the file this time: the same
        assert [fields(r) for r in reread] == [fields(r) for r in good]
        assert j.jobs(bad) == [] and j.state(bad.id) == {}

        aside = j.quarantined()
        assert {q.request_id for q in aside} == {bad.id}
        assert all(q.at == T0 for q in aside)
        rows = {"req00001": ["requests", "jobs", "multipart", "parts"],
                "req00002": ["requests"], "req00003": ["requests", "jobs"]}[bad.id]
        assert [q.source for q in aside] == rows  # the whole request, nothing left behind
        assert all(table in q.error for q in aside)  # says which row could not be read
        kept = {q.source: q for q in aside}
        assert kept["requests"].body == raw  # exactly as it was stored
        assert kept["requests"].fields["id"] == bad.id
        after = tables(path)
        assert sum(after[t] for t in ("requests", "jobs", "multipart", "parts")) + \
            after["quarantine"] == sum(before[t] for t in ("requests", "jobs", "multipart",
                                                            "parts"))  # moved, not lost
        assert j.counts["quarantined"] == 1
        assert "2 unfinished request(s), 1 record(s) quarantined" in caplog.text
        logged = _warnings(caplog)
        assert len(logged) == 1 and repr(bad.id) in logged[0]  # once, with why
        assert table in logged[0]
    finally:
        await j.close()

    caplog.clear()
    again = SQLiteJournal(path, clock=clock)
    await again.open()
    try:
        assert [r.id for r in again.unfinished()] == [r.id for r in good]
        assert again.counts["quarantined"] == 0 and _warnings(caplog) == []  # not twice
        assert [q.source for q in again.quarantined()] == rows  # kept for an operator
        assert "0 record(s) quarantined now (1 request(s) in the quarantine)" in caplog.text
    finally:
        await again.close()


async def test_a_damaged_value_cannot_forge_log_lines(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    path, clock = tmp_path / "journal.sqlite", Clock()
    await _three_requests(path, clock)
    forged = "x\n2026-11-21 10:00:00 INFO trollpush: all is well"
    _damage(path, "UPDATE requests SET body = json_set(body, '$.files', ?) WHERE id = "
            "'req00002'", forged)
    caplog.set_level(logging.WARNING, logger="trollpush")
    j = SQLiteJournal(path, clock=clock)
    await j.open()
    await j.close()
    (line,) = _warnings(caplog)
    assert "\n" not in line and "all is well" in line
    assert "body.files" in line and "expected list" in line


async def test_rows_left_without_their_request_are_set_aside_too(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A damaged request id (here: bytes with a newline) orphans its jobs, multipart and
    parts rows: they go to the quarantine as well, so that a later request with that id
    does not inherit them."""
    path, clock = tmp_path / "journal.sqlite", Clock()
    await _three_requests(path, clock)
    _damage(path, "UPDATE requests SET id = CAST(? AS BLOB) WHERE id = 'req00001'",
            "req00001\nFAKE")
    caplog.set_level(logging.WARNING, logger="trollpush")
    j = SQLiteJournal(path, clock=clock)
    await j.open()
    try:
        assert [r.id for r in j.unfinished()] == ["req00002", "req00003"]
        aside = [(q.source, q.request_id) for q in j.quarantined()]
        assert aside == [("requests", b"req00001\nFAKE"), ("jobs", "req00001"),
                         ("multipart", "req00001"), ("parts", "req00001")]
        assert j.counts["quarantined"] == 2
        assert tables(path)["jobs"] == 1 and tables(path)["multipart"] == 0
        logged = _warnings(caplog)
        assert len(logged) == 2 and all("\n" not in line for line in logged)
        await j.accepted(make_request(1))  # the same id again starts afresh
        assert j.jobs(make_request(1)) == []
    finally:
        await j.close()


async def test_a_record_damaged_while_open_is_set_aside_too(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Behind the journal's back (another process writing the file): the read methods
    skip or refuse it and queue its move to the quarantine on the writer thread."""
    path, clock = tmp_path / "journal.sqlite", Clock()
    caplog.set_level(logging.WARNING, logger="trollpush")
    j = SQLiteJournal(path, clock=clock)
    await j.open()
    try:
        r1, r2, r3 = make_request(1), make_request(2), make_request(3)
        for r in (r1, r2, r3):
            await j.accepted(r)
        await j.transferring(make_job(r3))
        _damage(path, "UPDATE requests SET body = '{' WHERE id = ?", r2.id)
        _damage(path, "UPDATE jobs SET state = 'exploded' WHERE request_id = ?", r3.id)
        assert [r.id for r in j.unfinished()] == [r1.id, r3.id]
        assert [r.id for r in j.unfinished()] == [r1.id, r3.id]  # logged and queued once
        with pytest.raises(JournalError, match=r"req00003.*jobs\.state.*set aside"):
            j.jobs(r3)
        await asyncio.wait_for(j._run(lambda c, t: None), 10)  # the queued moves are done
        assert [q.request_id for q in j.quarantined()] == [r2.id, r3.id, r3.id]
        assert j.counts["quarantined"] == 2 and "1 open request(s)" in repr(j)
        assert [r.id for r in j.unfinished()] == [r1.id]
        assert len(_warnings(caplog)) == 2
        await j.finished(r3)  # what the daemon does next with a request it cannot read
        assert len(j.quarantined()) == 3  # the quarantine keeps it
    finally:
        await j.close()


async def test_the_quarantine_is_pruned_after_30_days(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path, clock = tmp_path / "journal.sqlite", Clock()
    await _three_requests(path, clock)
    _damage(path, "UPDATE requests SET body = '[]' WHERE id = ?", "req00002")
    j = SQLiteJournal(path, clock=clock, keep_landed_seconds=0)  # not tied to landed
    await j.open()
    await j.close()
    clock.now += 29 * DAY
    _damage(path, "UPDATE requests SET body = '[]' WHERE id = ?", "req00003")
    await j.open()
    assert {q.request_id for q in j.quarantined()} == {"req00002", "req00003"}
    await j.close()
    clock.now += 2 * DAY  # the first one is 31 days old now
    await j.open()
    assert {q.request_id for q in j.quarantined()} == {"req00003"}
    await j.close()
    monkeypatch.setattr("trollpush.journal.schema.QUARANTINE_MAX_ROWS", 1)  # and bounded in rows
    await j.open()
    assert [q.source for q in j.quarantined()] == ["jobs"]  # the newest row
    assert [r.id for r in j.unfinished()] == ["req00001"]
    await j.close()


# --- the schema upgrade -------------------------------------------------------------------

#: the schema as version 1 wrote it (trollpush before the quarantine): frozen here
V1_SCHEMA = [
    "CREATE TABLE requests (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, "
    "accepted_at REAL NOT NULL, failure TEXT, body TEXT NOT NULL)",
    "CREATE TABLE jobs (seq INTEGER PRIMARY KEY, request_id TEXT NOT NULL, slot TEXT NOT NULL, "
    "target TEXT, state TEXT NOT NULL, reason TEXT, body TEXT NOT NULL, results TEXT, "
    "UNIQUE (request_id, slot))",
    "CREATE TABLE multipart (seq INTEGER PRIMARY KEY, request_id TEXT NOT NULL, "
    "slot TEXT NOT NULL, bucket TEXT NOT NULL, key TEXT NOT NULL, endpoint TEXT NOT NULL, "
    "upload_id TEXT NOT NULL, part_size INTEGER, st_size INTEGER, st_mtime_ns INTEGER, "
    "st_ino INTEGER, UNIQUE (request_id, slot, bucket, key))",
    "CREATE TABLE parts (multipart INTEGER NOT NULL, number INTEGER NOT NULL, "
    "etag TEXT NOT NULL, checksum TEXT, PRIMARY KEY (multipart, number)) WITHOUT ROWID",
    "CREATE TABLE landed (endpoint TEXT NOT NULL, bucket TEXT NOT NULL, key TEXT NOT NULL, "
    "st_size INTEGER NOT NULL, st_mtime_ns INTEGER NOT NULL, st_ino INTEGER NOT NULL, "
    "at REAL NOT NULL, size INTEGER NOT NULL, etag TEXT, checksum TEXT, "
    "checksum_algorithm TEXT, parts INTEGER NOT NULL, uri TEXT NOT NULL, path TEXT NOT NULL, "
    "uid TEXT NOT NULL, PRIMARY KEY (endpoint, bucket, key))",
    "CREATE INDEX landed_at ON landed (at)",
]


def _v1_file(path: Path) -> tuple[Request, Request]:
    """A version 1 journal with a row in every table, written with plain SQL."""
    r1, r2 = make_request(1), make_request(2, files=2)
    j1, j2 = make_job(r1), make_job(r2, "both", prefix="p")
    results = tuple(make_result(u, (7, 8, n)) for n, u in enumerate(j2.uploads))
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        for statement in V1_SCHEMA:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        for r in (r1, r2):
            conn.execute("INSERT INTO requests (id, accepted_at, body) VALUES (?, ?, ?)",
                         (r.id, r.accepted_at, _request_body(r)))
        conn.execute("INSERT INTO jobs (request_id, slot, target, state, body) VALUES "
                     "(?, 't:viirs', 'viirs', 'transferring', ?)", (r1.id, _job_body(j1)))
        conn.execute("INSERT INTO jobs (request_id, slot, target, state, body, results) VALUES "
                     "(?, 't:both', 'both', 'uploaded', ?, ?)",
                     (r2.id, _job_body(j2), _results_body(j2, results)))
        conn.execute("INSERT INTO multipart (request_id, slot, bucket, key, endpoint, upload_id, "
                     "part_size, st_size, st_mtime_ns, st_ino) VALUES "
                     "(?, 't:viirs', 'bucket', ?, 'default', 'U1', ?, 1, 2, 3)",
                     (r1.id, j1.uploads[0].key, 5 << 20))
        conn.execute("INSERT INTO parts VALUES (1, 1, '\"e1\"', 'c1')")
        for n, u in enumerate(j2.uploads):
            conn.execute("INSERT INTO landed VALUES ('default', 'bucket', ?, 7, 8, ?, ?, 70000, "
                         "'\"abc\"', 'AAAAAA==', 'crc32c', 0, ?, ?, ?)",
                         (u.key, n, T0, u.source.uri, str(u.source.path), u.source.uid))
    conn.close()
    return r1, r2


async def test_a_version_1_journal_is_upgraded_with_every_row(tmp_path: Path) -> None:
    path, clock = tmp_path / "journal.sqlite", Clock()
    r1, r2 = _v1_file(path)
    before = tables(path)
    j = SQLiteJournal(path, clock=clock)
    await j.open()
    try:
        back = j.unfinished()
        assert [fields(r) for r in back] == [fields(r1), fields(r2)]
        (rec1,) = j.jobs(back[0])
        assert rec1.state is State.TRANSFERRING
        assert j.multipart(rec1.job, rec1.job.uploads[0]) == MultipartState(
            "U1", {1: ('"e1"', "c1")}, 5 << 20, (1, 2, 3))
        (rec2,) = j.jobs(back[1])
        assert rec2.state is State.UPLOADED and [r.source_stat for r in rec2.results] == [
            (7, 8, 0), (7, 8, 1)]
        hit = j.landed("default", "bucket", rec2.job.uploads[1].key, (7, 8, 1))
        assert hit is not None and hit.etag == '"abc"'
        assert j.quarantined() == [] and j.counts["quarantined"] == 0
    finally:
        await j.close()
    assert tables(path) == {**before, "quarantine": 0}  # every row kept
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        columns = [r[1] for r in conn.execute("PRAGMA table_info(landed)")]
        assert "part_size" in columns  # for the lead's item 4; NULL until it is written
        assert conn.execute("SELECT count(*) FROM landed WHERE part_size IS NULL"
                            ).fetchone()[0] == 2
    conn.close()
    await assert_twin_of_a_new_journal(path, tmp_path / "new.sqlite")


# --- the daemon ---------------------------------------------------------------------------


def test_a_daemon_starts_from_a_damaged_journal_and_finishes_the_rest(
        base_config: dict[str, Any], s3: Any, bucket: str, tmp_path: Path) -> None:
    """Four requests left in the journal by an earlier run; one request body and one job
    body damaged since.  The daemon starts, sets those two aside, and uploads and
    finishes the other two."""
    base_config["journal"] = {"path": str(tmp_path / "journal.sqlite")}
    config = parse_config(base_config)
    journal_path = config.journal.path
    assert journal_path is not None
    paths, requests = [], []
    for i in range(4):
        path = tmp_path / f"NOAA-20_20261121_1005_{12340 + i}.h5"
        path.write_bytes(os.urandom(3000 + i))
        paths.append(path)
        requests.append(build_request(new_message("/new/file/viirs/", "file",
                                                  {"uri": str(path)}), origin="subscribe"))
    jobs = [Router(config).route(r).jobs[0] for r in requests]

    async def earlier_run() -> None:  # accepted all four; two had begun their transfer
        journal = SQLiteJournal(journal_path)
        await journal.open()
        for r in requests:
            await journal.accepted(r)
        for job in jobs[2:]:
            await journal.begin(job, True)
        await journal.close()

    asyncio.run(earlier_run())
    _damage(journal_path, "UPDATE requests SET body = 'garbage' WHERE id = ?",
            requests[1].id)
    _damage(journal_path, "UPDATE jobs SET body = json_set(body, '$.endpoint', 7) "
            "WHERE request_id = ?", requests[3].id)
    with running_daemon(base_config) as daemon:
        wait_until(lambda: daemon.counts["completed"] == 2, 30, "the two good requests")
        assert daemon.counts["resumed"] == 2
        journal = daemon.journal
        assert isinstance(journal, SQLiteJournal)
        assert journal.counts["quarantined"] == 2
        wait_until(lambda: journal.unfinished() == [], 10, "the good requests finished")
        assert {q.request_id for q in journal.quarantined()} == {requests[1].id,
                                                                 requests[3].id}
    for i, job in enumerate(jobs):
        key = job.uploads[0].key
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", [])
        if i in (0, 2):
            assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == \
                paths[i].read_bytes()
        else:
            assert listed == [], f"request {i} was set aside, yet uploaded"
    with sqlite3.connect(journal_path) as conn:
        reasons = [json.loads(f)["slot"] if s == "jobs" else s for s, f in conn.execute(
            "SELECT source, fields FROM quarantine ORDER BY seq")]
    conn.close()
    assert reasons == ["requests", "requests", "t:viirs"]
