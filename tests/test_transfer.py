"""The transfer stage against a real S3 server (moto) and real failing sockets."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from .helpers import free_port, started_engine, upload_of


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
