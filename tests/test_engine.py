"""The long-haul engine: multipart, aborts, budgets, slots, warmth, pacing, checksums.

moto for the S3 protocol; SeaweedFS where the store must verify checksums or keep
connections alive; a corrupting proxy to damage bodies in flight.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from pathlib import Path
from typing import Any

import boto3
import crc32c
import pytest

from trollpush.config import EndpointConfig
from trollpush.transfer import TransferEngine, part_size
from trollpush.transfer.pool import SO_MAX_PACING_RATE

from .conftest import CREDS
from .helpers import Recorder, started_engine, upload_of, wait_until_async
from .servers import CorruptingProxy

MiB = 1024 * 1024


def _client(url: str) -> Any:
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"])


def _file(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


# --- sizes --------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "chunk", "expected"), [
    (100 * MiB, 16 * MiB, 16 * MiB),
    (100 * MiB, 1 * MiB, 5 * MiB),  # S3's minimum part
    (200_000 * MiB, 16 * MiB, 20 * MiB),  # 10,000 parts at most
])
def test_part_size_is_clamped_to_s3_limits(size: int, chunk: int, expected: int) -> None:
    assert part_size(size, chunk) == expected
    assert -(-size // part_size(size, chunk)) <= 10_000


def test_attempt_budget_grows_with_size_and_retries() -> None:
    ep = EndpointConfig(name="e", attempt_timeout=2, min_throughput=MiB, timeout_factor=2)
    assert ep.attempt_budget(0, 1) == 2
    assert ep.attempt_budget(8 * MiB, 1) == 10
    assert ep.attempt_budget(8 * MiB, 3) == 40


# --- multipart on moto ----------------------------------------------------------------------


async def test_multipart_upload_in_parallel_parts(s3_url: str, s3: Any, bucket: str,
                                                  tmp_path: Path) -> None:
    """Above the threshold: parts of the chunk size, in parallel, bytes intact."""
    path = _file(tmp_path, "big.bin", 23 * MiB + 123)
    engine = await started_engine(s3_url, multipart_threshold=8 * MiB, multipart_chunksize=5 * MiB,
                           max_parts_in_flight=3)
    in_flight: list[int] = []
    engine.client("default").meta.events.register(
        "before-send.s3.UploadPart", lambda **_: in_flight.append(engine.active))
    try:
        result = await engine.upload(upload_of(path, bucket, "mp/big.bin"), "default")
    finally:
        await engine.close()
    assert result.ok, result.error
    assert result.parts == 5 and result.size == path.stat().st_size
    assert result.checksum and result.checksum.endswith("-5")
    assert 1 < max(in_flight) <= 3
    assert s3.get_object(Bucket=bucket, Key="mp/big.bin")["Body"].read() == path.read_bytes()


async def test_failed_multipart_is_aborted(s3_url: str, s3: Any, bucket: str,
                                           tmp_path: Path) -> None:
    """A file truncated mid-upload fails (it changed: file_changed, once every try saw it
    change), and no parts are left behind."""
    path = _file(tmp_path, "shrinks.bin", 16 * MiB)
    engine = await started_engine(s3_url, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB,
                           max_parts_in_flight=1)

    def truncate(**_: Any) -> None:
        os.truncate(path, 6 * MiB)

    engine.client("default").meta.events.register_first(
        "before-send.s3.UploadPart", truncate)
    try:
        result = await engine.upload(upload_of(path, bucket, "mp/shrinks.bin"), "default")
    finally:
        await engine.close()
    assert not result.ok and result.reason == "file_changed", result
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


async def test_zero_byte_file(s3_url: str, s3: Any, bucket: str, tmp_path: Path) -> None:
    path = _file(tmp_path, "empty", 0)
    engine = await started_engine(s3_url)
    try:
        result = await engine.upload(upload_of(path, bucket, "empty"), "default")
    finally:
        await engine.close()
    assert result.ok and result.size == 0
    assert s3.head_object(Bucket=bucket, Key="empty")["ContentLength"] == 0


# --- budgets and slots ----------------------------------------------------------------------


async def test_timeout_factor_stretches_each_retry(silent_server: str, tmp_path: Path) -> None:
    """Three attempts of 0.2, 0.4 and 0.8 s against a store that never answers."""
    path = _file(tmp_path, "f", 10)
    engine = await started_engine(silent_server, tries=3, attempt_timeout=0.2, timeout_factor=2,
                           min_throughput=1e12)
    start = time.monotonic()
    try:
        result = await engine.upload(upload_of(path, "b", "k"), "default")
    finally:
        await engine.close()
    assert result.reason == "timeout" and result.attempts == 3
    assert "exceeded 0.8 s" in (result.error or "")
    assert time.monotonic() - start >= 1.4


async def test_queue_timeout_bounds_the_wait_for_a_slot(silent_server: str,
                                                        tmp_path: Path) -> None:
    """With every slot taken by a hung upload, the next one gives up after queue_timeout."""
    path = _file(tmp_path, "f", 10)
    engine = await started_engine(silent_server, max_parallel=1, queue_timeout=0.3, tries=1,
                           attempt_timeout=5)
    try:
        hung = asyncio.create_task(engine.upload(upload_of(path, "b", "k1"), "default"))
        await wait_until_async(lambda: engine.active == 1, what="the hung upload")
        second = await engine.upload(upload_of(path, "b", "k2"), "default")
        hung.cancel()
        await asyncio.gather(hung, return_exceptions=True)
    finally:
        await engine.close()
    assert second.reason == "queue_timeout" and second.attempts == 0


# --- SeaweedFS: warmth, pacing, checksums -----------------------------------------------


async def test_pool_is_prewarmed_and_kept_warm(seaweed: str, weed_bucket: str,
                                               tmp_path: Path) -> None:
    """Start opens `prewarm` connections; idle ticks keep them; a burst opens no new one."""
    engine = TransferEngine({"default": EndpointConfig(
        name="default", url=seaweed, region="us-east-1", prewarm=4, keepalive_interval=0.3)},
        warm_buckets={"default": weed_bucket})
    await engine.start()
    pool = engine.pool("default")
    try:
        assert pool.opened == 4
        ticks = pool.last_used
        await wait_until_async(lambda: pool.last_used != ticks, what="an idle keep-warm round")
        paths = [_file(tmp_path, f"f{i}", 1000) for i in range(4)]
        results = await asyncio.gather(*(engine.upload(upload_of(p, weed_bucket, p.name),
                                                       "default") for p in paths))
        assert all(r.ok for r in results)
        assert pool.opened == 4, "the burst had to open new connections"
        sock = next(iter(pool._sockets))
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 15
    finally:
        await engine.close()


async def test_bandwidth_limit_paces_the_sockets(seaweed: str, weed_bucket: str,
                                                 tmp_path: Path) -> None:
    """An aggregate limit of 40 Mbit/s: 6 MiB cannot land faster than ~1.2 s, and the
    rate on the sockets is the limit shared by the requests in flight."""
    path = _file(tmp_path, "paced", 6 * MiB)
    engine = await started_engine(seaweed, bandwidth_limit=40e6, prewarm=2)
    pool = engine.pool("default")
    rates: list[int] = []

    def record(**_: Any) -> None:
        rates.extend(s.getsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE)
                     for s in list(pool._sockets) if s.fileno() >= 0)

    engine.client("default").meta.events.register("before-send.s3.PutObject", record)
    start = time.monotonic()
    try:
        result = await engine.upload(upload_of(path, weed_bucket, "paced"), "default")
    finally:
        await engine.close()
    assert result.ok, result.error
    assert time.monotonic() - start >= 6 * MiB / 5e6 * 0.9
    assert rates and set(rates) == {5_000_000}  # 40 Mbit/s over 1 request in flight


@pytest.mark.parametrize("algorithm", ["crc32c", "sha256", "md5"])
async def test_body_corrupted_in_flight_is_rejected_and_retried(
        seaweed: str, weed_bucket: str, tmp_path: Path, algorithm: str) -> None:
    """The store verifies the checksum: the damaged first attempt is refused (BadDigest),
    the retry lands intact, and the result carries the verified checksum."""
    proxy = CorruptingProxy(seaweed, corrupt=1)
    path = _file(tmp_path, "data.bin", 300_000)
    engine = await started_engine(proxy.url, checksum=algorithm, tries=3)
    try:
        result = await engine.upload(upload_of(path, weed_bucket, f"ok-{algorithm}"), "default")
    finally:
        await engine.close()
        proxy.close()
    assert proxy.corrupted == 1
    assert result.ok, result.error
    assert result.attempts == 2
    body = _client(seaweed).get_object(Bucket=weed_bucket, Key=f"ok-{algorithm}")["Body"].read()
    assert body == path.read_bytes()
    if algorithm == "crc32c":
        expected = base64.b64encode(crc32c.crc32c(body).to_bytes(4, "big")).decode()
        assert result.checksum == expected


async def test_body_always_corrupted_never_lands(seaweed: str, weed_bucket: str,
                                                 tmp_path: Path) -> None:
    """Multipart too: every part damaged, every try refused, the upload fails and is
    aborted; nothing is stored."""
    proxy = CorruptingProxy(seaweed, corrupt=-1)
    path = _file(tmp_path, "data.bin", 11 * MiB)
    engine = await started_engine(proxy.url, tries=2, multipart_threshold=5 * MiB,
                           multipart_chunksize=5 * MiB)
    try:
        result = await engine.upload(upload_of(path, weed_bucket, "never"), "default")
    finally:
        await engine.close()
        proxy.close()
    assert not result.ok and "BadDigest" in (result.error or "")
    client = _client(seaweed)
    assert client.list_objects_v2(Bucket=weed_bucket, Prefix="never").get("KeyCount") == 0
    assert client.list_multipart_uploads(Bucket=weed_bucket).get("Uploads", []) == []



# --- files that change, uploads that resume ---------------------------------------------------


async def test_file_rewritten_during_upload_is_uploaded_again(s3_url: str, s3: Any,
                                                              bucket: str,
                                                              tmp_path: Path) -> None:
    """The first PUT sends the old bytes, then the file is rewritten: that upload is not
    reported as landed; the second one is, with the new bytes."""
    path = _file(tmp_path, "growing.bin", 10_000)
    engine = await started_engine(s3_url, tries=3)
    puts = 0

    def rewrite(**_: Any) -> None:
        nonlocal puts
        puts += 1
        if puts == 1:
            path.write_bytes(os.urandom(12_000))

    engine.client("default").meta.events.register("before-send.s3.PutObject", rewrite)
    try:
        result = await engine.upload(upload_of(path, bucket, "growing.bin"), "default")
    finally:
        await engine.close()
    assert result.ok and puts == 2 and result.size == 12_000
    assert result.source_stat is not None and result.source_stat[0] == 12_000
    assert s3.get_object(Bucket=bucket, Key="growing.bin")["Body"].read() == path.read_bytes()


async def test_file_that_keeps_changing_fails(s3_url: str, tmp_path: Path, bucket: str) -> None:
    path = _file(tmp_path, "busy.bin", 1000)
    engine = await started_engine(s3_url, tries=2)
    def rewrite(**_: Any) -> None:  # (a before-send handler's return value is a response)
        path.write_bytes(os.urandom(1001))

    engine.client("default").meta.events.register("before-send.s3.PutObject", rewrite)
    try:
        result = await engine.upload(upload_of(path, bucket, "busy.bin"), "default")
    finally:
        await engine.close()
    assert not result.ok and result.reason == "file_changed"


async def test_interrupted_multipart_resumes_from_its_parts(s3_url: str, s3: Any, bucket: str,
                                                            tmp_path: Path) -> None:
    """Cancelled after two parts (a shutdown): the upload is kept, and the next attempt
    sends only the missing parts (ListParts confirms the recorded ones)."""
    path = _file(tmp_path, "long.bin", 26 * MiB)
    recorder = Recorder()
    engine = await started_engine(s3_url, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB,
                           max_parts_in_flight=1)
    sent: list[int] = []
    engine.client("default").meta.events.register(
        "before-send.s3.UploadPart", lambda request, **_: sent.append(1))
    try:
        task = asyncio.create_task(engine.upload(upload_of(path, bucket, "long.bin"), "default",
                                                 progress=recorder))
        await wait_until_async(lambda: len(recorder.parts) >= 2, what="two parts recorded")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads"), "the upload was kept"
        first = len(sent)
        done = len(recorder.parts)
        result = await engine.upload(upload_of(path, bucket, "long.bin"), "default",
                                     progress=recorder)
    finally:
        await engine.close()
    assert result.ok and result.parts == 6
    assert len(sent) - first == 6 - done  # only the missing parts went again
    assert s3.get_object(Bucket=bucket, Key="long.bin")["Body"].read() == path.read_bytes()
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


async def test_an_abandoned_multipart_upload_is_aborted_not_kept(
        s3_url: str, s3: Any, bucket: str, tmp_path: Path) -> None:
    """Cancelled after two parts because the requester hung up: nothing is left at the
    store to resume (and nothing for a lifecycle rule to clean up)."""
    path = _file(tmp_path, "gone.bin", 26 * MiB)
    recorder = Recorder()
    engine = await started_engine(s3_url, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB,
                                  max_parts_in_flight=1)
    try:
        task = asyncio.create_task(engine.upload(upload_of(path, bucket, "gone.bin"), "default",
                                                 progress=recorder))
        await wait_until_async(lambda: len(recorder.parts) >= 2, what="two parts recorded")
        recorder.abandoned = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await engine.close()
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="gone.bin")


_RSS_SCRIPT = """
import asyncio, os, resource, sys
from pathlib import Path
from trollpush.config import EndpointConfig
from trollpush.models import SourceFile, Upload
from trollpush.transfer import TransferEngine

async def main(url, bucket, path):
    engine = TransferEngine({"d": EndpointConfig(name="d", url=url, region="us-east-1",
                                                 prewarm=0, multipart_chunksize=16 << 20,
                                                 max_parts_in_flight=8)})
    await engine.start()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    p = Path(path)
    result = await engine.upload(Upload(SourceFile(uri=path, path=p, uid=p.name), bucket,
                                        p.name), "d")
    await engine.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(result.ok, result.parts, (peak - base) // 1024)

asyncio.run(main(*sys.argv[1:]))
"""


def test_multipart_memory_stays_small(seaweed: str, weed_bucket: str, tmp_path: Path) -> None:
    """Parts are streamed from disk: 128 MiB in 16 MiB parts, 8 in flight, adds far less
    than parts x part size to the peak RSS."""
    import subprocess
    import sys

    path = _file(tmp_path, "big.bin", 128 * MiB)
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, seaweed, weed_bucket, str(path)],
                         capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    ok, parts, growth_mib = out.stdout.split()
    assert ok == "True" and parts == "8"
    assert int(growth_mib) < 64, f"peak RSS grew by {growth_mib} MiB"
