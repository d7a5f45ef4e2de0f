"""A JetStream request cut off by kill -9 or a stop is in its instance's journal *and*,
unacknowledged, in the stream: it is done once.  Real ``trollpush run`` processes, a real
``nats-server -js`` and moto.

* the instance restarts before anyone else takes the message: the message comes back to
  it, and the journal's request goes on (the multipart upload resumes; the parts already
  there are not sent again): one completion, the stream empty;
* another instance takes the message and finishes it first: the restarted instance finds
  the message gone, ends its copy without a word and aborts its multipart upload (no
  parts left): one completion overall;
* the same after a graceful stop that cut the request off (and handed its message back).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helpers import Listener, free_port, heard, wait_until
from .natsd import publish, state
from .test_jetstream import file_message

pytest.importorskip("nats", reason="nats-py is not installed (trollpush[jetstream])")
pytestmark = pytest.mark.slow

MiB = 1024 * 1024
NAME = "NOAA-20_20261121_1005_{orbit:05d}.h5"
SUBJECT = "/new/file/viirs/"


class Instance:
    """One trollpush instance: its config file, journal and log; ``start`` runs it as a
    process (``trollpush run``), which ``stop`` ends by its PID."""

    def __init__(self, name: str, config: dict[str, Any], tmp_path: Path) -> None:
        self.dir = tmp_path / name
        self.dir.mkdir()
        self.journal = self.dir / "journal.sqlite"
        self.log = self.dir / "daemon.log"
        self.pub = f"tcp://127.0.0.1:{free_port()}"
        self.settings = {**config, "journal": {"path": str(self.journal)},
                         "publish": {**config["publish"], "address": self.pub}}
        self.config = self.dir / "trollpush.yaml"
        self.config.write_text(yaml.safe_dump(self.settings))
        self.proc: subprocess.Popen[bytes] | None = None
        self._mark = 0

    def daemon(self, **settings: Any) -> None:
        """Change its ``daemon:`` settings (before a start)."""
        self.settings["daemon"] = {**self.settings.get("daemon", {}), **settings}
        self.config.write_text(yaml.safe_dump(self.settings))

    def start(self) -> None:
        self._mark = len(self.log.read_text()) if self.log.exists() else 0
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "trollpush", "run", "-v", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
        wait_until(lambda: "trollpush ready" in self.text() or self.proc is None
                   or self.proc.poll() is not None, 30, f"{self.dir.name} ready")
        assert self.proc.poll() is None, self.text()

    def text(self) -> str:
        """This run's log."""
        return self.log.read_text()[self._mark:] if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def parts(self) -> int:
        """Parts of multipart uploads recorded in its journal now."""
        return self._count("SELECT count(*) FROM parts")

    def open_requests(self) -> int:
        return self._count("SELECT count(*) FROM requests")

    def _count(self, sql: str) -> int:
        if not self.journal.exists():
            return 0
        conn = sqlite3.connect(f"file:{self.journal}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute(sql).fetchone()[0])
        except sqlite3.OperationalError:  # not created yet
            return 0
        finally:
            conn.close()


@pytest.fixture
def config(base_config: dict[str, Any], nats_url: str) -> dict[str, Any]:
    """jetstream the only input, on a stream of its own; multipart from 5 MiB, one part
    at a time, slow enough (40 Mbit/s) to be cut off in the middle."""
    config = dict(base_config)
    del config["subscribe"], config["requests"]
    tag = uuid.uuid4().hex[:8]
    config["jetstream"] = {"servers": [nats_url], "stream": f"TP{tag}",
                           "subject": f"trollpush.test.{tag}", "ack_wait": 8,
                           "max_deliver": 5}
    config["endpoints"]["default"].update(
        multipart_threshold="5MiB", multipart_chunksize="5MiB", max_parts_in_flight=1,
        bandwidth_limit="40Mbit", tries=3)
    return config


@pytest.fixture
def granule(tmp_path: Path) -> Path:
    path = tmp_path / NAME.format(orbit=1)
    path.write_bytes(os.urandom(30 * MiB))  # 6 parts, ~6 s at 40 Mbit/s
    return path


@pytest.fixture
def instances(config: dict[str, Any], tmp_path: Path) -> Iterator[list[Instance]]:
    """Instance ``a`` (slow) and ``b`` (no bandwidth limit): same stream and consumer,
    journals of their own; every process stopped by its PID at the end."""
    fast = {**config, "endpoints": {"default": {
        k: v for k, v in config["endpoints"]["default"].items() if k != "bandwidth_limit"}}}
    made = [Instance("a", config, tmp_path), Instance("b", fast, tmp_path)]
    yield made
    for each in made:
        each.stop(signal.SIGKILL)


@contextlib.contextmanager
def _listening(address: str) -> Iterator[Listener]:
    listener = Listener(address)
    try:
        yield listener
    finally:
        listener.close()


def _linked(url: str, subject: str, listener: Listener) -> None:
    """The listener hears the instance now running alone: a probe it refuses (a file on
    another host) goes through the stream until its failure arrives."""
    from posttroll.message import Message

    heard(lambda probe: publish(url, subject, Message(SUBJECT, "file", {"uri": probe})
                                .encode().encode()), listener, 20, wait=0.5)


def _cut_off(a: Instance, url: str, js: dict[str, Any], granule: Path, listener: Listener,
             sig: int, exit_code: int) -> None:
    """``a`` takes the request and is stopped with ``sig`` once two parts are up."""
    _started(a, url, js, granule, listener)
    assert a.stop(sig) == exit_code
    assert a.open_requests() == 1  # in its journal, and unacknowledged in the stream
    assert state(url, js["stream"])["messages"] == 1
    assert not listener.of_type("file")


def _check_landed(s3: Any, bucket: str, granule: Path) -> None:
    key = f"j01/2026/11/21/{granule.name}"
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == granule.read_bytes()
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_kill_9_then_the_same_instance_continues_the_request_when_its_message_comes_back(
        config: dict[str, Any], instances: list[Instance], nats_url: str, granule: Path,
        s3: Any, bucket: str) -> None:
    a, _ = instances
    js = config["jetstream"]
    with _listening(a.pub) as listener:
        _cut_off(a, nats_url, js, granule, listener, signal.SIGKILL, -signal.SIGKILL)
        started = time.monotonic()
        a.start()  # before ack_wait runs out: the message is still held for the dead one
        assert time.monotonic() - started < js["ack_wait"]
        _linked(nats_url, js["subject"], listener)
        listener.wait_for(lambda ms: any(m.type == "file" for m in ms), 60,
                          "the completion after the restart")
        wait_until(lambda: state(nats_url, js["stream"])["messages"] == 0, 10,
                   "the message acknowledged")
        wait_until(lambda: a.open_requests() == 0, 10, "the journal record finished")
        assert a.stop() == 0
        assert len(listener.of_type("file")) == 1
    log = a.text()
    assert "came back: continuing" in log, log
    resumed = int(log.split("resuming multipart upload", 1)[1].split(": ", 1)[1]
                  .split(" part(s)", 1)[0])
    assert resumed >= 2  # those are not sent again
    assert log.count("upload complete") == 1
    _check_landed(s3, bucket, granule)


@pytest.mark.parametrize("cut", ["kill-9", "graceful-stop"])
def test_another_instance_finishes_it_and_the_restarted_one_hands_its_copy_over(
        config: dict[str, Any], instances: list[Instance], nats_url: str, granule: Path,
        s3: Any, bucket: str, cut: str) -> None:
    """kill -9 (the message comes back after ack_wait), or a graceful stop whose grace
    is over (the message is handed back at once): ``b`` does the request; ``a``, started
    again, finds its message gone, closes its journal record without announcing
    anything and aborts the multipart upload it had left for resuming."""
    a, b = instances
    js = config["jetstream"]
    graceful = cut == "graceful-stop"
    if graceful:  # a's grace is over at once: the request is cut off, kept, handed back
        a.daemon(shutdown_grace=0.2)
    with _listening(a.pub) as heard_a, _listening(b.pub) as heard_b:
        if graceful:  # b runs already: the message handed back goes to b at once
            _started(a, nats_url, js, granule, heard_a)
            b.start()
            assert a.stop(signal.SIGTERM) == 0
            assert "left in the journal for the next start" in a.text()
            assert a.open_requests() == 1 and not heard_a.of_type("file")
        else:
            _cut_off(a, nats_url, js, granule, heard_a, signal.SIGKILL, -signal.SIGKILL)
            b.start()
        heard_b.wait_for(lambda ms: any(m.type == "file" for m in ms), 60,
                         "b's completion")
        wait_until(lambda: state(nats_url, js["stream"])["messages"] == 0, 10,
                   "the message acknowledged by b")
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) != []  # a's
        a.start()
        wait_until(lambda: "handed over" in a.text(), 30, "a hands its copy over")
        wait_until(lambda: a.open_requests() == 0, 10, "a's journal record closed")
        _check_landed(s3, bucket, granule)
        assert a.stop() == 0 and b.stop() == 0
        assert not heard_a.of_type("file")
        assert len(heard_b.of_type("file")) == 1
    assert "upload complete" not in a.text()
    assert "multipart upload aborted" in a.text()


def _started(a: Instance, url: str, js: dict[str, Any], granule: Path,
             listener: Listener) -> None:
    """``a`` runs, has taken the request, and has two parts of it up."""
    a.start()
    _linked(url, js["subject"], listener)
    publish(url, js["subject"], file_message(granule))
    wait_until(lambda: a.parts() >= 2, 60, "two parts recorded")


# --- a message delivered again whose object landed already ---------------------------------


async def _delivered_once_and_lost(url: str, config: dict[str, Any], payload: bytes) -> int:
    """The stream and consumer as the daemon makes them, the message published, and
    fetched once by a stand-in for an instance that dies (its delivery handed back, to
    come again in a few seconds: the daemon's announcements are heard by then): the next
    delivery is the second."""
    import nats

    from trollpush.config import parse_config
    from trollpush.inputs._jetstream_setup import consumer as _consumer
    from trollpush.inputs._jetstream_setup import stream as _stream

    cfg = parse_config(config).jetstream
    assert cfg is not None
    nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=5)
        await _stream(js, cfg)
        await _consumer(js, cfg)
        await js.publish(cfg.subject, payload)
        sub = await js.pull_subscribe_bind(consumer=cfg.consumer, stream=cfg.stream)
        msgs = await sub.fetch(1, timeout=5)
        await msgs[0].nak(delay=8)
        return int(msgs[0].metadata.num_delivered or 0)
    finally:
        await nc.close()


@pytest.mark.parametrize("there", ["same", "other"])
def test_a_redelivered_request_whose_object_landed_is_announced_without_a_write(
        config: dict[str, Any], nats_url: str, s3: Any, tmp_path: Path, there: str) -> None:
    """The instance that had the message died after its upload and before its ack: the
    object is there, on a versioned bucket.  The same bytes: announced, nothing written
    (one version), counted ``already_there``; other bytes: written over them."""
    import asyncio

    from trollpush import stats

    from .helpers import running_daemon

    bucket = f"tp-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    config["targets"][0]["destination"] = config["targets"][0]["destination"].replace(
        config["targets"][0]["destination"].split("/")[2], bucket)
    # moto keeps no CRC32C of a single PUT: the ETag (the MD5) is compared
    config["endpoints"]["default"] = {**config["endpoints"]["default"], "checksum": "md5"}
    del config["endpoints"]["default"]["bandwidth_limit"]
    config["journal"] = {"path": str(tmp_path / "journal.sqlite")}
    js = config["jetstream"]
    path = tmp_path / NAME.format(orbit=2)
    path.write_bytes(os.urandom(70_000))
    key = f"j01/2026/11/21/{path.name}"
    s3.put_object(Bucket=bucket, Key=key,
                  Body=path.read_bytes() if there == "same" else os.urandom(70_000))
    assert asyncio.run(_delivered_once_and_lost(nats_url, config, file_message(path))) == 1
    with _listening(config["publish"]["address"]) as listener, \
            running_daemon(config) as daemon:
        _linked(nats_url, js["subject"], listener)
        done = listener.wait_for(lambda ms: any(m.type == "file" for m in ms), 30,
                                 "the completion")
        wait_until(lambda: state(nats_url, js["stream"])["messages"] == 0, 10,
                   "the message acknowledged")
        counted = {o: daemon.stats.count(stats.UPLOADS, outcome=o)
                   for o in ("completed", "already_there")}
    versions = s3.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]
    item = next(m.data for m in done if m.type == "file")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == path.read_bytes()
    if there == "same":
        assert counted == {"completed": 0, "already_there": 1}
        assert len(versions) == 1 and item["version_id"] == versions[0]["VersionId"]
    else:
        assert counted == {"completed": 1, "already_there": 0}
        assert len(versions) == 2
