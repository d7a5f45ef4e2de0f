"""The transfer stage against a real S3 server (moto) and real failing sockets; each S3
call's arguments from ObjectOptions; what the engine reports to the stats registry."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from trollpush.config import EndpointConfig
from trollpush.models import ObjectOptions
from trollpush.stats import (
    ACTIVE,
    ATTEMPTS,
    BYTES,
    RETRIES,
    TRANSFER_SECONDS,
    UPLOADS,
    Stats,
)
from trollpush.transfer import TransferEngine

from .helpers import free_port, started_engine, upload_of, wait_until_async


async def test_upload_streams_file_and_sends_no_expect_header(
        s3_url: str, s3: Any, bucket: str, tmp_path: Path) -> None:
    """A 12 MiB file lands byte for byte; no request carries Expect: 100-continue."""
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(12 * 1024 * 1024))
    engine = await started_engine(s3_url)
    headers: list[dict[str, str]] = []

    def capture(request: Any, **_: Any) -> None:
        headers.append({k.lower(): str(v) for k, v in request.headers.items()})

    engine.client("default").meta.events.register("before-send.s3", capture)
    try:
        result = await engine.upload(upload_of(path, bucket, "a/big.bin"), "default")
    finally:
        await engine.close()
    assert result.ok, result.error
    assert result.size == path.stat().st_size and result.attempts == 1
    assert headers and all("expect" not in h for h in headers)
    body = s3.get_object(Bucket=bucket, Key="a/big.bin")["Body"].read()
    assert body == path.read_bytes()


async def test_uploads_are_bounded_by_max_connections(s3_url: str, s3: Any, bucket: str,
                                                      tmp_path: Path) -> None:
    """Never more uploads at once than the endpoint's max_connections."""
    engine = await started_engine(s3_url, max_parallel=3)
    seen: list[int] = []
    engine.client("default").meta.events.register(
        "before-send.s3", lambda **_: seen.append(engine.active))
    paths = []
    for i in range(12):
        p = tmp_path / f"f{i}"
        p.write_bytes(os.urandom(50_000))
        paths.append(p)
    try:
        results = await asyncio.gather(*(engine.upload(upload_of(p, bucket, p.name), "default")
                                         for p in paths))
    finally:
        await engine.close()
    assert all(r.ok for r in results)
    assert max(seen) == 3
    assert "completed=12" in repr(engine)


async def test_permanent_error_is_not_retried(s3_url: str, tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    engine = await started_engine(s3_url, tries=4)
    try:
        result = await engine.upload(upload_of(path, "no-such-bucket-zz", "k"), "default")
    finally:
        await engine.close()
    assert not result.ok and result.attempts == 1
    assert result.reason == "permanent_error" and "NoSuchBucket" in (result.error or "")


async def test_connection_refused_is_retried_then_fails(tmp_path: Path) -> None:
    """A dead endpoint costs `tries` attempts, then a failure with the last reason."""
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    engine = await started_engine(f"http://127.0.0.1:{free_port()}", tries=3, connect_timeout=2)
    try:
        result = await engine.upload(upload_of(path, "b", "k"), "default")
    finally:
        await engine.close()
    assert not result.ok and result.attempts == 3
    assert result.reason == "upload_failed"
    assert "3 attempt(s) failed" in (result.error or "")
    assert "retried=2" in repr(engine)


async def test_attempt_timeout_then_retry(silent_server: str, tmp_path: Path) -> None:
    """Each attempt gets attempt_timeout; a hung store costs tries x that, then `timeout`."""
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    engine = await started_engine(silent_server, tries=2, attempt_timeout=0.5)
    start = time.monotonic()
    try:
        result = await engine.upload(upload_of(path, "b", "k"), "default")
    finally:
        await engine.close()
    elapsed = time.monotonic() - start
    assert not result.ok and result.attempts == 2 and result.reason == "timeout"
    assert 0.9 < elapsed < 10


async def test_file_gone_at_upload_time_is_file_missing(s3_url: str, tmp_path: Path) -> None:
    """A file deleted between its announcement and its upload fails as file_missing."""
    engine = await started_engine(s3_url, tries=3)
    try:
        result = await engine.upload(upload_of(tmp_path / "gone", "b", "k"), "default")
    finally:
        await engine.close()
    assert not result.ok and result.attempts == 0 and "cannot read" in (result.error or "")
    assert result.reason == "file_missing"


# --- ObjectOptions: each S3 call takes its share --------------------------------------------


def test_object_options_are_filtered_per_s3_call() -> None:
    crc = ObjectOptions(checksum="crc32c")
    assert crc.put("AAAA") == {"ChecksumCRC32C": "AAAA"}  # the value, never the algorithm
    assert crc.part("AAAA") == {"ChecksumCRC32C": "AAAA"}
    assert crc.create() == {"ChecksumAlgorithm": "CRC32C"}
    assert crc.part_record("AAAA") == {"ChecksumCRC32C": "AAAA"}
    assert crc.complete() == {}
    assert crc.head() == {"ChecksumMode": "ENABLED"}
    assert crc.stored({"ChecksumCRC32C": "AAAA", "ETag": '"e"'}) == "AAAA"

    sha = ObjectOptions(checksum="sha256")
    assert sha.put("S") == {"ChecksumSHA256": "S"}
    assert sha.create() == {"ChecksumAlgorithm": "SHA256"}
    assert sha.stored({"ChecksumSHA256": "S"}) == "S"


def test_md5_goes_with_each_body_and_is_never_stored() -> None:
    md5 = ObjectOptions(checksum="md5")
    assert md5.put("M") == md5.part("M") == {"ContentMD5": "M"}
    assert md5.create() == {} and md5.part_record("M") == {}
    assert md5.stored({"ContentMD5": "M"}) is None


def test_no_checksum_gives_no_checksum_arguments() -> None:
    none = ObjectOptions(checksum="none")
    assert none.put("x") == none.part(None) == none.create() == none.part_record("x") == {}
    assert none.head() == {"ChecksumMode": "ENABLED"}
    assert none.stored({"ChecksumCRC32C": "AAAA"}) is None
    assert ObjectOptions(checksum="crc32c").put(None) == {}  # no value yet: nothing sent


# --- stats ------------------------------------------------------------------------------------


async def test_the_engine_reports_to_the_registry_it_is_given(
        s3_url: str, bucket: str, silent_server: str, tmp_path: Path) -> None:
    stats = Stats()
    engine = TransferEngine({
        "moto": EndpointConfig(name="moto", url=s3_url, region="us-east-1", prewarm=0),
        "silent": EndpointConfig(name="silent", url=silent_server, region="us-east-1",
                                 prewarm=0, tries=2, attempt_timeout=0.2,
                                 min_throughput=1e12)}, stats=stats)
    await engine.start()
    paths = []
    for n in range(3):
        paths.append(tmp_path / f"f{n}")
        paths[-1].write_bytes(b"x" * (100 + n))
    try:
        ok = await asyncio.gather(*(engine.upload(upload_of(p, bucket, p.name), "moto")
                                    for p in paths))
        hung = asyncio.create_task(engine.upload(upload_of(paths[0], "b", "k"), "silent"))
        await wait_until_async(lambda: stats.total(ACTIVE, endpoint="silent") == 1,
                               what="the active gauge")
        failed = await hung
    finally:
        await engine.close()
    assert all(r.ok for r in ok) and failed.reason == "timeout" and failed.attempts == 2
    assert stats.count(UPLOADS, endpoint="moto", outcome="completed") == 3
    assert stats.count(UPLOADS, endpoint="silent", outcome="failed", reason="timeout") == 1
    assert stats.count(BYTES, endpoint="moto") == 303 and stats.count(BYTES) == 303
    assert stats.count(ATTEMPTS, endpoint="moto") == 3
    assert stats.count(ATTEMPTS, endpoint="silent") == 2
    assert stats.count(RETRIES, endpoint="silent") == 1 and stats.count(RETRIES) == 1
    assert stats.total(ACTIVE) == 0
    hist = stats.histogram(TRANSFER_SECONDS, endpoint="moto")
    assert hist is not None and hist.count == 3
    assert stats.histogram(TRANSFER_SECONDS, endpoint="silent") is None  # nothing landed
    # the counters the daemon and the tests read are views of the registry
    assert (engine.completed, engine.failed, engine.retried) == (3, 1, 1)
    assert "completed=3 failed=1 retried=1" in repr(engine)


def test_an_engine_without_a_registry_has_its_own() -> None:
    engine = TransferEngine({})
    assert isinstance(engine.stats, Stats) and engine.stats is not TransferEngine({}).stats
    assert (engine.completed, engine.failed, engine.retried) == (0, 0, 0)
