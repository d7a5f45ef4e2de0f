"""posttroll nameserver mode: the daemon finds its producer through a real NameServer,
and starts (and keeps looking) when none runs yet."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import posttroll
import posttroll.publisher
import pytest
import yaml
import zmq
from posttroll.message import Message
from posttroll.ns import NameServer
from posttroll.publisher import create_publisher_from_dict_config

from .helpers import Listener, free_port, running_daemon, wait_until

#: the line that says what is missing and what to do (one, not a traceback)
MISSING = "no posttroll nameserver answers at"


@contextlib.contextmanager
def _nameserver(ports: dict[str, int]) -> Iterator[None]:
    """A NameServer on the given ports (posttroll's defaults are fixed: 5557, 16543,
    21200), multicast off, while posttroll in this process is set to those ports."""
    with posttroll.config.set(nameserver_port=ports["ns"], address_publish_port=ports["addr"],
                              broadcast_port=ports["bcast"]):
        ns = NameServer(multicast_enabled=False, restrict_to_localhost=True)
        thread = threading.Thread(target=ns.run, daemon=True)
        thread.start()
        try:
            yield
        finally:
            ns.stop()
            thread.join(timeout=10)


@pytest.fixture
def ns_ports() -> dict[str, int]:
    return {"ns": free_port(), "addr": free_port(), "bcast": free_port()}


@pytest.fixture
def nameserver(monkeypatch: pytest.MonkeyPatch, ns_ports: dict[str, int]) -> Iterator[None]:
    """A NameServer on free ports, multicast off; publishers advertise 127.0.0.1."""
    # posttroll advertises the host's outward address; keep all traffic on loopback
    monkeypatch.setattr(posttroll.publisher, "get_own_ip", lambda: "127.0.0.1")
    with _nameserver(ns_ports):
        yield


def test_subscribe_through_nameserver(nameserver: None, base_config: dict[str, Any],
                                      ports: dict[str, int], granule: Path, s3: Any,
                                      bucket: str) -> None:
    producer = create_publisher_from_dict_config(
        {"name": "tp-producer", "port": 0, "nameservers": ["localhost"],
         "broadcast_interval": 0.2})
    producer.start()
    listener = Listener(f"tcp://127.0.0.1:{ports['pub']}")
    base_config["subscribe"] = {"topics": ["/new/file/"], "nameserver": "localhost",
                                "services": ["tp-producer"], "addr_listener": True,
                                "timeout": 5}
    try:
        with running_daemon(base_config) as daemon:
            probe = Message("/new/file/viirs/", "file", {"uri": "ssh://elsewhere.invalid/p"})

            def linked() -> bool:
                producer.send(probe.encode())
                time.sleep(0.1)  # paces the probes (bounded by wait_until's timeout)
                return bool(listener.of_type("failure"))

            wait_until(linked, 20, "the daemon to find the producer via the nameserver")
            producer.send(Message("/new/file/viirs/", "file", {"uri": str(granule)}).encode())
            msgs = listener.wait_for(lambda ms: any(m.type == "file" for m in ms))
            subscriber = daemon.input("subscribe").receiver
            assert subscriber is not None and subscriber.received >= 2
            # a socket added from the nameserver's answer got the raised high-water mark
            sockets = list(subscriber._subscriber.subscribers)
            assert sockets and {s.getsockopt(zmq.RCVHWM) for s in sockets} == {100_000}
    finally:
        listener.close()
        producer.stop()
    done = next(m for m in msgs if m.type == "file")
    assert done.data["uri"] == f"s3://{bucket}/j01/2026/11/21/{granule.name}"


class _DaemonProc:
    """`trollpush run CONFIG` in its own process, posttroll set to the test's ports."""

    def __init__(self, config: dict[str, Any], tmp_path: Path, ns_ports: dict[str, int]
                 ) -> None:
        cfg = tmp_path / "trollpush.yaml"
        cfg.write_text(yaml.safe_dump(config))
        self.log = tmp_path / "daemon.log"
        env = os.environ.copy()
        env.update({"POSTTROLL_NAMESERVER_PORT": str(ns_ports["ns"]),
                    "POSTTROLL_ADDRESS_PUBLISH_PORT": str(ns_ports["addr"]),
                    "POSTTROLL_BROADCAST_PORT": str(ns_ports["bcast"])})
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "trollpush", "run", str(cfg)],
                                         stdout=out, stderr=subprocess.STDOUT, env=env)

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def late_config(base_config: dict[str, Any]) -> dict[str, Any]:
    """The README's kind of subscribe section: a nameserver on localhost, nothing else."""
    base_config["subscribe"] = {"topics": ["/new/file/"], "nameserver": "localhost",
                                "services": ["tp-late-producer"]}
    del base_config["requests"]
    return base_config


def test_the_daemon_starts_without_a_nameserver(late_config: dict[str, Any], tmp_path: Path,
                                                ns_ports: dict[str, int]) -> None:
    """No nameserver anywhere: the daemon is ready anyway, says in one line what is
    missing and how to fix it, prints no traceback, and stops cleanly (exit 0)."""
    daemon = _DaemonProc(late_config, tmp_path, ns_ports)
    try:
        wait_until(lambda: "trollpush ready" in daemon.text() or daemon.proc.poll() is not None,
                   30, "daemon ready")
        wait_until(lambda: MISSING in daemon.text() or daemon.proc.poll() is not None, 30,
                   "the line about the missing nameserver")
        assert daemon.proc.poll() is None, daemon.text()
        # a few more rounds of asking (2 s each way) must not repeat the line
        time.sleep(5)  # lets the background search go round; the assertion is on the log
    finally:
        code = daemon.stop()
    text = daemon.text()
    assert code == 0, text
    assert text.count(MISSING) == 1, text
    line = next(t for t in text.splitlines() if MISSING in t)
    assert "`nameserver` command" in line and "subscribe.nameserver: false" in line, line
    assert "Traceback" not in text and "TimeoutError" not in text, text


def test_a_nameserver_started_later_is_found(late_config: dict[str, Any], tmp_path: Path,
                                             ns_ports: dict[str, int], ports: dict[str, int],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The nameserver (and its producer) come after the daemon: the daemon keeps asking
    in the background, finds the producer and takes its messages."""
    monkeypatch.setattr(posttroll.publisher, "get_own_ip", lambda: "127.0.0.1")
    listener = Listener(f"tcp://127.0.0.1:{ports['pub']}")
    daemon = _DaemonProc(late_config, tmp_path, ns_ports)
    try:
        wait_until(lambda: MISSING in daemon.text() or daemon.proc.poll() is not None, 30,
                   "the line about the missing nameserver")
        assert "trollpush ready" in daemon.text(), daemon.text()
        with _nameserver(ns_ports):
            producer = create_publisher_from_dict_config(
                {"name": "tp-late-producer", "port": 0, "nameservers": ["localhost"],
                 "broadcast_interval": 0.2})
            producer.start()
            try:
                probe = f"ssh://elsewhere.invalid/late-{uuid.uuid4().hex}.h5"
                message = Message("/new/file/viirs/", "file", {"uri": probe}).encode()

                def heard() -> bool:
                    producer.send(message)
                    time.sleep(0.1)  # paces the probes (bounded by wait_until's timeout)
                    return any(m.data.get("uri") == probe for m in listener.of_type("failure"))

                wait_until(heard, 30, "the daemon to find the producer via the nameserver")
            finally:
                producer.stop()
    finally:
        listener.close()
        code = daemon.stop()
    text = daemon.text()
    assert code == 0, text
    assert "subscribe: found tcp://127.0.0.1:" in text, text
    assert "Traceback" not in text, text
