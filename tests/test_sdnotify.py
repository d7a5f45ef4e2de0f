"""Issue 13, running as a service: systemd's notify protocol (trollpush/sdnotify.py).

A real ``AF_UNIX`` datagram socket bound by the test stands in for systemd: by path and
by abstract name.  The daemon process says ``READY=1`` only once its inputs are bound
(the request port answers at once), pings ``WATCHDOG=1`` from its event loop, and says
``STOPPING=1`` on SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trollpush.client import send
from trollpush.config import parse_config
from trollpush.sdnotify import Notifier, SystemdNotify, socket_address, watchdog_interval
from trollpush.service import Service, build_service

from .helpers import daemon_process, wait_until


class FakeSystemd:
    """The receiving end of ``$NOTIFY_SOCKET``: a datagram socket the test binds."""

    def __init__(self, where: Path | None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if where is None:  # abstract: no file, a name starting with a NUL byte
            name = f"trollpush-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            self.sock.bind(str(where))
            self.env = str(where)
        self.seen: list[str] = []

    def receive(self, timeout: float) -> str | None:
        """The next datagram within ``timeout`` seconds, else None."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096).decode()
        except TimeoutError:
            return None
        self.seen.append(data)
        return data

    def wait_for(self, line: str, timeout: float) -> list[str]:
        """Datagrams up to and including one holding ``line``; bounded."""
        deadline = time.monotonic() + timeout
        got: list[str] = []
        while (left := deadline - time.monotonic()) > 0:
            data = self.receive(left)
            if data is None:
                break
            got.append(data)
            if line in data.splitlines():
                return got
        raise AssertionError(f"no {line} within {timeout} s; got {got}")

    def drain(self) -> list[str]:
        """Whatever is waiting, without waiting."""
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def systemd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify.sock" if request.param == "path" else None)
    yield fake
    fake.close()


def test_addresses_and_the_watchdog_setting() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@name") == "\0name"
    for bad in ("", "@", "relative/path", "vsock:2:1234"):
        assert socket_address(bad) is None
    me = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": me}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    for off in ({}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "soon"}):
        assert watchdog_interval(off) is None


def test_without_notify_socket_nothing_is_sent() -> None:
    notify = SystemdNotify.from_environment({"WATCHDOG_USEC": "1000"})
    assert not notify.notifier.enabled and notify.watchdog is None
    assert notify.notifier.send("READY=1") is False
    assert repr(notify) == "<SystemdNotify <Notifier off>>"


def test_a_notification_reaches_the_socket(systemd: FakeSystemd) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": systemd.env})
    try:
        assert notifier.send("READY=1", "STATUS=running") is True
        assert systemd.receive(5) == "READY=1\nSTATUS=running"
    finally:
        notifier.close()


def test_a_socket_gone_away_is_logged_once_never_raised(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens.sock"))
    assert notifier.send("READY=1") is False
    assert notifier.send("WATCHDOG=1") is False
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "READY=1 not sent" in warnings[0].getMessage()
    notifier.close()


def test_the_watchdog_pings_from_the_event_loop(systemd: FakeSystemd) -> None:
    """Pings come from the loop itself: while the loop is blocked none is sent, so
    systemd sees a wedged daemon; they resume when it runs again, and end at the stop."""
    notify = SystemdNotify.from_environment({"NOTIFY_SOCKET": systemd.env,
                                             "WATCHDOG_USEC": "40000"})
    assert notify.watchdog == 0.02

    async def scenario() -> None:
        notify.starting(None)  # type: ignore[arg-type]  # (it does not look at the service)
        pings = 0
        for _ in range(500):  # up to 5 s for three pings
            await asyncio.sleep(0.01)
            pings += systemd.drain().count("WATCHDOG=1")
            if pings >= 3:
                break
        else:
            raise AssertionError("no watchdog pings")
        systemd.drain()
        time.sleep(0.3)  # noqa: ASYNC251 (the point: the loop is wedged for 15 intervals)
        assert systemd.drain() == []
        for _ in range(500):
            await asyncio.sleep(0.01)
            if "WATCHDOG=1" in systemd.drain():
                break
        else:
            raise AssertionError("the pings did not resume")
        notify.stopped(None)  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        systemd.drain()
        await asyncio.sleep(0.1)  # five intervals more: nothing after the stop
        assert systemd.drain() == []

    asyncio.run(scenario())


class Recording:
    """An observer that notes each event with what the service had done by then."""

    def __init__(self) -> None:
        self.events: list[tuple[str, bool, int]] = []

    def note(self, event: str, service: Service) -> None:
        asyncio.get_running_loop()  # always called on the event loop
        self.events.append((event, service.ready.is_set(), len(service.inputs)))

    def starting(self, service: Service) -> None:
        self.note("starting", service)

    def started(self, service: Service) -> None:
        self.note("started", service)

    def stopping(self, service: Service) -> None:
        self.note("stopping", service)

    def stopped(self, service: Service) -> None:
        self.note("stopped", service)


class Broken:
    def starting(self, service: Service) -> None:
        raise RuntimeError("observer bug")

    started = stopping = stopped = starting


def test_observers_see_the_lifecycle_and_cannot_break_it(
        base_config: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    seen = Recording()
    base_config["journal"] = {"path": "memory"}
    service = build_service(parse_config(base_config), observers=(Broken(), seen))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(service.run())
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: service.ready.is_set() or not thread.is_alive(), 20, "ready")
    finally:
        service.stop()
        thread.join(timeout=40)
    assert not thread.is_alive() and not errors, errors
    inputs = len(service.inputs)
    assert inputs == 2  # subscribe and requests, started before `started`
    assert seen.events == [("starting", False, 0), ("started", True, inputs),
                           ("stopping", True, inputs), ("stopped", False, inputs)]
    failed = [r for r in caplog.records if "lifecycle observer" in r.getMessage()]
    assert len(failed) == 4 and all(r.exc_info for r in failed)


@pytest.mark.slow
def test_the_daemon_tells_systemd_ready_watchdog_and_stopping(
        systemd: FakeSystemd, base_config: dict[str, Any], ports: dict[str, int],
        bucket: str, granule: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        s3: Any) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.env)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
    with daemon_process(base_config, tmp_path) as (proc, log):
        got = systemd.wait_for("READY=1", 30)
        # ready means bound: the request port takes a connection at once (no retry) ...
        with socket.create_connection(("127.0.0.1", ports["req"]), timeout=2):
            pass
        # ... and answers a request
        result = send(str(granule), f"s3://{bucket}/ready/", server=(
            f"tcp://127.0.0.1:{ports['req']}"), timeout=10, result_timeout=30)
        assert result.ok, result.error
        s3.head_object(Bucket=bucket, Key=f"ready/{granule.name}")
        assert any("STATUS=running: " in m for m in got), got
        assert "trollpush ready" in log.read_text()
        pings = 0
        deadline = time.monotonic() + 20
        while pings < 3 and time.monotonic() < deadline:
            pings += systemd.receive(deadline - time.monotonic()) == "WATCHDOG=1"
        assert pings >= 3, systemd.seen
        proc.send_signal(signal.SIGTERM)
        stopping = systemd.wait_for("STOPPING=1", 30)[-1].splitlines()
        assert "STATUS=draining for up to 10 s" in stopping
        assert "EXTEND_TIMEOUT_USEC=40000000" in stopping  # shutdown_grace 10 + 30 s
        assert proc.wait(timeout=30) == 0, log.read_text()
    text = log.read_text()
    assert "systemd watchdog: a ping every 0.1 s" in text
    assert "Traceback" not in text, text
