"""Issue 13, running as a service: the example unit and logging config.

``examples/trollpush.service`` passes ``systemd-analyze verify`` (systemd's tools are
installed from Debian's packages when missing and the test runs as root; otherwise it
is skipped with the reason), and ``examples/logging.yaml`` works as ``trollpush run -c``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .helpers import daemon_process, wait_until

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
UNIT = EXAMPLES / "trollpush.service"
INSTALL_LIMIT = 420.0  # seconds for apt-get, all steps together


def _apt(args: list[str], deadline: float) -> tuple[bool, str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        res = subprocess.run(["apt-get", "-q", *args], capture_output=True, text=True,
                             env=env, timeout=max(1.0, deadline - time.monotonic()),
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, f"apt-get {' '.join(args)}: no answer in time"
    tail = (res.stdout + res.stderr).strip().splitlines()[-3:]
    return res.returncode == 0, f"apt-get {' '.join(args)}: " + " | ".join(tail)


def systemd_analyze() -> str:
    """The path of systemd-analyze, installed (package ``systemd``) if missing; skips
    the test with the reason when it cannot be had."""
    found = shutil.which("systemd-analyze")
    if found:
        return found
    if not sys.platform.startswith("linux") or not shutil.which("apt-get"):
        pytest.skip("systemd-analyze is missing and there is no apt-get to install it")
    if os.geteuid() != 0:
        pytest.skip("systemd-analyze is missing; installing it (apt-get install systemd) "
                    "needs root")
    deadline = time.monotonic() + INSTALL_LIMIT
    install = ["install", "-y", "--no-install-recommends", "systemd"]
    ok, said = _apt(install, deadline)
    if not ok:  # a fresh machine has no package lists yet
        ok, said = _apt(["update"], deadline)
        if ok:
            ok, said = _apt(install, deadline)
    found = shutil.which("systemd-analyze")
    if not ok or not found:
        pytest.skip(f"systemd-analyze is missing and could not be installed: {said}")
    return found


def runnable_unit(tmp_path: Path) -> Path:
    """The example unit with ExecStart on this environment's ``trollpush`` (verify checks
    that the command exists); every other line as shipped."""
    script = Path(sys.executable).parent / "trollpush"
    if not script.exists():
        pytest.skip(f"no console script at {script} (the package is not installed here)")
    text = UNIT.read_text()
    text, n = re.subn(r"^ExecStart=\S+", f"ExecStart={script}", text, flags=re.M)
    assert n == 1
    unit = tmp_path / "trollpush.service"
    unit.write_text(text)
    return unit


def test_the_unit_says_what_operations_md_says() -> None:
    keys: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    assert keys["Type"] == ["notify"]
    assert keys["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert keys["ExecStart"][0].split()[1:] == [
        "run", "/etc/trollpush/trollpush.yaml", "-c", "/etc/trollpush/logging.yaml"]
    for key in ("NoNewPrivileges", "PrivateTmp"):
        assert keys[key] == ["yes"]
    assert keys["ProtectSystem"] == ["strict"]
    assert keys["ReadWritePaths"] == ["/var/lib/trollpush"]
    assert "ReadOnlyPaths" in keys and "WatchdogSec" in keys
    assert keys["Environment"].count("AWS_SHARED_CREDENTIALS_FILE=%d/aws-credentials") == 1
    assert keys["LoadCredential"] == ["aws-credentials:/etc/trollpush/aws-credentials"]
    families = keys["RestrictAddressFamilies"][0].split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families)


@pytest.mark.timeout(INSTALL_LIMIT + 60)
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = systemd_analyze()
    unit = runnable_unit(tmp_path)
    res = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path, stdin=subprocess.DEVNULL)
    said = res.stdout + res.stderr
    # an unknown or misspelt key is only a warning (exit 0): no line may name the unit
    about_it = [line for line in said.splitlines() if unit.name in line]
    assert res.returncode == 0 and not about_it, said


@pytest.mark.slow
def test_the_example_logging_config_runs_the_daemon(base_config: dict[str, Any],
                                                    tmp_path: Path) -> None:
    """``trollpush run CONFIG -c examples/logging.yaml``: records in its format on
    stderr (where systemd's journal takes them), none in the default format."""
    with daemon_process(base_config, tmp_path, "-c", str(EXAMPLES / "logging.yaml")
                        ) as (proc, log):
        wait_until(lambda: "trollpush ready" in log.read_text() or proc.poll() is not None,
                   30, "ready")
        proc.send_signal(signal.SIGHUP)  # what `systemctl reload` sends: logged, harmless
        wait_until(lambda: "SIGHUP" in log.read_text(), 10, "the SIGHUP logged")
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    lines = log.read_text().splitlines()
    assert "INFO     trollpush.service: trollpush ready: " in "\n".join(lines)
    assert lines[-1].startswith("INFO     trollpush.service: stopped: "), lines[-1]
    assert not any(line.startswith("[") for line in lines), lines  # not the default format
