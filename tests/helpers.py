"""Test helpers: real posttroll sockets, an in-process daemon, bounded waits."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from posttroll.message import Message
from posttroll.publisher import create_publisher_from_dict_config
from posttroll.subscriber import create_subscriber_from_dict_config

from trollpush.config import EndpointConfig, load_config, parse_config
from trollpush.inputs import REGISTRY, InputFactory
from trollpush.journal import Journal
from trollpush.models import SourceFile, Upload
from trollpush.service import Service, build_service
from trollpush.transfer import TransferEngine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Poll a condition with a bounded timeout (never a fixed sleep for correctness)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class Listener:
    """An independent posttroll subscriber collecting messages in a thread."""

    def __init__(self, address: str, topics: list[str] | None = None) -> None:
        self._sub = create_subscriber_from_dict_config(
            {"addresses": [address], "nameserver": False, "topics": topics or ["/"]})
        self.messages: list[Message] = []
        self.ignored: set[str] = set()  # uris whose announcements are dropped (link probes)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for m in self._sub.recv(timeout=0.05):
            if self._stop.is_set():
                return
            if m is not None and not (isinstance(m.data, dict)
                                      and m.data.get("uri") in self.ignored):
                with self._lock:
                    self.messages.append(m)

    def of_type(self, kind: str) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m.type == kind]

    def wait_for(self, pred: Callable[[list[Message]], bool], timeout: float = 15.0,
                 what: str = "messages") -> list[Message]:
        def check() -> bool:
            with self._lock:
                return pred(list(self.messages))
        wait_until(check, timeout, what)
        with self._lock:
            return list(self.messages)

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sub.close()


class Producer:
    """A posttroll publisher standing in for a data producer."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._pub = create_publisher_from_dict_config(
            {"name": "test-producer", "address": address, "nameservers": False})
        self._pub.start()

    def send(self, subject: str, kind: str, data: dict[str, Any]) -> None:
        self._pub.send(Message(subject, kind, data).encode())

    def send_raw(self, raw: str) -> None:
        self._pub.send(raw)

    def close(self) -> None:
        self._pub.stop()


def link(producer: Producer, listener: Listener, subject: str, timeout: float = 15.0) -> None:
    """Make sure both pub-sub links are joined: publish a message the daemon refuses (a file
    on another host) until its failure announcement arrives.  The probe's uri is unique and
    the listener drops its announcements from then on, so late duplicates never show."""
    heard(lambda probe: producer.send(subject, "file", {"uri": probe}), listener, timeout)


def heard(send: Callable[[str], None], listener: Listener, timeout: float = 15.0,
          wait: float = 0.2) -> None:
    """Send a probe (a file on another host, which the daemon refuses) with ``send`` until
    its failure announcement reaches the listener, which ignores it from then on."""
    probe = f"ssh://elsewhere.invalid/probe-{uuid.uuid4().hex}.h5"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        send(probe)
        try:
            listener.wait_for(lambda ms: any(m.type == "failure" and m.data.get("uri") == probe
                                             for m in ms), timeout=wait)
        except AssertionError:
            continue
        with listener._lock:
            listener.ignored.add(probe)
            listener.messages = [m for m in listener.messages
                                 if not (isinstance(m.data, dict) and m.data.get("uri") == probe)]
        return
    raise AssertionError("pub-sub link not established")


@contextmanager
def running_daemon(config: dict[str, Any] | Path, journal: Journal | None = None, *,
                   registry: Sequence[InputFactory] = REGISTRY) -> Iterator[Service]:
    """A daemon in a background thread with its own event loop; stopped on exit
    (``config``: a mapping, or a file, which a reload reads again)."""
    cfg = load_config(config) if isinstance(config, Path) else parse_config(config)
    daemon = build_service(cfg, journal=journal, inputs=registry)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(daemon.run())
        except BaseException as err:  # surfaced in the test thread
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: daemon.ready.is_set() or bool(errors) or not thread.is_alive(), 20,
                   "daemon ready")
    except AssertionError:
        daemon.stop()
        thread.join(timeout=40)
        raise
    if errors:
        raise errors[0]
    try:
        yield daemon
    finally:
        daemon.stop()
        thread.join(timeout=40)
        assert not thread.is_alive(), "daemon did not stop"
        if errors:
            raise errors[0]


async def wait_until_async(pred: Callable[[], bool], limit: float = 15.0,
                           what: str = "condition") -> None:
    """wait_until for code running on the event loop."""
    for _ in range(int(limit / 0.01)):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out after {limit} s waiting for {what}")


def upload_of(path: Path, bucket: str, key: str) -> Upload:
    return Upload(SourceFile(uri=str(path), path=path, uid=path.name), bucket, key)


async def started_engine(url: str, **kw: Any) -> TransferEngine:
    """An engine with one endpoint ``default`` (not prewarmed unless asked)."""
    kw.setdefault("prewarm", 0)
    engine = TransferEngine({"default": EndpointConfig(name="default", url=url,
                                                       region="us-east-1", **kw)})
    await engine.start()
    return engine


@contextmanager
def daemon_process(config: dict[str, Any], tmp_path: Path, *args: str
                   ) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``python -m trollpush run CONFIG ARGS`` in a process of its own, its output in a log
    file; killed (by its PID) if the test left it running."""
    cfg = tmp_path / "trollpush.yaml"
    cfg.write_text(yaml.safe_dump(config))
    log = tmp_path / "daemon.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "trollpush", "run", str(cfg), *args],
                                stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class DaemonProcess:
    """`trollpush run` as a subprocess on a fixed config (and so journal), ready when its
    log says so; each run appends to the same log."""

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


class Recorder:
    """A multipart upload's progress kept in memory, as the journal keeps it on disk."""

    def __init__(self) -> None:
        self.recovered = False
        self.abandoned = False
        self.started: tuple[str, int, Any] | None = None
        self.parts: dict[int, tuple[str, str | None]] = {}

    async def multipart_started(self, upload: Upload, upload_id: str, part_size: int,
                                stat: Any) -> None:
        self.started = (upload_id, part_size, stat)
        self.parts = {}

    async def part_done(self, upload: Upload, number: int, etag: str,
                        checksum: str | None) -> None:
        self.parts[number] = (etag, checksum)

    def multipart(self, upload: Upload) -> Any:
        if self.started is None:
            return None
        upload_id, part_size, stat = self.started
        return upload_id, dict(self.parts), part_size, stat


async def assert_twin_of_a_new_journal(path: Path, new: Path) -> None:
    """An upgraded journal file has exactly the tables and columns of a new one."""
    import sqlite3

    from trollpush.journal import SQLiteJournal

    fresh = SQLiteJournal(new)
    await fresh.open()
    await fresh.close()

    def schema(where: Path) -> list[Any]:
        conn = sqlite3.connect(where)
        try:
            return [[r[1:] for r in conn.execute(f"PRAGMA table_info({t})")]
                    for t in ("requests", "jobs", "multipart", "parts", "landed", "quarantine")]
        finally:
            conn.close()

    assert schema(path) == schema(new)


def raw_request(address: str, frame: bytes, timeout: float = 30.0) -> Any:
    """One REQ frame sent as is (no client library), and the decoded reply."""
    import zmq

    from trollpush.messages import decode_message

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    try:
        sock.connect(address)
        sock.send(frame)
        return decode_message(sock.recv().decode())
    finally:
        sock.close(linger=0)
        ctx.term()
