"""Scale-out, end to end: three ``trollpush run`` processes share one JetStream work queue.

Every instance subscribes to the same posttroll producer and bridges what it hears into
the stream, so each announcement enters the stream once (``Nats-Msg-Id``) and is done by
one instance.  A burst lands exactly once; an instance killed with SIGKILL, or the NATS
server restarted, in the middle of a burst loses nothing.  Everything runs on loopback: a
real ``nats-server -js``, moto, real posttroll sockets; every process is stopped by its
PID."""

from __future__ import annotations

import copy
import hashlib
import os
import re
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helpers import DaemonProcess, Listener, Producer, free_port, heard, wait_until
from .natsd import NatsServer, state

pytest.importorskip("nats", reason="nats-py is not installed (trollpush[jetstream])")
pytestmark = pytest.mark.slow

SUBJECT = "/new/file/viirs/"
N_FILES = 300
#: a line per object written; "already there" marks one found at the store, not written
WRITTEN = re.compile(r"upload complete .*\n")


class Cluster:
    """``n`` daemons as processes on one stream and consumer, all subscribed to one
    producer and bridging; one listener on each daemon's publisher."""

    def __init__(self, base: dict[str, Any], tmp_path: Path, nats_url: str, n: int,
                 **endpoint: Any) -> None:
        tag = uuid.uuid4().hex[:8]
        self.stream = f"TP{tag}"
        self.tmp = tmp_path
        self.configs: list[Path] = []
        self.listeners: list[Listener] = []
        self.daemons: list[DaemonProcess | None] = []
        for i in range(n):
            config = copy.deepcopy(base)
            del config["requests"]
            port = free_port()
            config["publish"]["address"] = f"tcp://127.0.0.1:{port}"
            config["endpoints"]["default"].update(endpoint)
            config["journal"] = {"path": str(tmp_path / f"journal-{i}.sqlite")}
            config["daemon"].update(max_in_flight=8, shutdown_grace=5)
            config["jetstream"] = {"servers": [nats_url], "stream": self.stream,
                                   "subject": f"trollpush.test.{tag}", "ack_wait": 3,
                                   "max_deliver": 20, "bridge": True}
            path = tmp_path / f"instance-{i}.yaml"
            path.write_text(yaml.safe_dump(config))
            self.configs.append(path)
            self.listeners.append(Listener(f"tcp://127.0.0.1:{port}"))
            self.daemons.append(None)

    def start(self, producer: Producer) -> None:
        for i, config in enumerate(self.configs):
            self.daemons[i] = DaemonProcess(config, self.log(i))
        for listener in self.listeners:  # every instance hears the producer
            heard(lambda probe: producer.send(SUBJECT, "file", {"uri": probe}), listener, 20,
                  wait=0.3)

    def log(self, i: int) -> Path:
        return self.tmp / f"instance-{i}.log"

    def kill(self, i: int) -> None:
        daemon = self.daemons[i]
        assert daemon is not None
        assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
        self.daemons[i] = None

    def stop(self) -> list[int]:
        codes = [d.stop() for d in self.daemons if d is not None]
        self.daemons = [None] * len(self.daemons)
        for listener in self.listeners:
            listener.close()
        return codes

    def completions(self) -> Counter[str]:
        """Completions announced, by file name, over all the instances."""
        return Counter(m.data["uid"] for each in self.listeners for m in each.of_type("file"))

    def failures(self) -> list[Any]:
        """Failures announced, but the link probes' (files on another host)."""
        return [m.data for each in self.listeners for m in each.of_type("failure")
                if "elsewhere.invalid" not in str(m.data.get("uri"))]

    def writes(self) -> tuple[list[int], list[int]]:
        """Per instance: objects written, and objects found already there."""
        written, found = [], []
        for i in range(len(self.configs)):
            lines = WRITTEN.findall(self.log(i).read_text()) if self.log(i).exists() else []
            found.append(sum("already there" in line for line in lines))
            written.append(len(lines) - found[-1])
        return written, found


def _burst(tmp_path: Path, size: tuple[int, int]) -> list[Path]:
    out = []
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(N_FILES):
        path = folder / f"NOAA-20_20261121_{10 + i // 60:02d}{i % 60:02d}_{i:05d}.h5"
        path.write_bytes(os.urandom(size[0] + (i * 7919) % (size[1] - size[0])))
        out.append(path)
    return out


def _announce(producer: Producer, files: list[Path]) -> None:
    for p in files:
        producer.send(SUBJECT, "file", {"uri": str(p), "sensor": "viirs"})


def _all_announced(cluster: Cluster, files: list[Path], timeout: float) -> None:
    names = {p.name for p in files}
    wait_until(lambda: set(cluster.completions()) >= names, timeout,
               f"completions of all {len(files)} files")


def _check_landed(s3: Any, bucket: str, files: list[Path]) -> None:
    """Every file is at the store, byte-identical; no multipart upload is left."""
    keys: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            keys[obj["Key"].rsplit("/", 1)[-1]] = obj["Key"]
    assert set(keys) == {p.name for p in files}
    for p in files:
        body = s3.get_object(Bucket=bucket, Key=keys[p.name])["Body"].read()
        assert hashlib.md5(body).digest() == hashlib.md5(p.read_bytes()).digest(), p.name
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def _drained(url: str, cluster: Cluster) -> None:
    """The work queue is empty: every request was acknowledged."""
    wait_until(lambda: (lambda st: st["messages"] == 0 and st["ack_pending"] == 0)(
        state(url, cluster.stream)), 30, "the stream drained")


def test_three_instances_land_a_burst_exactly_once(
        base_config: dict[str, Any], tmp_path: Path, natsd: NatsServer,
        producer: Producer, s3: Any, bucket: str) -> None:
    files = _burst(tmp_path, (1000, 9000))
    cluster = Cluster(base_config, tmp_path, natsd.url, 3)
    try:
        cluster.start(producer)
        _announce(producer, files)
        _all_announced(cluster, files, 120)
        _drained(natsd.url, cluster)
        done = cluster.completions()
        written, found = cluster.writes()
    finally:
        assert cluster.stop() == [0, 0, 0]
    print(f"\nuploads per instance: {written}; found already there: {found}")
    assert sum(done.values()) == N_FILES and max(done.values()) == 1, done.most_common(3)
    assert sum(written) == N_FILES and sum(found) == 0
    assert sum(1 for n in written if n > 0) >= 2, f"not spread: {written}"
    assert cluster.failures() == []
    _check_landed(s3, bucket, files)


def test_an_instance_killed_mid_burst_loses_nothing(
        base_config: dict[str, Any], tmp_path: Path, natsd: NatsServer,
        producer: Producer, s3: Any, bucket: str) -> None:
    """SIGKILL one of three instances while it uploads: JetStream gives what it held to
    the others after ack_wait.  Only what it had in flight may be written twice."""
    files = _burst(tmp_path, (30_000, 50_000))
    cluster = Cluster(base_config, tmp_path, natsd.url, 3, bandwidth_limit="4Mbit")
    try:
        cluster.start(producer)
        _announce(producer, files)
        wait_until(lambda: cluster.writes()[0][0] >= 15, 60, "instance 0 at work")
        cluster.kill(0)
        done_at_kill = sum(cluster.completions().values())
        _all_announced(cluster, files, 180)
        _drained(natsd.url, cluster)
        written, found = cluster.writes()
    finally:
        cluster.stop()
    duplicates = sum(written) - N_FILES
    print(f"\nkilled instance 0 after {done_at_kill} completions; uploads per instance: "
          f"{written}; found already there: {found}; duplicate uploads: {duplicates}")
    assert done_at_kill < N_FILES, "the burst finished before the kill"
    assert 0 <= duplicates <= 8  # at most the killed instance's max_in_flight
    assert cluster.failures() == []
    _check_landed(s3, bucket, files)


def test_the_nats_server_restarted_mid_burst_loses_nothing(
        base_config: dict[str, Any], tmp_path: Path, natsd: NatsServer,
        producer: Producer, s3: Any, bucket: str) -> None:
    """The stream is kept in file storage: after a restart of the server the instances
    reconnect, and every request is done and announced at least once."""
    files = _burst(tmp_path, (30_000, 50_000))
    cluster = Cluster(base_config, tmp_path, natsd.url, 3, bandwidth_limit="2Mbit")
    try:
        cluster.start(producer)
        _announce(producer, files)
        wait_until(lambda: sum(cluster.completions().values()) >= 60, 60, "60 completions")
        done_at_restart = sum(cluster.completions().values())
        began = time.monotonic()
        natsd.restart()
        took = time.monotonic() - began
        _all_announced(cluster, files, 180)
        _drained(natsd.url, cluster)
        written, found = cluster.writes()
        done = cluster.completions()
    finally:
        assert cluster.stop() == [0, 0, 0]
    print(f"\nNATS restarted after {done_at_restart} completions (in {took:.1f} s); uploads "
          f"per instance: {written}; found already there: {found}; repeated completions: "
          f"{sum(done.values()) - N_FILES}")
    assert done_at_restart < N_FILES, "the burst finished before the restart"
    assert cluster.failures() == []
    _check_landed(s3, bucket, files)
