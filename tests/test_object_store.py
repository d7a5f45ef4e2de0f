"""Object options at real stores: what an upload gives its object, and conditional writes.

A real TransferEngine against moto and SeaweedFS (no mocked client): a single PUT and a
multipart upload each land with the storage class, headers, metadata, tags, ACL and
encryption asked for, read back with HeadObject and GetObjectTagging; SSE-C is enforced
by SeaweedFS only (moto accepts the key and then serves the object without it);
``if_none_match`` refuses an overwrite (reason ``exists``) and answers the same content
as landed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest

from trollpush import keys
from trollpush.models import ObjectOptions, SseCKey, Upload
from trollpush.transfer import TransferEngine

from .conftest import CREDS
from .helpers import Recorder, started_engine, upload_of, wait_until_async

MiB = 1024 * 1024
#: multipart from 5 MiB, in 5 MiB parts: an 11 MiB file goes in 3 parts
SMALL_PARTS = {"multipart_threshold": 5 * MiB, "multipart_chunksize": 5 * MiB}


@dataclass
class Store:
    name: str  # moto | seaweed
    url: str
    bucket: str
    s3: Any  # a boto3 client on it


def _client(url: str) -> Any:
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture(params=["moto", "seaweed"])
def store(request: pytest.FixtureRequest) -> Store:
    if request.param == "moto":
        return Store("moto", request.getfixturevalue("s3_url"),
                     request.getfixturevalue("bucket"), request.getfixturevalue("s3"))
    url = request.getfixturevalue("seaweed")
    return Store("seaweed", url, request.getfixturevalue("weed_bucket"), _client(url))


@pytest.fixture
def weed(seaweed: str, weed_bucket: str) -> Store:
    return Store("seaweed", seaweed, weed_bucket, _client(seaweed))


def _file(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def _upload(path: Path, bucket: str, key: str, options: ObjectOptions) -> Upload:
    return replace(upload_of(path, bucket, key), options=options)


def _sse_c() -> SseCKey:
    return keys.remember(os.urandom(32))


def _key_params(key: SseCKey) -> dict[str, Any]:
    assert key.key is not None
    return {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": key.key}


async def _one(store: Store, upload: Upload, **config: Any) -> Any:
    engine = await started_engine(store.url, **config)
    try:
        return await engine.upload(upload, "default")
    finally:
        await engine.close()


FULL = ObjectOptions(
    storage_class="STANDARD_IA", content_type="application/x-hdf5",
    cache_control="max-age=3600", content_disposition='attachment; filename="granule.h5"',
    metadata=(("platform", "NOAA-20"), ("orbit", "12345")),
    tags=(("level", "l1b"), ("sensor", "viirs+atms = 2")), encryption="sse-s3",
    acl="bucket-owner-full-control")


# --- what an object is given ----------------------------------------------------------------


@pytest.mark.parametrize("size", [70_000, 11 * MiB], ids=["single", "multipart"])
async def test_an_upload_lands_with_every_option(store: Store, tmp_path: Path,
                                                 size: int) -> None:
    path = _file(tmp_path, "granule.h5", size)
    result = await _one(store, _upload(path, store.bucket, "o/granule.h5", FULL),
                        **SMALL_PARTS)
    assert result.ok, result.error
    assert result.parts == (3 if size > 5 * MiB else 0)
    head = store.s3.head_object(Bucket=store.bucket, Key="o/granule.h5")
    assert head["StorageClass"] == "STANDARD_IA"
    assert head["ContentType"] == "application/x-hdf5"
    assert head["CacheControl"] == "max-age=3600"
    assert head["ContentDisposition"] == 'attachment; filename="granule.h5"'
    assert head["Metadata"] == {"platform": "NOAA-20", "orbit": "12345"}
    assert head["ServerSideEncryption"] == "AES256"
    tags = store.s3.get_object_tagging(Bucket=store.bucket, Key="o/granule.h5")["TagSet"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("level", "l1b"),
                                                            ("sensor", "viirs+atms = 2")]
    # what the completion says
    assert result.etag and result.etag.strip('"') == head["ETag"].strip('"')
    assert result.storage_class == "STANDARD_IA" and result.encryption == "sse-s3"
    assert result.version_id is None  # not a versioned bucket
    assert (store.s3.get_object(Bucket=store.bucket, Key="o/granule.h5")["Body"].read()
            == path.read_bytes())


@pytest.mark.parametrize("size", [70_000, 11 * MiB], ids=["single", "multipart"])
async def test_sse_kms_with_a_key_id(s3_url: str, s3: Any, bucket: str, tmp_path: Path,
                                     size: int) -> None:
    """moto only: it records the KMS key id as given (a key made in its own KMS).  SeaweedFS
    4.48 without a KMS provider configured answers ``aws:kms`` with 500 InternalError
    (its log: "KMS is not configured"), seen here."""
    kms = boto3.client("kms", endpoint_url=s3_url, region_name="us-east-1",
                       aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                       aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"])
    key_id = kms.create_key(Description="trollpush test")["KeyMetadata"]["KeyId"]
    path = _file(tmp_path, "kms.h5", size)
    store = Store("moto", s3_url, bucket, s3)
    options = ObjectOptions(encryption="sse-kms", kms_key_id=key_id)
    result = await _one(store, _upload(path, bucket, "kms.h5", options), **SMALL_PARTS)
    assert result.ok, result.error
    head = s3.head_object(Bucket=bucket, Key="kms.h5")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].endswith(key_id)
    assert result.encryption == "sse-kms"
    assert s3.get_object(Bucket=bucket, Key="kms.h5")["Body"].read() == path.read_bytes()


async def test_the_acl_asked_for_is_applied(s3_url: str, s3: Any, bucket: str,
                                            tmp_path: Path) -> None:
    """moto only: SeaweedFS 4.48 accepts ``x-amz-acl: public-read`` on the PUT (200),
    but its GetObjectAcl then lists only the owner's FULL_CONTROL (seen here), so
    there is nothing to read back."""
    path = _file(tmp_path, "public.h5", 1000)
    store = Store("moto", s3_url, bucket, s3)
    result = await _one(store, _upload(path, bucket, "public.h5",
                                       ObjectOptions(acl="public-read")))
    assert result.ok, result.error
    grants = s3.get_object_acl(Bucket=bucket, Key="public.h5")["Grants"]
    assert any(g["Grantee"].get("URI", "").endswith("/AllUsers") and g["Permission"] == "READ"
               for g in grants), grants


async def test_a_versioned_bucket_gives_the_version_id(store: Store, tmp_path: Path) -> None:
    store.s3.put_bucket_versioning(Bucket=store.bucket,
                                   VersioningConfiguration={"Status": "Enabled"})
    path = _file(tmp_path, "v.h5", 1000)
    result = await _one(store, _upload(path, store.bucket, "v.h5", ObjectOptions()))
    assert result.ok, result.error
    head = store.s3.head_object(Bucket=store.bucket, Key="v.h5")
    assert result.version_id and result.version_id == head["VersionId"]
    assert result.encryption == "none" and result.storage_class is None


# --- SSE-C ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [70_000, 11 * MiB], ids=["single", "multipart"])
async def test_sse_c_is_enforced_by_seaweedfs(weed: Store, tmp_path: Path, size: int) -> None:
    key = _sse_c()
    path = _file(tmp_path, "secret.h5", size)
    result = await _one(weed, _upload(path, weed.bucket, "secret.h5",
                                      ObjectOptions(encryption="sse-c", sse_c=key)),
                        **SMALL_PARTS)
    assert result.ok, result.error
    assert result.encryption == "sse-c"
    head = weed.s3.head_object(Bucket=weed.bucket, Key="secret.h5", **_key_params(key))
    assert head["ContentLength"] == size
    # (SeaweedFS 4.48 sends the header twice: "MD5, MD5")
    assert key.md5 in head["SSECustomerKeyMD5"]
    body = weed.s3.get_object(Bucket=weed.bucket, Key="secret.h5", **_key_params(key))
    assert body["Body"].read() == path.read_bytes()
    with pytest.raises(botocore.exceptions.ClientError):  # (400 without the key)
        weed.s3.head_object(Bucket=weed.bucket, Key="secret.h5")
    with pytest.raises(botocore.exceptions.ClientError):
        weed.s3.get_object(Bucket=weed.bucket, Key="secret.h5")
    other = _sse_c()
    with pytest.raises(botocore.exceptions.ClientError):
        weed.s3.get_object(Bucket=weed.bucket, Key="secret.h5", **_key_params(other))


async def test_sse_c_is_accepted_but_not_enforced_by_moto(s3_url: str, s3: Any, bucket: str,
                                                          tmp_path: Path) -> None:
    """moto 5.2 takes the SSE-C headers and stores the object; it then serves it without
    the key too (it does not enforce SSE-C): what trollpush sends is all that is checked
    here."""
    key = _sse_c()
    path = _file(tmp_path, "secret.h5", 1000)
    sent: list[Any] = []
    engine = await started_engine(s3_url)
    engine.client("default").meta.events.register(
        "before-send.s3.PutObject", lambda request, **_: sent.append(request.headers))
    try:
        result = await engine.upload(_upload(path, bucket, "secret.h5",
                                             ObjectOptions(encryption="sse-c", sse_c=key)),
                                     "default")
    finally:
        await engine.close()
    assert result.ok and result.encryption == "sse-c"
    assert sent[0]["x-amz-server-side-encryption-customer-key-MD5"] == key.md5.encode()
    assert s3.get_object(Bucket=bucket, Key="secret.h5")["Body"].read() == path.read_bytes()


async def test_an_sse_c_key_that_is_not_loaded_fails_with_bad_object_options(
        s3_url: str, s3: Any, bucket: str, tmp_path: Path) -> None:
    """A journaled upload resumed under a config without its key: a permanent failure
    naming the key, never an internal error, and nothing sent."""
    path = _file(tmp_path, "orphan.h5", 1000)
    name = keys.name_of(os.urandom(32))
    result = await _one(Store("moto", s3_url, bucket, s3), _upload(
        path, bucket, "orphan.h5", ObjectOptions(encryption="sse-c", sse_c=SseCKey(name))))
    assert not result.ok and result.reason == "bad_object_options"
    assert name in (result.error or "") and not result.retry_later
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)


async def test_an_sse_c_multipart_upload_resumes_with_its_key(weed: Store,
                                                              tmp_path: Path) -> None:
    """Cancelled after two parts (a shutdown); the next attempt lists the parts with the
    key, sends only the missing ones, and the object reads back with the key."""
    key = _sse_c()
    path = _file(tmp_path, "long.h5", 21 * MiB)
    upload = _upload(path, weed.bucket, "long.h5",
                     ObjectOptions(encryption="sse-c", sse_c=key, storage_class="STANDARD_IA"))
    recorder = Recorder()
    engine = await started_engine(weed.url, max_parts_in_flight=1, **SMALL_PARTS)
    sent: list[int] = []
    listed: list[Any] = []
    client = engine.client("default")
    client.meta.events.register("before-send.s3.UploadPart", lambda **_: sent.append(1))
    client.meta.events.register("before-send.s3.ListParts",
                                lambda request, **_: listed.append(request.headers))
    try:
        task = asyncio.create_task(engine.upload(upload, "default", progress=recorder))
        await wait_until_async(lambda: len(recorder.parts) >= 2, what="two parts recorded")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        first, done = len(sent), len(recorder.parts)
        result = await engine.upload(upload, "default", progress=recorder)
    finally:
        await engine.close()
    assert result.ok, result.error
    assert result.parts == 5 and len(sent) - first == 5 - done
    assert listed[0]["x-amz-server-side-encryption-customer-key-MD5"] == key.md5.encode()
    body = weed.s3.get_object(Bucket=weed.bucket, Key="long.h5", **_key_params(key))
    assert body["Body"].read() == path.read_bytes()
    assert body["StorageClass"] == "STANDARD_IA"
    assert weed.s3.list_multipart_uploads(Bucket=weed.bucket).get("Uploads", []) == []


async def test_a_recorded_sse_c_multipart_upload_without_its_key_is_aborted(
        weed: Store, tmp_path: Path) -> None:
    """Resumed (after a restart) under a config that no longer has the key: the upload
    fails with ``bad_object_options`` and its recorded multipart upload is aborted (an
    abort needs no key): no encrypted parts are left at the store."""
    key = _sse_c()
    path = _file(tmp_path, "rotated.h5", 21 * MiB)
    options = ObjectOptions(encryption="sse-c", sse_c=key)
    recorder = Recorder()
    engine = await started_engine(weed.url, max_parts_in_flight=1, **SMALL_PARTS)
    try:
        task = asyncio.create_task(engine.upload(
            _upload(path, weed.bucket, "rotated.h5", options), "default", progress=recorder))
        await wait_until_async(lambda: len(recorder.parts) >= 2, what="two parts recorded")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert weed.s3.list_multipart_uploads(Bucket=weed.bucket).get("Uploads")
        keyless = replace(options, sse_c=SseCKey(key.md5))  # as the journal gives it back
        result = await engine.upload(_upload(path, weed.bucket, "rotated.h5", keyless),
                                     "default", progress=recorder)
    finally:
        await engine.close()
    assert result.reason == "bad_object_options" and key.md5 in (result.error or "")
    assert weed.s3.list_multipart_uploads(Bucket=weed.bucket).get("Uploads", []) == []


# --- conditional writes ---------------------------------------------------------------------

ONCE = ObjectOptions(if_none_match=True)


def _crc32c(data: bytes) -> str:
    """The CRC32C header value of ``data`` (botocore would need awscrt to make it)."""
    from trollpush.transfer import checksum

    h = checksum.new("crc32c")
    h.update(data)
    value = checksum.encode(h)
    assert value is not None
    return value


def _their_multipart(store: Store, key: str, data: bytes) -> None:
    """Another writer's multipart upload, in 5 MiB parts with CRC32C checksums, as a
    second daemon sends it (boto3 would need awscrt for CRC32C)."""
    s3, bucket = store.s3, store.bucket
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key,
                                           ChecksumAlgorithm="CRC32C")["UploadId"]
    parts = []
    for number, offset in enumerate(range(0, len(data), 5 * MiB), 1):
        body = data[offset:offset + 5 * MiB]
        value = _crc32c(body)
        etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                              Body=body, ChecksumCRC32C=value)["ETag"]
        parts.append({"PartNumber": number, "ETag": etag, "ChecksumCRC32C": value})
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                 MultipartUpload={"Parts": parts})


def _comparable(store: Store, size: int) -> dict[str, Any]:
    """A checksum the store reports back for an object of ``size`` bytes: moto 5.2 keeps
    none of a single PUT (its HEAD has no x-amz-checksum-*), so there md5 (the ETag of a
    single PUT is its MD5); it reports a multipart object's composite checksum without
    its "-N".  SeaweedFS keeps the checksum of either, in S3's own form."""
    return {"checksum": "md5"} if store.name == "moto" and size < 5 * MiB else {}


@pytest.mark.parametrize("size", [70_000, 11 * MiB], ids=["single", "multipart"])
async def test_if_none_match_refuses_to_overwrite(store: Store, tmp_path: Path,
                                                  size: int) -> None:
    """Another object at the key: not overwritten, not retried, reason ``exists``; a
    multipart upload sees it with a HEAD first and sends no part at all."""
    store.s3.put_object(Bucket=store.bucket, Key="once.h5", Body=b"someone else's")
    path = _file(tmp_path, "once.h5", size)
    result = await _one(store, _upload(path, store.bucket, "once.h5", ONCE), tries=3,
                        **SMALL_PARTS)
    assert not result.ok and result.reason == "exists", result
    assert "exists with other content" in (result.error or "")
    assert not result.retry_later
    assert result.attempts == (1 if size < 5 * MiB else 0)  # the PUT; no multipart upload
    got = store.s3.get_object(Bucket=store.bucket, Key="once.h5")["Body"].read()
    assert got == b"someone else's"
    assert store.s3.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []


@pytest.mark.parametrize("same", [False, True], ids=["another", "the-same"])
async def test_an_object_that_lands_while_the_parts_go_up_is_refused_at_the_complete(
        store: Store, tmp_path: Path, same: bool) -> None:
    """Another writer (another daemon) lands the key after our HEAD, before our complete:
    the complete carries If-None-Match and is refused (412); the upload is aborted (no
    parts left) and the object there compared: the same file is done, another ``exists``."""
    path = _file(tmp_path, "race.h5", 11 * MiB)
    theirs = path.read_bytes() if same else os.urandom(11 * MiB)
    engine = await started_engine(store.url, tries=3, **SMALL_PARTS)
    client = engine.client("default")

    def land_theirs(**_: Any) -> None:  # (blocking, once: a test's other writer)
        if not store.s3.list_objects_v2(Bucket=store.bucket).get("Contents"):
            _their_multipart(store, "race.h5", theirs)

    client.meta.events.register("before-send.s3.CompleteMultipartUpload", land_theirs)
    try:
        result = await engine.upload(_upload(path, store.bucket, "race.h5", ONCE), "default")
    finally:
        await engine.close()
    if same:
        assert result.ok and result.already_there, result.error
    else:
        assert result.reason == "exists", result
    assert result.attempts == 1 + 3 + 1  # create, 3 parts, the refused complete
    assert store.s3.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []
    assert store.s3.get_object(Bucket=store.bucket, Key="race.h5")["Body"].read() == theirs


@pytest.mark.parametrize("size", [70_000, 11 * MiB], ids=["single", "multipart"])
async def test_if_none_match_answers_the_same_content_as_landed(
        store: Store, tmp_path: Path, size: int, caplog: pytest.LogCaptureFixture) -> None:
    """The same file again (a repeated request): done, marked already there (an
    idempotent re-announcement), the object untouched."""
    path = _file(tmp_path, "same.h5", size)
    options = replace(ONCE, storage_class="STANDARD_IA")
    config = {**SMALL_PARTS, **_comparable(store, size)}
    first = await _one(store, _upload(path, store.bucket, "same.h5", options), **config)
    assert first.ok and not first.already_there, first.error
    caplog.set_level(logging.INFO, logger="trollpush")
    again = await _one(store, _upload(path, store.bucket, "same.h5", options), **config)
    assert again.ok, again.error
    assert again.already_there
    assert again.attempts == (1 if size < 5 * MiB else 0)  # multipart: a HEAD first
    assert again.etag == first.etag and again.checksum == first.checksum
    assert again.storage_class == "STANDARD_IA" and again.written_with is None
    assert "already there" in caplog.text
    assert store.s3.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []


async def test_an_object_already_there_is_announced_as_it_is_not_as_asked(
        store: Store, tmp_path: Path) -> None:
    """Another writer put the same bytes there, plainly: the completion tells the storage
    class and encryption the object has; asked to encrypt, it is not the file (``exists``):
    a completion never calls an object kept in clear encrypted."""
    path = _file(tmp_path, "theirs.h5", 70_000)
    store.s3.put_object(Bucket=store.bucket, Key="theirs.h5", Body=path.read_bytes(),
                        ContentType="text/plain", Metadata={"owner": "someone-else"},
                        ChecksumCRC32C=_crc32c(path.read_bytes()))  # (moto: by the ETag)
    config = _comparable(store, 70_000)
    asked = replace(ONCE, storage_class="STANDARD_IA")
    found = await _one(store, _upload(path, store.bucket, "theirs.h5", asked), **config)
    assert found.ok and found.already_there, found.error
    assert (found.storage_class, found.encryption) == ("STANDARD", "none")
    encrypted = replace(ONCE, encryption="sse-s3")
    refused = await _one(store, _upload(path, store.bucket, "theirs.h5", encrypted), **config)
    assert refused.reason == "exists", refused
    assert "encrypted none, not sse-s3" in (refused.error or "")
    head = store.s3.head_object(Bucket=store.bucket, Key="theirs.h5")
    assert head["Metadata"] == {"owner": "someone-else"}  # never overwritten


async def test_a_put_whose_answer_was_lost_comes_out_as_done(store: Store,
                                                             tmp_path: Path) -> None:
    """The first PUT lands but its answer is lost (a read timeout): the retry gets 412,
    and the object there is ours: done."""
    path = _file(tmp_path, "lost.h5", 70_000)
    engine = await started_engine(store.url, tries=3, **_comparable(store, 70_000))
    answers = 0

    def lose_first(**_: Any) -> None:
        nonlocal answers
        answers += 1
        if answers == 1:
            raise botocore.exceptions.ReadTimeoutError(endpoint_url=store.url)

    engine.client("default").meta.events.register("after-call.s3.PutObject", lose_first)
    try:
        result = await engine.upload(_upload(path, store.bucket, "lost.h5", ONCE), "default")
    finally:
        await engine.close()
    assert result.ok, result.error
    assert result.attempts == 2 and result.already_there
    got = store.s3.get_object(Bucket=store.bucket, Key="lost.h5")["Body"].read()
    assert got == path.read_bytes()


@pytest.mark.parametrize("size", [70_000, 11 * MiB], ids=["single", "multipart"])
async def test_the_same_size_with_another_checksum_is_not_the_same(
        store: Store, tmp_path: Path, size: int) -> None:
    config = {**SMALL_PARTS, **_comparable(store, size)}
    twin = _file(tmp_path, "twin.h5", size)
    assert (await _one(store, _upload(twin, store.bucket, "twin.h5", ONCE), **config)).ok
    path = _file(tmp_path, "other.h5", size)
    result = await _one(store, _upload(path, store.bucket, "twin.h5", ONCE), **config)
    assert not result.ok and result.reason == "exists"
    assert "checksum differs" in (result.error or "") or "ETag" in (result.error or "")


async def test_md5_compares_a_single_put_by_its_etag(store: Store, tmp_path: Path) -> None:
    """With the md5 checksum the store keeps no checksum of ours: a single PUT's ETag is
    the MD5 of the body."""
    path = _file(tmp_path, "md5.h5", 5000)
    store.s3.put_object(Bucket=store.bucket, Key="md5.h5", Body=path.read_bytes())
    result = await _one(store, _upload(path, store.bucket, "md5.h5", ONCE), checksum="md5")
    assert result.ok and result.already_there, result.error
    assert result.etag and result.etag.strip('"') == hashlib.md5(path.read_bytes()).hexdigest()
    other = _file(tmp_path, "md5-other.h5", 5000)
    refused = await _one(store, _upload(other, store.bucket, "md5.h5", ONCE), checksum="md5")
    assert refused.reason == "exists"


# --- answered from the journal ---------------------------------------------------------------


async def test_changed_options_upload_again_rather_than_reuse(
        s3_url: str, s3: Any, bucket: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    path = _file(tmp_path, "re.h5", 1000)
    engine: TransferEngine = await started_engine(s3_url)
    upload = _upload(path, bucket, "re.h5", ObjectOptions(storage_class="STANDARD_IA"))
    caplog.set_level(logging.INFO, logger="trollpush")
    try:
        first = await engine.upload(upload, "default")
        same = await engine.upload(upload, "default", landed=first)
        moved = replace(upload, options=ObjectOptions(storage_class="GLACIER_IR"))
        again = await engine.upload(moved, "default", landed=first)
    finally:
        await engine.close()
    assert first.ok and same.ok and again.ok
    assert same.attempts == 0 and same.storage_class == "STANDARD_IA"  # from the journal
    assert again.attempts == 1 and again.storage_class == "GLACIER_IR"
    assert "storage class STANDARD_IA, now GLACIER_IR" in caplog.text
    assert s3.head_object(Bucket=bucket, Key="re.h5")["StorageClass"] == "GLACIER_IR"

