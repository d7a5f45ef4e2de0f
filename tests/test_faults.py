"""Faults, bounded and on loopback: a store that goes away, kill -9, SIGTERM mid-burst.

Each accepted request lands and is announced at least once, whatever happens to the
daemon or the store.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from moto.server import ThreadedMotoServer

from trollpush import send

from .helpers import Listener, Producer, free_port, link, running_daemon, wait_until

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


class _Daemon:
    """`trollpush run` as a subprocess on a fixed config and journal."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        self._mark = len(log.read_text()) if log.exists() else 0  # only this run's lines
        with open(log, "a") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "trollpush", "run", str(config)],
                                         stdout=out, stderr=subprocess.STDOUT,
                                         env=os.environ.copy())
        wait_until(lambda: "trollpush ready" in log.read_text()[self._mark:]
                   or self.proc.poll() is not None, 30, "daemon ready")
        assert self.proc.poll() is None, log.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


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


def test_kill_9_mid_burst_then_restart(daemon_config: Path, tmp_path: Path, burst: list[Path],
                                       producer: Producer, listener: Listener, s3: Any,
                                       bucket: str) -> None:
    """kill -9 while 200 files (some multipart) are in flight; the restarted daemon
    finishes them all from its journal: every object right, every completion announced
    at least once."""
    log = tmp_path / "daemon.log"
    first = _Daemon(daemon_config, log)
    try:
        link(producer, listener, "/new/file/viirs/")
        _announce_all(producer, burst)
        wait_until(lambda: len(listener.of_type("file")) >= 20, 60, "some completions")
    finally:
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert len(listener.of_type("file")) < 200, "the burst finished before the kill"
    second = _Daemon(daemon_config, log)
    try:
        listener.wait_for(lambda ms: {m.data["uid"] for m in ms if m.type == "file"}
                          >= {p.name for p in burst}, 120, "all 200 completions")
    finally:
        assert second.stop() == 0
    _check_all_landed(s3, bucket, burst, listener)
    assert "resuming" in log.read_text()


def test_sigterm_mid_burst_then_restart(daemon_config: Path, tmp_path: Path,
                                        burst: list[Path], producer: Producer,
                                        listener: Listener, s3: Any, bucket: str) -> None:
    """SIGTERM during a burst: the daemon exits within its grace period, leaving the rest
    in its journal; the next start finishes it."""
    cfg = yaml.safe_load(daemon_config.read_text())
    cfg["daemon"]["shutdown_grace"] = 1
    daemon_config.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "daemon.log"
    first = _Daemon(daemon_config, log)
    try:
        link(producer, listener, "/new/file/viirs/")
        _announce_all(producer, burst)
        wait_until(lambda: len(listener.of_type("file")) >= 10, 60, "some completions")
    finally:
        assert first.stop(signal.SIGTERM, timeout=20) == 0  # grace 1 s, not the burst
    assert len(listener.of_type("file")) < 200, "the burst finished before the stop"
    second = _Daemon(daemon_config, log)
    try:
        listener.wait_for(lambda ms: {m.data["uid"] for m in ms if m.type == "file"}
                          >= {p.name for p in burst}, 120, "all 200 completions")
    finally:
        assert second.stop() == 0
    _check_all_landed(s3, bucket, burst, listener)
