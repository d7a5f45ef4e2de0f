"""Shutdown and start-up edges: nothing accepted is dropped unanswered, nothing hangs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq

from trollpush import parse_config, send
from trollpush.client import Unreachable
from trollpush.journal import MemoryJournal
from trollpush.models import Job
from trollpush.service import build_service

from .helpers import daemon_process, running_daemon, wait_until


def _hung(base_config: dict[str, Any], silent_server: str) -> dict[str, Any]:
    """A config whose only endpoint never answers (every upload hangs until cut off)."""
    base_config["endpoints"] = {"default": {"url": silent_server, "attempt_timeout": 60,
                                            "tries": 1, "prewarm": 0}}
    base_config["daemon"] = {"shutdown_grace": 0.5, "max_in_flight": 1, "queue_size": 1}
    return base_config


def test_every_request_read_is_answered_at_shutdown(base_config: dict[str, Any],
                                                    silent_server: str, granule: Path,
                                                    ports: dict[str, int]) -> None:
    """One request uploading, one queued, one waiting at the full queue: at shutdown each
    gets a `shutdown` answer; none is left to time out."""
    results: dict[int, Any] = {}

    def one(i: int) -> None:
        try:
            results[i] = send(str(granule), f"s3://b/k{i}", timeout=20,
                              server=f"tcp://127.0.0.1:{ports['req']}")
        except Unreachable as err:
            results[i] = err

    with running_daemon(_hung(base_config, silent_server)) as daemon:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        assert daemon.input("requests") is not None
        server = daemon.input("requests").server
        # all three journaled (the third past its file check, waiting at the full queue)
        wait_until(lambda: server.received == 3 and daemon.counts["accepted"] == 3
                   and daemon.transfer.active == 1, 15, "one uploading, two waiting")
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == [0, 1, 2]
    for r in results.values():
        assert not isinstance(r, Unreachable), r
        assert not r.ok and r.message.data["reason"] == "shutdown"
    assert daemon.counts["abandoned"] == 3  # uploading, queued, and still at the door


class _LockedJournal(MemoryJournal):
    async def transferring(self, job: Job) -> None:
        raise OSError("database is locked")


def test_a_journal_step_that_fails_does_not_fail_the_request(
        base_config: dict[str, Any], granule: Path, bucket: str,
        ports: dict[str, int]) -> None:
    """A request already accepted goes on when a later journal step fails: one outcome,
    the real one (issue 9, item 6)."""
    journal = _LockedJournal()
    with running_daemon(base_config, journal=journal) as daemon:
        result = send(str(granule), f"s3://{bucket}/x", timeout=15,
                      server=f"tcp://127.0.0.1:{ports['req']}")
        assert daemon.counts["journal_errors"] == 1
    assert result.ok, result.error
    assert journal.unfinished() == []


def test_an_internal_error_is_answered_and_announced(base_config: dict[str, Any],
                                                     granule: Path, bucket: str,
                                                     ports: dict[str, int]) -> None:
    """A bug in a stage (here the engine) fails the request loudly, never silently."""
    async def broken(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("a bug in the engine")

    with running_daemon(base_config) as daemon:
        daemon.transfer.upload = broken  # type: ignore[method-assign]
        result = send(str(granule), f"s3://{bucket}/x", timeout=15,
                      server=f"tcp://127.0.0.1:{ports['req']}")
        assert daemon.journal.unfinished() == []
    assert not result.ok
    assert result.message.data["reason"] == "internal_error"
    assert "a bug in the engine" in result.message.data["error"]


def test_stop_before_run_is_not_lost(base_config: dict[str, Any]) -> None:
    daemon = build_service(parse_config(base_config))
    daemon.stop()
    thread = threading.Thread(target=lambda: asyncio.run(daemon.run()), daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    daemon.stop()  # after run(): the loop is closed, and that is fine


@pytest.mark.parametrize(("section", "message"), [
    ("req", "requests.address"), ("pub", "cannot start the publisher")])
def test_a_busy_port_fails_start_up_clearly(base_config: dict[str, Any], tmp_path: Path,
                                            ports: dict[str, int], section: str,
                                            message: str) -> None:
    """Another process on our port: a clear error and exit 2, not a hang."""
    ctx = zmq.Context()
    squatter = ctx.socket(zmq.PUB)
    squatter.bind(f"tcp://127.0.0.1:{ports[section]}")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(base_config))
    try:
        proc = subprocess.run([sys.executable, "-m", "trollpush", "run", str(cfg)],
                              capture_output=True, text=True, timeout=60,
                              env=os.environ.copy())
    finally:
        squatter.close(linger=0)
        ctx.term()
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_a_dead_intake_stops_the_daemon(base_config: dict[str, Any]) -> None:
    """If the request server dies, the daemon does not run on deaf: it stops, and run()
    says why."""
    daemon = build_service(parse_config(base_config))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(daemon.run())
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_until(daemon.ready.is_set, 20, "ready")
    server = daemon.input("requests").server
    assert server is not None and daemon.loop is not None
    daemon.loop.call_soon_threadsafe(server.close)  # its socket dies under it
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert errors and "intake failed" in str(errors[0])


def test_sigterm_in_the_subprocess_exits_0(base_config: dict[str, Any], tmp_path: Path) -> None:
    with daemon_process(base_config, tmp_path) as (proc, log):
        wait_until(lambda: "trollpush ready" in log.read_text(), 30, "ready")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert "stopped:" in log.read_text()
