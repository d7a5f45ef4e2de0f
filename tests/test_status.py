"""``trollpush status`` and ``--version``: a real daemon (moto in server mode, real REQ/REP
and HTTP sockets) asked by the real command in a process of its own; the status request
is no request (never journaled or counted); ``--check``'s exit codes (0 healthy, 1
degraded, 2 unreachable within a bounded time); ``version`` in every REQ/REP reply; no
secret shown.  The health rules and the ring of samples are checked with hand clocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from trollpush import __version__
from trollpush.client import send
from trollpush.client import status as req_status
from trollpush.messages import decode_message, reply_frame
from trollpush.service import Service
from trollpush.stats import BYTES, REQUESTS, UPLOADS, Stats
from trollpush.status import (
    DEGRADED,
    HEALTHY,
    Activity,
    fetch_http,
    health,
    is_status,
    render,
    status_reply,
)

from .helpers import free_port, raw_request, running_daemon, wait_until

SECRETS = {"access_key_id": "AKIASTATUSKEY00001",
           "secret_access_key": "status-secret-value-0001",
           "session_token": "status-session-token-0001"}
TOKEN = "status-bearer-token-0001"


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m trollpush ARGS`` in a process of its own."""
    return subprocess.run([sys.executable, "-m", "trollpush", *args], capture_output=True,
                          text=True, timeout=timeout, env=os.environ.copy())


def status_config(base: dict[str, Any], **http: Any) -> dict[str, Any]:
    """The suite's config: REQ/REP, and the HTTP input's views only (no pub-sub input)."""
    config = {k: v for k, v in base.items() if k != "subscribe"}
    config["http"] = {"address": f"127.0.0.1:{free_port()}", "upload": False, **http}
    return config


def addresses(daemon: Service) -> tuple[str, str]:
    """(REQ/REP address, HTTP base URL)."""
    return (daemon.input("requests").server.address,
            f"http://{daemon.input('http').server.address}")


def as_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


# --- a real daemon ----------------------------------------------------------------------


def test_status_over_both_transports_counts_what_happened(
        base_config: dict[str, Any], granule: Path, bucket: str) -> None:
    with running_daemon(status_config(base_config)) as daemon:
        server, url = addresses(daemon)
        for i in range(3):
            result = send(str(granule), f"s3://{bucket}/s{i}.h5", server=server, timeout=30)
            assert result.ok, result.error
        missing = send(str(granule), "s3://no-such-bucket-status/x.h5", server=server,
                       timeout=30)
        assert not missing.ok
        over_req = as_json(cli("status", "--server", server, "--json"))
        over_http = as_json(cli("status", "--http", url, "--json"))
        table = cli("status", "--server", server)
        again = daemon.status()
        journal = daemon.journal
    size = granule.stat().st_size
    for snap in (over_req, over_http, again):
        req = snap["requests"]
        assert (req["accepted"], req["completed"], req["failed"], req["rejected"]) \
            == (4, 3, 1, 0)
        assert req["queued"] == req["in_flight"] == 0
        assert req["rates"]["completed"] > 0 and req["rates"]["window_seconds"] > 0
        end = snap["endpoints"]["default"]
        assert end["uploads_completed"] == 3 and end["uploads_failed"] == 1
        assert end["bytes"] == 3 * size and end["last_success"] is not None
        assert end["last_error"]["reason"] == "permanent_error"
        assert end["failing_since"] is None  # uploads landed after the failure
        assert snap["journal"]["backlog"] == 0 and snap["journal"]["oldest_accepted"] is None
        assert snap["version"] == __version__ and snap["health"]["status"] == "healthy"
        inputs = {i["name"]: i for i in snap["inputs"]}
        assert inputs["requests"]["description"] == f"requests on {server}"
        assert url.removeprefix("http://") in inputs["http"]["description"]
        # status requests are no requests: not received, not journaled, not counted
        assert inputs["requests"]["received"] == 4
    assert over_http["uptime_seconds"] >= over_req["uptime_seconds"] > 0
    assert journal.backlog == 0
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"trollpush {__version__} (pid ") and "healthy" in lines[0]
    assert "4 accepted, 3 completed, 1 failed, 0 rejected" in table.stdout
    assert any(line.startswith("default ") and "permanent_error" in line for line in lines), \
        table.stdout


def test_check_is_0_when_healthy_and_2_when_unreachable(base_config: dict[str, Any]) -> None:
    with running_daemon(status_config(base_config)) as daemon:
        server, url = addresses(daemon)
        assert cli("status", "--server", server, "--check").returncode == 0
        assert cli("status", "--http", url, "--check", "--json").returncode == 0
    nobody = free_port()  # (a port from the OS that nobody listens on)
    for where in (("--server", f"tcp://127.0.0.1:{nobody}"),
                  ("--http", f"http://127.0.0.1:{nobody}")):
        started = time.monotonic()
        proc = cli("status", *where, "--check", "--timeout", "1")
        took = time.monotonic() - started
        assert proc.returncode == 2, proc.stderr
        assert took < 15, f"{where}: {took:.1f} s"  # bounded: no hanging REQ socket
        assert "trollpush status:" in proc.stderr and not proc.stdout


def test_check_is_1_when_every_upload_to_an_endpoint_fails(
        base_config: dict[str, Any], granule: Path, bucket: str) -> None:
    """An endpoint on a closed port: its uploads all fail; once they have failed for
    ``--failing-for`` seconds the daemon is degraded (the window is the command's)."""
    config = status_config(base_config)
    config["endpoints"]["broken"] = {"url": f"http://127.0.0.1:{free_port()}",
                                     "region": "us-east-1", "tries": 1, "prewarm": 0}
    config["daemon"]["max_age"] = 1
    with running_daemon(config) as daemon:
        server, _ = addresses(daemon)
        assert send(str(granule), f"s3://{bucket}/ok.h5", server=server, timeout=30).ok
        result = send(str(granule), f"s3://{bucket}/x.h5", endpoint="broken", server=server,
                      timeout=30)
        assert not result.ok
        snap = req_status(server)
        broken = snap["endpoints"]["broken"]
        assert broken["failing_since"] is not None and broken["uploads_completed"] == 0
        assert broken["last_error"]["reason"] and snap["endpoints"]["default"][
            "failing_since"] is None
        assert cli("status", "--server", server, "--check").returncode == 0  # not a minute

        def degraded() -> bool:
            proc = cli("status", "--server", server, "--check", "--failing-for", "0.5")
            return proc.returncode == 1 and "endpoint broken: every upload failed" \
                in proc.stderr
        wait_until(degraded, 30, "status --check reporting the endpoint degraded")
        table = cli("status", "--server", server, "--failing-for", "0.5").stdout
    assert "DEGRADED" in table.splitlines()[0] and "problem: endpoint broken" in table


def test_check_is_1_when_the_backlog_is_older_than_half_max_age(
        base_config: dict[str, Any], granule: Path, bucket: str, silent_server: str) -> None:
    """A request stuck on a store that never answers stays in the journal: once it is
    older than max_age/2 the daemon is degraded."""
    config = status_config(base_config)
    config["endpoints"]["silent"] = {"url": silent_server, "region": "us-east-1", "tries": 1,
                                     "prewarm": 0, "attempt_timeout": 120}
    config["daemon"].update(max_age=2, shutdown_grace=1)
    with running_daemon(config) as daemon:
        server, url = addresses(daemon)
        accepted = send(str(granule), f"s3://{bucket}/stuck.h5", endpoint="silent",
                        server=server, timeout=30, wait=False)
        assert accepted.ok and accepted.message.type == "ack"

        def old() -> bool:
            journal = fetch_http(url, timeout=5)["journal"]
            return journal["backlog"] == 1 and journal["oldest_accepted"] is not None
        wait_until(old, 15, "the request in the backlog")
        seen: list[subprocess.CompletedProcess[str]] = []

        def degraded() -> bool:  # once it is older than 1 s (max_age/2)
            seen.append(cli("status", "--http", url, "--check"))
            return seen[-1].returncode != 0
        wait_until(degraded, 15, "status --check reporting the old backlog")
        proc = seen[-1]
        snap = fetch_http(url, timeout=5)
    assert proc.returncode == 1, proc.stderr
    assert "journal backlog: 1 request(s)" in proc.stderr
    assert snap["requests"]["in_flight"] == 1
    assert snap["endpoints"]["silent"]["uploads_in_flight"] == 1


def test_no_secret_in_the_status_and_http_needs_the_token(
        base_config: dict[str, Any], tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    config = status_config(base_config, token_file=str(token))
    config["endpoints"]["default"].update(SECRETS)
    with running_daemon(config) as daemon:
        server, url = addresses(daemon)
        denied = cli("status", "--http", url, "--check")
        shown = [cli("status", "--http", url, "--token-file", str(token), *extra)
                 for extra in ((), ("--json",))]
        shown += [cli("status", "--server", server, *extra) for extra in ((), ("--json",))]
    assert denied.returncode == 2 and "401" in denied.stderr
    for proc in shown:
        assert proc.returncode == 0, proc.stderr
        for secret in [*SECRETS.values(), TOKEN, str(token)]:
            assert secret not in proc.stdout + proc.stderr
            assert secret[:12] not in proc.stdout


def test_every_req_rep_reply_carries_the_version(base_config: dict[str, Any],
                                                 granule: Path, bucket: str) -> None:
    """The ack, the result, a refusal: ``version`` is one more key (old clients read the
    rest as before); the status answer has it too."""
    with running_daemon(status_config(base_config)) as daemon:
        server, _ = addresses(daemon)
        ack = send(str(granule), f"s3://{bucket}/a.h5", server=server, timeout=30,
                   wait=False)
        done = send(str(granule), f"s3://{bucket}/b.h5", server=server, timeout=30)
        refused = send(str(granule.parent / "none.h5"), f"s3://{bucket}/c.h5",
                       server=server, timeout=30)
        raw = raw_request(server, b"not a posttroll message")
    assert ack.message.type == "ack" and ack.message.data["version"] == __version__
    assert done.ok and done.message.data["version"] == __version__
    assert done.message.data["uri"] == f"s3://{bucket}/b.h5"  # the rest as before
    assert refused.message.data["reason"] == "file_missing"
    assert refused.message.data["version"] == __version__
    assert raw.type == "failure" and raw.data["version"] == __version__


def test_version_option() -> None:
    proc = cli("--version")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert line.startswith(f"trollpush {__version__} (python ")
    assert "aiobotocore " in line and "posttroll " in line


# --- pure parts: the reply, the health rules, the ring ----------------------------------


def test_a_status_request_is_known_by_its_header() -> None:
    assert is_status(status_reply({}).encode().encode())
    assert is_status(b"pytroll://any/subject status someone@host 2026-11-21T10:00:00 v1.01")
    assert not is_status(send_frame())
    assert not is_status(b"status") and not is_status(b"") and not is_status(b"\xff" * 600)


def send_frame() -> bytes:
    from trollpush.client import request_message

    return bytes(request_message("/data/x.h5", "s3://b/k").encode().encode())


def test_the_version_is_added_to_a_copy_and_never_overrides() -> None:
    message = status_reply({"a": 1})
    frame = decode_message(reply_frame(message).decode())
    assert frame.data == {"a": 1, "version": __version__} and message.data == {"a": 1}
    theirs = status_reply({"version": "2.0-product"})
    assert decode_message(reply_frame(theirs).decode()).data == {"version": "2.0-product"}


def _snap(now: float, *, backlog: int = 0, oldest: float | None = None,
          failing_since: float | None = None) -> dict[str, Any]:
    return {"time": now, "journal": {"backlog": backlog, "oldest_accepted": oldest,
                                     "max_age": 100.0},
            "endpoints": {"e": {"failing_since": failing_since,
                                "last_error": {"time": now, "reason": "timeout"}}}}


def test_health_rules() -> None:
    now = 1_000_000.0
    assert health(_snap(now)) == (HEALTHY, [])
    assert health(_snap(now, backlog=3, oldest=now - 50))[0] == HEALTHY  # max_age/2: not past
    code, problems = health(_snap(now, backlog=3, oldest=now - 51))
    assert code == DEGRADED and problems[0].startswith("journal backlog: 3 request(s)")
    assert health(_snap(now, failing_since=now - 59))[0] == HEALTHY
    code, problems = health(_snap(now, failing_since=now - 60))
    assert code == DEGRADED and problems == [
        "endpoint e: every upload failed for 60 s (last: timeout)"]
    assert health(_snap(now, failing_since=now - 5), failing_for=5)[0] == DEGRADED


class Clocks:
    def __init__(self) -> None:
        self.t = 100.0

    def mono(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1_000_000.0 + self.t


def test_the_ring_is_bounded_and_gives_rates_over_the_window() -> None:
    registry, clocks = Stats(), Clocks()
    activity = Activity(registry, lambda: ["e"], every=1.0, window=10.0, clock=clocks.mono,
                        wall=clocks.wall)
    for _ in range(100):
        clocks.t += 1.0
        registry.inc(REQUESTS, 2, input="request", outcome="completed")
        registry.inc(BYTES, 1000, endpoint="e")
        for _ in range(5):  # asked often: the ring still holds one sample a second
            activity.observe()
    assert len(activity._ring) == 12
    span, per_request, per_endpoint = activity.rates(activity.observe())
    assert span == pytest.approx(10.0)
    assert per_request["completed"] == pytest.approx(2.0) and per_request["failed"] == 0
    assert per_endpoint == {"e": pytest.approx(1000.0)}


def test_an_endpoint_fails_until_an_upload_lands() -> None:
    registry, clocks = Stats(), Clocks()
    activity = Activity(registry, lambda: ["e"], clock=clocks.mono, wall=clocks.wall)
    activity.observe()
    registry.inc(UPLOADS, endpoint="e", outcome="failed", reason="file_missing")
    activity.observe()
    assert activity.endpoint("e").failing_since is None  # the file's fault, not the store's
    registry.inc(UPLOADS, endpoint="e", outcome="failed", reason="timeout")
    clocks.t += 1
    activity.observe()
    first = clocks.wall()
    registry.inc(UPLOADS, endpoint="e", outcome="failed", reason="upload_failed")
    clocks.t += 30
    activity.observe()
    end = activity.endpoint("e")
    assert end.failing_since == first and end.last_error == (clocks.wall(), "upload_failed")
    registry.inc(UPLOADS, endpoint="e", outcome="completed")
    clocks.t += 1
    activity.observe()
    assert activity.endpoint("e").failing_since is None
    assert activity.endpoint("e").last_error is not None  # still shown


def test_render_is_a_compact_table() -> None:
    now = 1_000_000.0
    snap = {"version": "9.9", "pid": 7, "time": now, "uptime_seconds": 3700.0,
            "inputs": [{"name": "requests", "description": "requests on tcp://h:1",
                        "received": 5}],
            "requests": {"accepted": 5, "rejected": 1, "completed": 4, "failed": 1,
                         "queued": 0, "in_flight": 0,
                         "rates": {"window_seconds": 60.0, "accepted": 0.1,
                                   "completed": 0.05, "failed": 0.0}},
            "endpoints": {"default": {
                "connections_open": 4, "connections_idle": 3, "uploads_in_flight": 1,
                "parts_in_flight": 1, "uploads_completed": 4, "uploads_failed": 1,
                "bytes": 12_345_678, "rate_bytes_per_second": 2_000_000.0,
                "last_success": now - 3, "last_error": {"time": now - 200,
                                                        "reason": "timeout"},
                "failing_since": None}},
            "journal": {"backlog": 1, "oldest_accepted": now - 2, "size_bytes": 40960,
                        "max_age": 3600.0}}
    text = render(snap)
    assert text.splitlines()[0] == "trollpush 9.9 (pid 7), up 62 min, healthy"
    assert "requests on tcp://h:1 (5 received)" in text
    assert "journal    backlog 1 (oldest 2 s ago), 41.0 kB" in text
    row = next(line for line in text.splitlines() if line.startswith("default"))
    assert row.split() == ["default", "4", "3", "1", "4", "1", "12.3", "MB", "2.0", "MB/s",
                           "3", "s", "ago", "3", "min", "ago", "timeout"]
