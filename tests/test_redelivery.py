"""A request that may have been done before (a JetStream message delivered again): the
engine looks before writing, on real stores (moto and SeaweedFS).

The object already there with the same size and checksum is the answer, and nothing is
written (no PUT, no part: counted on the client's own send events, and, on a versioned
moto bucket, no new version); another object there is overwritten (the request asks for
this file there) unless the upload says ``if_none_match``; a request that was not
delivered again sends no ``If-None-Match`` (unless configured).
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from posttroll.message import Message

from trollpush import stats
from trollpush.journal import MemoryJournal
from trollpush.messages import build_request
from trollpush.models import ObjectOptions, Upload
from trollpush.transfer import TransferEngine

from .helpers import started_engine, upload_of
from .test_flow import FakeEngine, config, pipeline
from .test_object_store import SMALL_PARTS, MiB, Store, _client

#: the store calls that write (an attempt each), by botocore's operation name
WRITES = ("PutObject", "UploadPart", "CreateMultipartUpload", "CompleteMultipartUpload")


@pytest.fixture(params=["moto", "seaweed"])
def store(request: pytest.FixtureRequest) -> Store:
    """A fresh bucket on moto (versioned: a second write shows as a new version) or on
    SeaweedFS."""
    if request.param == "moto":
        s3 = request.getfixturevalue("s3")
        name = f"tp-{uuid.uuid4().hex[:16]}"
        s3.create_bucket(Bucket=name)
        s3.put_bucket_versioning(Bucket=name,
                                 VersioningConfiguration={"Status": "Enabled"})
        return Store("moto", request.getfixturevalue("s3_url"), name, s3)
    url = request.getfixturevalue("seaweed")
    return Store("seaweed", url, request.getfixturevalue("weed_bucket"), _client(url))


def _comparable(store: Store, size: int) -> dict[str, Any]:
    """A checksum the store reports back: moto 5.2 keeps none of a single PUT (the
    ETag of one is its MD5: md5 then); SeaweedFS keeps either in S3's form."""
    return {"checksum": "md5"} if store.name == "moto" and size < 5 * MiB else {}


class Calls:
    """The store calls an engine's client sends (every attempt), by operation, and the
    If-None-Match header each write carried."""

    def __init__(self, engine: TransferEngine) -> None:
        self.sent: Counter[str] = Counter()
        self.conditional: Counter[str] = Counter()
        engine.client("default").meta.events.register("before-send.s3.*", self._seen)

    def _seen(self, request: Any, event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        self.sent[operation] += 1
        if request.headers.get("If-None-Match"):
            self.conditional[operation] += 1

    @property
    def writes(self) -> int:
        return sum(self.sent[op] for op in WRITES)


async def _upload(store: Store, upload: Upload, *, look_first: bool, **config: Any
                  ) -> tuple[Any, Calls, TransferEngine]:
    engine = await started_engine(store.url, **config)
    calls = Calls(engine)
    try:
        return await engine.upload(upload, "default", look_first=look_first), calls, engine
    finally:
        await engine.close()


def _file(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def _versions(store: Store, key: str) -> int:
    if store.name != "moto":
        return 1
    found = store.s3.list_object_versions(Bucket=store.bucket, Prefix=key)
    return len(found.get("Versions", []))


@pytest.mark.parametrize("size", [70_000, 11 * MiB], ids=["single", "multipart"])
async def test_a_redelivered_upload_of_an_object_already_there_writes_nothing(
        store: Store, tmp_path: Path, size: int) -> None:
    path = _file(tmp_path, "granule.h5", size)
    upload = upload_of(path, store.bucket, "o/granule.h5")
    config = {**SMALL_PARTS, **_comparable(store, size)}
    first, _, _ = await _upload(store, upload, look_first=False, **config)
    assert first.ok and not first.already_there, first.error
    before = store.s3.head_object(Bucket=store.bucket, Key="o/granule.h5")
    again, calls, engine = await _upload(store, upload, look_first=True, **config)
    assert again.ok, again.error
    assert again.already_there
    assert calls.writes == 0, calls.sent  # no PUT, no part, no multipart upload at all
    assert calls.sent["HeadObject"] == 1  # one look, compared as it was
    assert again.etag == first.etag and again.checksum == first.checksum
    assert again.parts == first.parts
    after = store.s3.head_object(Bucket=store.bucket, Key="o/granule.h5")
    assert after["ETag"] == before["ETag"] and after["LastModified"] == before["LastModified"]
    assert _versions(store, "o/granule.h5") == 1
    assert again.version_id == first.version_id
    # counted apart from the uploads that wrote something
    assert engine.stats.count(stats.UPLOADS, outcome="already_there") == 1
    assert engine.completed == 0
    assert engine.stats.count(stats.BYTES) == 0


@pytest.mark.parametrize("size", [70_000, 11 * MiB], ids=["single", "multipart"])
async def test_a_redelivered_upload_over_another_object_overwrites_it(
        store: Store, tmp_path: Path, size: int) -> None:
    """An earlier object that is not this file (another version of it): the request asks
    for this file there, so it is written over that object."""
    store.s3.put_object(Bucket=store.bucket, Key="o/granule.h5", Body=os.urandom(size))
    path = _file(tmp_path, "granule.h5", size)
    upload = upload_of(path, store.bucket, "o/granule.h5")
    result, calls, engine = await _upload(store, upload, look_first=True, **SMALL_PARTS,
                                          **_comparable(store, size))
    assert result.ok and not result.already_there, result.error
    got = store.s3.get_object(Bucket=store.bucket, Key="o/granule.h5")["Body"].read()
    assert got == path.read_bytes()
    assert _versions(store, "o/granule.h5") == (2 if store.name == "moto" else 1)
    # looked first: nothing sent under the condition, then written plainly
    assert calls.sent["HeadObject"] == 1
    assert calls.conditional["PutObject"] == calls.conditional["CompleteMultipartUpload"] == 0
    assert engine.completed == 1
    assert store.s3.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []


@pytest.mark.parametrize("size", [70_000, 11 * MiB], ids=["single", "multipart"])
async def test_a_redelivered_upload_of_an_object_not_there_is_written_once_conditionally(
        store: Store, tmp_path: Path, size: int) -> None:
    path = _file(tmp_path, "granule.h5", size)
    result, calls, engine = await _upload(
        store, upload_of(path, store.bucket, "o/granule.h5"), look_first=True,
        **SMALL_PARTS, **_comparable(store, size))
    assert result.ok and not result.already_there, result.error
    assert store.s3.get_object(Bucket=store.bucket,
                               Key="o/granule.h5")["Body"].read() == path.read_bytes()
    # (a copy another writer landed meanwhile would win, and be compared)
    op = "PutObject" if size < 5 * MiB else "CompleteMultipartUpload"
    assert calls.conditional[op] == calls.sent[op] == 1
    assert engine.completed == 1 and _versions(store, "o/granule.h5") == 1


@pytest.mark.parametrize("size", [70_000, 11 * MiB], ids=["single", "multipart"])
async def test_an_upload_not_delivered_again_is_sent_as_before(
        store: Store, tmp_path: Path, size: int) -> None:
    """No look, no If-None-Match: the firehose's path is untouched."""
    store.s3.put_object(Bucket=store.bucket, Key="o/granule.h5", Body=b"older")
    path = _file(tmp_path, "granule.h5", size)
    result, calls, _ = await _upload(store, upload_of(path, store.bucket, "o/granule.h5"),
                                     look_first=False, **SMALL_PARTS)
    assert result.ok and not result.already_there, result.error
    assert calls.sent["HeadObject"] == 0 and sum(calls.conditional.values()) == 0
    assert calls.writes == (1 if size < 5 * MiB else 1 + 3 + 1)


async def test_if_none_match_configured_keeps_its_meaning_when_redelivered(
        store: Store, tmp_path: Path) -> None:
    """The user's ``if_none_match: true`` wins: another object there fails ``exists``,
    never overwritten; and the look first spares the body."""
    store.s3.put_object(Bucket=store.bucket, Key="o/granule.h5", Body=b"someone else's")
    path = _file(tmp_path, "granule.h5", 70_000)
    upload = replace(upload_of(path, store.bucket, "o/granule.h5"),
                     options=ObjectOptions(if_none_match=True))
    result, calls, _ = await _upload(store, upload, look_first=True,
                                     **_comparable(store, 70_000))
    assert result.reason == "exists", result
    assert calls.writes == 0
    got = store.s3.get_object(Bucket=store.bucket, Key="o/granule.h5")["Body"].read()
    assert got == b"someone else's"


async def test_a_store_without_a_checksum_to_compare_gets_the_file_again(
        s3_url: str, s3: Any, bucket: str, tmp_path: Path) -> None:
    """moto keeps no CRC32C of a single PUT: nothing to compare with, so the file is
    written again rather than called already there (never a false "done")."""
    path = _file(tmp_path, "granule.h5", 70_000)
    store = Store("moto", s3_url, bucket, s3)
    upload = upload_of(path, bucket, "o/granule.h5")
    assert (await _upload(store, upload, look_first=False))[0].ok
    again, calls, _ = await _upload(store, upload, look_first=True)
    assert again.ok and not again.already_there, again.error
    assert calls.sent["HeadObject"] == 1  # looked: there, but not comparable
    assert calls.sent["PutObject"] == 1 and sum(calls.conditional.values()) == 0


# --- the pipeline passes it ---------------------------------------------------------------


def _request(redelivered: bool) -> Any:
    r = build_request(Message("/new/x", "file", {"uri": "/data/granule.h5"}),
                      origin="jetstream", check=False)
    return replace(r, redelivered=redelivered)


@pytest.mark.parametrize("redelivered", [False, True])
async def test_the_pipeline_asks_the_engine_to_look_first_only_for_a_redelivered_request(
        redelivered: bool) -> None:
    engine = FakeEngine()
    p, announcer = pipeline(config(), engine, MemoryJournal())
    r = _request(redelivered)
    await p.journal.accepted(r)
    await p.run(r)
    assert engine.looked == [redelivered]
    assert [m.type for m in announcer.out] == ["file"]
