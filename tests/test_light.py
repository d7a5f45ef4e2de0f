"""`trollpush send` and the client stay light: a fresh interpreter that imports them loads
neither the S3 stack nor the daemon (the 0.2-0.5 s they cost, and their failure modes)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

#: what a client must never load, with everything below these names
#: (trollpush.transfer's face is lazy; source.py and checksum.py below it are light and
#: shared with the receipt checks)
HEAVY = ("aiobotocore", "botocore", "trollpush.service", "trollpush.pipeline",
         "trollpush.transfer.engine", "trollpush.transfer.pool", "trollpush.transfer.policy",
         "trollpush.announce", "trollpush.inputs", "trollpush.journal")


def _imports(*args: str) -> tuple[set[str], str]:
    """The modules ``python -X importtime ARGS`` imports in a fresh process, and its stdout."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True,
                          text=True, timeout=60, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
             if line.startswith("import time:")}
    return names, proc.stdout


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(f"{h}.") for h in HEAVY))


@pytest.mark.parametrize("module", ["trollpush.client", "trollpush.messages",
                                    "trollpush.status"])
def test_the_client_imports_nothing_heavy(module: str) -> None:
    modules, _ = _imports("-c", f"import {module}")
    assert module in modules
    assert _heavy(modules) == []


@pytest.mark.parametrize("command", ["send", "status"])
def test_the_client_commands_import_nothing_heavy(command: str) -> None:
    modules, out = _imports("-m", "trollpush", command, "--help")
    assert f"usage: trollpush {command}" in out
    assert "trollpush.cli" in modules
    assert _heavy(modules) == []


def test_status_itself_imports_nothing_heavy() -> None:
    """Not only its help: asking (here a daemon that is not there) stays light too."""
    code = ("import sys\n"
            "from trollpush.cli import main\n"
            "sys.exit(0 if main(['status', '--server', 'tcp://127.0.0.1:9', "
            "'--timeout', '0.2', '--check']) == 2 else 1)\n")
    modules, _ = _imports("-c", code)
    assert "trollpush.status" in modules and "trollpush.client" in modules
    assert _heavy(modules) == []


def test_the_probe_sees_heavy_imports() -> None:
    """The check above would notice: the daemon's side loads the S3 stack."""
    modules, _ = _imports("-c", "import trollpush.service, trollpush.transfer.engine")
    assert {"trollpush.service", "aiobotocore", "trollpush.inputs"} <= set(_heavy(modules))
