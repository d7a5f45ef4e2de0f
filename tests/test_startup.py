"""Issue 9 item 10: signals during start-up.

The daemon subprocess is signalled as soon as its handlers are in place (read from
``/proc/PID/status``, so the test does not race the interpreter's own start), and again
while a slow start-up is under way: a stop is a clean stop (exit 0, no traceback), and
SIGHUP does not kill it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helpers import daemon_process, wait_until

pytestmark = pytest.mark.slow


def _caught(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (its SigCgt mask)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


@pytest.fixture
def slow_start(base_config: dict[str, Any], silent_server: str) -> dict[str, Any]:
    """A config whose start-up takes seconds: an endpoint that never answers its warm-up
    requests (the daemon waits connect_timeout for them)."""
    base_config["endpoints"]["slow"] = {"url": silent_server, "prewarm": 2,
                                        "connect_timeout": 4}
    base_config["journal"] = {"path": "memory"}
    return base_config


@pytest.mark.parametrize("when", ["handlers", "starting"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_during_start_up_is_clean(sig: signal.Signals, when: str,
                                         slow_start: dict[str, Any], tmp_path: Path) -> None:
    with daemon_process(slow_start, tmp_path) as (proc, log):
        wait_until(lambda: _caught(proc.pid, signal.SIGTERM), 20, "the handlers")
        if when == "starting":
            wait_until(lambda: "endpoint default:" in log.read_text(), 20, "start-up")
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert "trollpush ready" not in text or when == "starting"


def test_sighup_during_start_up_does_not_kill_the_daemon(slow_start: dict[str, Any],
                                                         tmp_path: Path) -> None:
    with daemon_process(slow_start, tmp_path) as (proc, log):
        wait_until(lambda: _caught(proc.pid, signal.SIGTERM), 20, "the handlers")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "trollpush ready" in log.read_text() or proc.poll() is not None,
                   30, "ready")
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGHUP)  # and once running, too
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_while_the_config_is_read(sig: signal.Signals, base_config: dict[str, Any],
                                           tmp_path: Path) -> None:
    """A deterministic moment before the event loop exists: the daemon reads its config
    from a FIFO, and the test holds the writing end.  A stop there is a clean stop; a
    SIGHUP changes nothing."""
    base_config["journal"] = {"path": "memory"}
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    log = tmp_path / "daemon.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "trollpush", "run", str(fifo)],
                                stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        writer = -1

        def reading() -> bool:  # the daemon has the FIFO open for reading
            nonlocal writer
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                return False
            return True
        wait_until(reading, 30, "the daemon reading its config")
        proc.send_signal(sig)
        with os.fdopen(writer, "w") as fh:  # the config arrives after the signal
            fh.write(yaml.safe_dump(base_config))
        if sig == signal.SIGHUP:
            wait_until(lambda: "trollpush ready" in log.read_text() or proc.poll() is not None,
                       30, "ready")
            assert proc.poll() is None, log.read_text()
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    if sig != signal.SIGHUP:
        assert "during start-up: stopped before starting" in text, text
