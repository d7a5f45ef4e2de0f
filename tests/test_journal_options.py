"""The journal keeps each upload's object options (an SSE-C key by its name only), the
new result fields, and what the landed index needs to answer a completion; the schema
upgrade from version 2 keeps every row."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from trollpush import keys
from trollpush.journal import SCHEMA_VERSION, SQLiteJournal, State
from trollpush.journal.codec import (
    UNREADABLE,
    _job,
    _job_body,
    _request_body,
    _results,
    _results_body,
)
from trollpush.journal.schema import _UPGRADES
from trollpush.models import NO_OPTIONS, Job, ObjectOptions, SseCKey, UploadResult

from .helpers import assert_twin_of_a_new_journal
from .test_journal import (  # noqa: F401 - fixtures
    T0,
    AnyJournal,
    Clock,
    clock,
    journal,
    kind,
    make_job,
    make_request,
)
from .test_quarantine import V1_SCHEMA

KEY = os.urandom(32)


def _full(sse_c: SseCKey) -> ObjectOptions:
    return ObjectOptions(
        storage_class="STANDARD_IA", content_type="application/x-hdf5",
        cache_control="no-cache", content_disposition="inline",
        metadata=(("platform", "NOAA-20"), ("none", "none")), tags=(("level", "l1b"),),
        encryption="sse-c", sse_c=sse_c, acl="private", if_none_match=True)


def _job_with(options: ObjectOptions, n: int = 1) -> Job:
    job = make_job(make_request(n, files=2))
    first, second = job.uploads
    return replace(job, uploads=(replace(first, options=options), second))


def _results_of(job: Job) -> tuple[UploadResult, ...]:
    first, second = job.uploads
    return (UploadResult(first, 70_000, 2, 0.5, etag='"abc-3"', checksum="AAAAAA==-3",
                         checksum_algorithm="crc32c", parts=3, source_stat=(70_000, 1, 2),
                         version_id="3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY", encryption="sse-c",
                         storage_class="STANDARD_IA", written_with=first.options.fingerprint),
            UploadResult(second, 70_000, 1, 0.1, etag='"def"', checksum="BBBBBB==",
                         checksum_algorithm="crc32c", source_stat=(70_000, 3, 4),
                         encryption="none", written_with=None, already_there=True))


def _secret_forms(key: bytes) -> list[bytes]:
    return [key, base64.b64encode(key), key.hex().encode()]


def test_options_round_trip_with_the_key_by_its_name_only() -> None:
    sse_c = keys.remember(KEY)
    job = _job_with(_full(sse_c))
    body = _job_body(job)
    assert sse_c.md5 in body
    assert all(form.decode("latin-1") not in body for form in _secret_forms(KEY))
    back = _job(job.request, job.target, body)
    assert back.uploads[0].options == job.uploads[0].options
    assert back.uploads[0].options.sse_c is not None
    assert back.uploads[0].options.sse_c.key == KEY  # found again in the key ring
    assert back.uploads[1].options is NO_OPTIONS  # nothing recorded for the defaults


def test_a_key_not_loaded_reads_back_without_its_bytes() -> None:
    name = keys.name_of(os.urandom(32))  # never remembered in this process
    job = _job_with(ObjectOptions(encryption="sse-c", sse_c=SseCKey(name)))
    back = _job(job.request, job.target, _job_body(job)).uploads[0].options
    assert back.sse_c == SseCKey(name) and back.sse_c.key is None
    assert back.missing_key == name  # the engine fails it with bad_object_options


def test_a_job_recorded_before_object_options_reads_back_with_none() -> None:
    job = make_job(make_request(1))
    body = _job_body(job)
    assert '"options"' not in body and body.count("[0,") == 1  # [source, bucket, key]
    back = _job(job.request, job.target, body)
    assert back.uploads[0].options == ObjectOptions()


@pytest.mark.parametrize("damage", [
    {"storage_class": 3}, {"metadata": [["a"]]}, {"encryption": "rot13"},
    {"if_none_match": "yes"}, {"sse_c": None}, {"colour": "blue"}])
def test_damaged_options_are_unreadable(damage: dict[str, Any]) -> None:
    job = make_job(make_request(1))
    body = _job_body(job).replace('"out/g1_0.h5"]', f'"out/g1_0.h5",{json.dumps(damage)}]')
    assert body != _job_body(job)
    with pytest.raises(UNREADABLE):
        _job(job.request, job.target, body)


def test_results_round_trip_with_the_new_fields() -> None:
    job = _job_with(_full(keys.remember(KEY)))
    results = _results_of(job)
    back = _results(job, _results_body(job, results))
    assert back == results
    old = _results_body(job, results).replace(',"version_id":"3HL4kqtJlcpXroDTDmJ+rmSpXd3'
                                              'dIbrHY","storage_class":"STANDARD_IA",'
                                              '"encryption":"sse-c"', "")
    assert _results(job, old)[0].version_id is None  # a record from before


async def test_the_journal_keeps_options_and_landed_fields(
        journal: AnyJournal) -> None:  # noqa: F811 - the fixture
    """Through the whole journal: the job's options come back; the landed index answers
    what a completion needs and what the object was written with; no key bytes on disk."""
    sse_c = keys.remember(KEY)
    job = _job_with(_full(sse_c))
    results = _results_of(job)
    await journal.accepted(job.request)
    await journal.transferring(job)
    (record,) = journal.jobs(job.request)
    assert record.job.uploads[0].options == job.uploads[0].options
    await journal.uploaded(job, results)
    (record,) = journal.jobs(job.request)
    assert record.state is State.UPLOADED and record.results == results
    first = journal.landed("default", "bucket", job.uploads[0].key)
    assert first is not None
    assert (first.version_id, first.storage_class, first.encryption, first.written_with) == (
        "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY", "STANDARD_IA", "sse-c",
        job.uploads[0].options.fingerprint)
    second = journal.landed("default", "bucket", job.uploads[1].key)
    assert second is not None and second.written_with is None  # found there: not known
    if isinstance(journal, SQLiteJournal):
        await journal.close()
        data = b"".join(p.read_bytes() for p in journal.path.parent.iterdir() if p.is_file())
        assert sse_c.md5.encode() in data
        assert not any(form in data for form in _secret_forms(KEY))


def test_fingerprints_follow_what_the_object_is_given() -> None:
    assert ObjectOptions().fingerprint == "" == ObjectOptions(checksum="sha256").fingerprint
    assert ObjectOptions(if_none_match=True).fingerprint == ""  # how, not what
    a = ObjectOptions(storage_class="STANDARD_IA")
    assert a.fingerprint and a.fingerprint == replace(a, checksum="md5").fingerprint
    assert a.fingerprint != replace(a, storage_class="GLACIER_IR").fingerprint
    assert a.fingerprint != replace(a, tags=(("a", "b"),)).fingerprint
    one, two = keys.remember(os.urandom(32)), keys.remember(os.urandom(32))
    assert (ObjectOptions(encryption="sse-c", sse_c=one).fingerprint
            != ObjectOptions(encryption="sse-c", sse_c=two).fingerprint)


# --- the schema upgrade from version 2 ------------------------------------------------------


def _v2_file(path: Path, job: Job) -> None:
    """A version 2 journal (version 1's tables, upgraded as trollpush did) with a landed
    row and a job recorded before object options, written with plain SQL."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        for statement in [*V1_SCHEMA, *_UPGRADES[1]]:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 2")
        conn.execute("INSERT INTO requests (id, accepted_at, body) VALUES (?, ?, ?)",
                     (job.request.id, job.request.accepted_at, _request_body(job.request)))
        conn.execute("INSERT INTO jobs (request_id, slot, target, state, body) VALUES "
                     "(?, 't:viirs', 'viirs', 'transferring', ?)",
                     (job.request.id, _job_body(job)))
        conn.execute("INSERT INTO landed VALUES ('default', 'bucket', 'old.h5', 7, 8, 9, ?, "
                     "70000, '\"abc\"', 'AAAAAA==', 'crc32c', 0, '/in/old.h5', '/in/old.h5', "
                     "'old.h5', NULL)", (T0,))
    conn.close()


async def test_a_version_2_journal_is_upgraded_with_every_row(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    job = make_job(make_request(1))
    _v2_file(path, job)
    j = SQLiteJournal(path, clock=Clock())
    await j.open()
    try:
        (request,) = j.unfinished()
        (record,) = j.jobs(request)
        assert record.job.uploads[0].options == ObjectOptions()  # recorded before options
        hit = j.landed("default", "bucket", "old.h5", (7, 8, 9))
        assert hit is not None and hit.etag == '"abc"' and hit.size == 70_000
        # written before object options: with none, so a file with none is still reused
        assert hit.written_with == "" == ObjectOptions(checksum="crc32c").fingerprint
        assert (hit.version_id, hit.storage_class, hit.encryption) == (None, None, None)
        assert j.quarantined() == []
    finally:
        await j.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        assert conn.execute("SELECT count(*) FROM landed").fetchone()[0] == 1
    conn.close()
    await assert_twin_of_a_new_journal(path, tmp_path / "new.sqlite")
