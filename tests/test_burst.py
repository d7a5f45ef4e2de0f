"""A burst of pub-sub announcements far beyond ZeroMQ's default high-water mark.

posttroll gives neither side of PUB/SUB a high-water mark setting: both default to 1,000
messages, and what a publisher cannot queue for a slow subscriber it drops without a
trace.  The daemon raises its SUB sockets' receive high-water mark (``receive_hwm``) so
that a burst waits in the daemon's own buffers, and reads them in batches.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .helpers import Listener, running_daemon, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BURST = 50_000
SECONDS = 2.0
#: the producer's own send high-water mark.  A producer process that is starved of CPU
#: (two busy cores here) drops at its own side whatever its I/O thread has not written
#: yet: 10,000 gives it 0.4 s of slack at this rate, which no daemon could make up for.
#: It stays far below the burst: the rest must wait in the daemon's buffers (the old
#: daemon, with libzmq's 1,000 there, lost 16,500 to 24,500 of 50,000 in this test).
PRODUCER_SNDHWM = 10_000


@contextlib.contextmanager
def _producer(address: str, path: Path) -> Any:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.burst_producer", address, str(path), str(BURST),
         str(SECONDS), str(PRODUCER_SNDHWM)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=os.environ.copy())
    try:
        yield proc
    finally:
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()  # the producer's cue to stop
        try:
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()


def test_a_burst_of_50000_in_2_s_is_all_journaled(base_config: dict[str, Any],
                                                   listener: Listener, silent_server: str,
                                                   tmp_path: Path) -> None:
    """50,000 announcements in 2 s from a posttroll producer in its own process: every one
    is read and journaled.

    No upload can finish (the store never answers), so acceptance is all that counts; the
    queue is made large enough to hold the whole burst, so that what is measured is the
    intake, not the queue's bound (``daemon.queue_size``)."""
    base_config["endpoints"]["default"] = {"url": silent_server, "prewarm": 0,
                                           "attempt_timeout": 60}
    base_config["daemon"].update({"shutdown_grace": 0.5, "queue_size": BURST + 1000})
    journal = tmp_path / "journal.sqlite"
    base_config["journal"] = {"path": str(journal)}
    path = tmp_path / "NOAA-20_20261121_1005_12345.h5"
    path.write_bytes(b"x")
    with running_daemon(base_config) as daemon, \
            _producer(base_config["subscribe"]["addresses"][0], path) as proc:
        # linked: the producer's probe came back from the daemon as a failure
        listener.wait_for(lambda ms: any(m.type == "failure" for m in ms), 20,
                          "the producer's probe to be refused")
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        sent = proc.stdout.readline()
        with contextlib.suppress(AssertionError):  # the counts below say what came
            wait_until(lambda: daemon.counts["accepted"] >= BURST, 40, "the whole burst")
        accepted = daemon.counts["accepted"]
        assert daemon.input("subscribe") is not None
        read = daemon.input("subscribe").receiver.received
    assert sent.startswith("sent "), sent
    assert float(sent.split()[1]) < SECONDS * 1.5, f"not a burst: {sent}"
    assert accepted == BURST, f"{accepted:,} of {BURST:,} accepted ({read:,} frames read)"
    with contextlib.closing(sqlite3.connect(journal)) as db:  # each one survived the stop
        (open_requests,) = db.execute("SELECT count(*) FROM requests").fetchone()
    assert open_requests == BURST


def _subscribe(**extra: Any) -> dict[str, Any]:
    return {"subscribe": {"topics": ["/new/"], "nameserver": False,
                          "addresses": ["tcp://127.0.0.1:40000"], **extra},
            "endpoints": {"default": {}},
            "targets": [{"destination": "s3://b/{uid}"}]}


def test_receive_hwm_config() -> None:
    """100,000 by default; an integer >= 0 (0: no limit, as in ZeroMQ) otherwise."""
    from trollpush import parse_config
    from trollpush.errors import ConfigError

    config = parse_config(_subscribe())
    assert config.subscribe is not None and config.subscribe.receive_hwm == 100_000
    config = parse_config(_subscribe(receive_hwm=0))
    assert config.subscribe is not None and config.subscribe.receive_hwm == 0
    for bad in (-1, 1.5, "lots", True):
        with pytest.raises(ConfigError, match=r"subscribe\.receive_hwm"):
            parse_config(_subscribe(receive_hwm=bad))
    with pytest.raises(ConfigError, match=r"subscribe\.timeout"):
        parse_config(_subscribe(timeout=0))
