"""Faults, bounded and on loopback: a store that goes away, kill -9, SIGTERM mid-burst.

Each accepted request lands and is announced at least once, whatever happens to the
daemon or the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from moto.server import ThreadedMotoServer

from trollpush import send
from trollpush.config import parse_config
from trollpush.journal import SQLiteJournal
from trollpush.messages import build_request, new_message
from trollpush.route import Router

from .helpers import DaemonProcess, Listener, Producer, free_port, link, running_daemon, wait_until

pytestmark = pytest.mark.slow
MiB = 1024 * 1024


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_store_down_for_a_while_then_back(base_config: dict[str, Any], s3: Any, bucket: str,
                                          granule: Path, ports: dict[str, int]) -> None:
    """Nothing listens where the store should be: the upload waits and retries; when a
    store appears there, the file lands and the requester gets the completion."""
    port = free_port()
    base_config["endpoints"]["late"] = {"url": f"http://127.0.0.1:{port}", "tries": 1,
                                        "prewarm": 0, "connect_timeout": 0.5}
    results: list[Any] = []
    server: ThreadedMotoServer | None = None
    with running_daemon(base_config) as daemon:
        worker = threading.Thread(target=lambda: results.append(send(
            str(granule), f"s3://{bucket}/late/", endpoint="late", timeout=10,
            server=f"tcp://127.0.0.1:{ports['req']}")))
        worker.start()
        wait_until(lambda: daemon.transfer.failed >= 1, 15, "a failed attempt")
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()  # same in-process moto backend: the bucket exists there too
        try:
            worker.join(timeout=30)
        finally:
            server.stop()
    assert results and results[0].ok, results
    assert s3.get_object(Bucket=bucket, Key=f"late/{granule.name}")["Body"].read() == \
        granule.read_bytes()


def test_store_down_past_max_age_fails_loudly(base_config: dict[str, Any], granule: Path,
                                              ports: dict[str, int]) -> None:
    base_config["endpoints"]["dead"] = {"url": f"http://127.0.0.1:{free_port()}",
                                        "tries": 1, "prewarm": 0, "connect_timeout": 0.5}
    base_config["daemon"]["max_age"] = 2
    with running_daemon(base_config):
        result = send(str(granule), "s3://b/k", endpoint="dead", timeout=10,
                      result_timeout=30, server=f"tcp://127.0.0.1:{ports['req']}")
    assert not result.ok and result.message.data["reason"] == "upload_failed"


@pytest.fixture
def burst(tmp_path: Path) -> list[Path]:
    """200 files: most small, every 40th a multipart one (3 parts)."""
    out = []
    for i in range(200):
        path = tmp_path / "in" / f"NOAA-20_20261121_{10 + i // 60:02d}{i % 60:02d}_{i:05d}.h5"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(os.urandom(11 * MiB if i % 40 == 0 else 2000 + i))
        out.append(path)
    return out


@pytest.fixture
def daemon_config(base_config: dict[str, Any], tmp_path: Path) -> Iterator[Path]:
    base_config["endpoints"]["default"].update({"multipart_threshold": "5MiB",
                                                "multipart_chunksize": "5MiB",
                                                "max_parts_in_flight": 2, "max_parallel": 8})
    base_config["journal"] = {"path": str(tmp_path / "journal.sqlite")}
    cfg = tmp_path / "trollpush.yaml"
    cfg.write_text(yaml.safe_dump(base_config))
    yield cfg


def _announce_all(producer: Producer, files: list[Path]) -> None:
    for p in files:
        producer.send("/new/file/viirs/", "file", {"uri": str(p), "sensor": "viirs"})


def _landed(s3: Any, bucket: str) -> dict[str, str]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"].rsplit("/", 1)[-1]] = obj["Key"]
    return out


def _check_all_landed(s3: Any, bucket: str, files: list[Path], listener: Listener) -> None:
    keys = _landed(s3, bucket)
    assert set(keys) == {p.name for p in files}
    for p in files:
        body = s3.get_object(Bucket=bucket, Key=keys[p.name])["Body"].read()
        assert _md5(body) == _md5(p.read_bytes()), p.name
    announced = {m.data["uid"] for m in listener.of_type("file")}
    assert announced == {p.name for p in files}
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def _restart_and_finish(config: Path, log: Path, burst: list[Path], listener: Listener,
                        s3: Any, bucket: str) -> None:
    """Start the daemon again: it finishes the burst from its journal."""
    second = DaemonProcess(config, log)
    try:
        listener.wait_for(lambda ms: {m.data["uid"] for m in ms if m.type == "file"}
                          >= {p.name for p in burst}, 120, "all 200 completions")
    finally:
        assert second.stop() == 0
    _check_all_landed(s3, bucket, burst, listener)


def _cut_burst(config: Path, log: Path, producer: Producer, listener: Listener,
               burst: list[Path], *, after: int, sig: int, exit_code: int,
               timeout: float = 60) -> None:
    """Announce the burst, and stop the daemon with ``sig`` once ``after`` completions
    are out (and before all of them)."""
    daemon = DaemonProcess(config, log)
    try:
        link(producer, listener, "/new/file/viirs/")
        _announce_all(producer, burst)
        wait_until(lambda: len(listener.of_type("file")) >= after, 60, "some completions")
    finally:
        assert daemon.stop(sig, timeout=timeout) == exit_code
    assert len(listener.of_type("file")) < len(burst), "the burst finished before the stop"


def test_kill_9_mid_burst_then_restart(daemon_config: Path, tmp_path: Path, burst: list[Path],
                                       producer: Producer, listener: Listener, s3: Any,
                                       bucket: str) -> None:
    """kill -9 while 200 files (some multipart) are in flight; the restarted daemon
    finishes them all from its journal: every object right, every completion announced
    at least once."""
    log = tmp_path / "daemon.log"
    _cut_burst(daemon_config, log, producer, listener, burst, after=20,
               sig=signal.SIGKILL, exit_code=-signal.SIGKILL)
    _restart_and_finish(daemon_config, log, burst, listener, s3, bucket)
    assert "resuming" in log.read_text()


def test_multipart_created_but_not_recorded_is_aborted_at_recovery(
        base_config: dict[str, Any], s3: Any, bucket: str, tmp_path: Path) -> None:
    """kill -9 between CreateMultipartUpload and its journal record leaves an upload the
    journal cannot name: the restarted daemon aborts it, then uploads the file afresh."""
    path = tmp_path / "NOAA-20_20261121_1005_12345.h5"
    path.write_bytes(os.urandom(6 * MiB))
    base_config["endpoints"]["default"].update(multipart_threshold="5MiB",
                                               multipart_chunksize="5MiB")
    base_config["journal"] = {"path": str(tmp_path / "journal.sqlite")}
    config = parse_config(base_config)
    request = build_request(new_message("/new/file/viirs/", "file", {"uri": str(path)}),
                            origin="subscribe")
    job = Router(config).route(request).jobs[0]
    (upload,) = job.uploads

    async def run_that_crashed() -> None:  # accepted, transfer begun, nothing more recorded
        assert config.journal.path is not None
        journal = SQLiteJournal(config.journal.path)
        await journal.open()
        await journal.accepted(request)
        await journal.begin(job, True)
        await journal.close()

    asyncio.run(run_that_crashed())
    s3.create_multipart_upload(Bucket=bucket, Key=upload.key)  # its id never got recorded
    s3.create_multipart_upload(Bucket=bucket, Key=upload.key + ".other")  # not this object
    with running_daemon(base_config) as daemon:
        wait_until(lambda: daemon.counts["completed"] == 1, 30, "the recovered upload")
    assert s3.get_object(Bucket=bucket, Key=upload.key)["Body"].read() == path.read_bytes()
    left = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in left] == [upload.key + ".other"]


def test_sigterm_mid_burst_then_restart(daemon_config: Path, tmp_path: Path,
                                        burst: list[Path], producer: Producer,
                                        listener: Listener, s3: Any, bucket: str) -> None:
    """SIGTERM during a burst: the daemon exits within its grace period, leaving the rest
    in its journal; the next start finishes it."""
    cfg = yaml.safe_load(daemon_config.read_text())
    cfg["daemon"]["shutdown_grace"] = 0.1  # far too short for ~190 uploads in flight
    cfg["endpoints"]["default"]["max_parallel"] = 4
    daemon_config.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "daemon.log"
    # exits within the grace, not after the burst
    _cut_burst(daemon_config, log, producer, listener, burst, after=10,
               sig=signal.SIGTERM, exit_code=0, timeout=20)
    _restart_and_finish(daemon_config, log, burst, listener, s3, bucket)


def test_a_burst_of_thousands_is_accepted_even_when_uploads_stall(
        base_config: dict[str, Any], producer: Producer, listener: Listener,
        silent_server: str, tmp_path: Path) -> None:
    """3,000 announcements at once while no upload can finish: every one is read and
    journaled (none dropped on the daemon's side of the wire)."""
    base_config["endpoints"]["default"] = {"url": silent_server, "prewarm": 0,
                                           "attempt_timeout": 60}
    base_config["daemon"]["shutdown_grace"] = 0.5
    path = tmp_path / "NOAA-20_20261121_1005_12345.h5"
    path.write_bytes(b"x")
    with running_daemon(base_config) as daemon:
        link(producer, listener, "/new/file/viirs/")
        for i in range(3000):
            producer.send("/new/file/viirs/", "file", {"uri": str(path), "n": i})
        wait_until(lambda: daemon.counts["accepted"] == 3000, 60, "3,000 accepted")
        unfinished = len(daemon.journal.unfinished())
    assert unfinished == 3000


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_memory_stays_flat_under_hostile_frames(base_config: dict[str, Any],
                                                ports: dict[str, int]) -> None:
    """Thousands of malformed and oversized requests: each answered, memory flat."""
    import zmq

    frames = [b"\xff" * 100, b"pytroll://x file", b"x" * 2_000_000,
              b'pytroll://x file a@b 2026-11-21T10:00:00 v1.01 application/json {"uri": 1}']
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        with running_daemon(base_config):
            sock.connect(f"tcp://127.0.0.1:{ports['req']}")

            def volley(n: int) -> None:
                for i in range(n):  # one at a time: what stays behind is the daemon's
                    sock.send_multipart([b"", frames[i % len(frames)]])
                    assert sock.poll(20000), "a frame went unanswered"
                    sock.recv_multipart()

            volley(400)  # warm up: caches, pools, allocator
            before = _rss()
            volley(2000)
            growth = _rss() - before
    finally:
        sock.close()
        ctx.term()
    assert growth < 30 * MiB, f"memory grew by {growth / MiB:.1f} MiB"


def test_store_stopped_for_30_s_mid_burst(daemon_config: Path, tmp_path: Path,
                                          producer: Producer, listener: Listener) -> None:
    """The store goes away for 30 s in the middle of a burst and comes back (same port,
    same data): every file lands, the daemon does not crash."""
    port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        import boto3

        store = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}",
                             region_name="us-east-1")
        bucket = "tp-outage-" + os.urandom(4).hex()
        store.create_bucket(Bucket=bucket)
        cfg = yaml.safe_load(daemon_config.read_text())
        cfg["endpoints"]["default"].update({"url": f"http://127.0.0.1:{port}", "tries": 2,
                                            "attempt_timeout": 2, "connect_timeout": 1})
        cfg["targets"][0]["destination"] = f"s3://{bucket}/{{uid}}"
        daemon_config.write_text(yaml.safe_dump(cfg))
        files = []
        for i in range(60):
            p = tmp_path / "in" / f"NOAA-20_20261121_1100_{i:05d}.h5"
            p.parent.mkdir(exist_ok=True)
            p.write_bytes(os.urandom(3000))
            files.append(p)
        daemon = DaemonProcess(daemon_config, tmp_path / "daemon.log")
        try:
            link(producer, listener, "/new/file/viirs/")
            _announce_all(producer, files[:30])
            listener.wait_for(lambda ms: len([m for m in ms if m.type == "file"]) >= 30, 60,
                              "the first half")
            server.stop()
            _announce_all(producer, files[30:])
            wait_until(lambda: "again in" in (tmp_path / "daemon.log").read_text(), 30,
                       "the daemon waiting for the store")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the store stays away for 30 s
                assert daemon.proc.poll() is None, "the daemon died"
                time.sleep(0.5)
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
            listener.wait_for(lambda ms: {m.data["uid"] for m in ms if m.type == "file"}
                              >= {p.name for p in files}, 120, "all 60 completions")
        finally:
            assert daemon.stop() == 0
        for p in files:
            assert store.get_object(Bucket=bucket, Key=p.name)["Body"].read() == \
                p.read_bytes()
    finally:
        server.stop()
