"""REQ/REP over ``ipc://``: the socket file's permissions decide who may submit.

A second local user is a real second process: a fork of the test that drops to another
uid (the project's interpreter lives under root's home, which ``nobody`` cannot run).
It speaks raw ZMTP over the Unix socket, as any local user's program could.
"""

from __future__ import annotations

import contextlib
import grp
import os
import select
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from trollpush import parse_config, send
from trollpush.client import request_message
from trollpush.errors import ConfigError, SetupError
from trollpush.inputs.requests import RequestServer
from trollpush.messages import decode_message

from . import zmtp
from .helpers import running_daemon

NOBODY = 65534  # nobody:nogroup
OTHER = (1, 1)  # daemon:daemon, in neither the socket's owner nor its group
ROOT = Path(__file__).resolve().parent.parent

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="acting as another local user needs root")


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A directory every user may enter (tmp_path is root-only): only the socket file's own
    permissions may keep another user out."""
    path = Path(tempfile.mkdtemp(prefix="tp-ipc-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0: what the daemon would get from a careless service manager."""
    old = os.umask(0)
    yield
    os.umask(old)


def _as(user: tuple[int, int] | None, fn: Callable[[], str], timeout: float = 20) -> str:
    """Run ``fn`` in a forked process, as ``(uid, gid)`` if given: ``ok <result>`` or
    ``error <exception>``."""
    r, w = os.pipe()
    with warnings.catch_warnings():  # the child makes only plain system calls
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        out = "error nothing"
        try:
            os.close(r)
            if user is not None:
                os.setgroups([])
                os.setgid(user[1])
                os.setuid(user[0])
            out = "ok " + fn()
        except BaseException as err:
            out = f"error {type(err).__name__}: {err}"
        finally:
            os.write(w, out.encode("utf-8", "replace")[:8000])
            os._exit(0)
    os.close(w)
    chunks: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                raise AssertionError(f"the process as {user} did not finish in {timeout} s")
            chunk = os.read(r, 8192)
            if not chunk:
                return b"".join(chunks).decode()
            chunks.append(chunk)
    finally:
        os.close(r)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        os.waitpid(pid, 0)


def _submit(address: str, path: Path, bucket: str) -> Callable[[], str]:
    """A request for ``path`` that asks only for the acknowledgement; the reply's type."""
    body = request_message(str(path), f"s3://{bucket}/ipc/", wait=False).encode().encode()
    return lambda: decode_message(zmtp.request(address, body).decode()).type


def _requests(config: dict[str, Any], address: str, **access: Any) -> dict[str, Any]:
    config["requests"] = {"address": address, **access}
    del config["subscribe"]
    return config


@needs_root
def test_an_ipc_socket_is_owner_only_by_default(base_config: dict[str, Any], granule: Path,
                                                bucket: str, socket_dir: Path,
                                                open_umask: None) -> None:
    """Without requests.mode the socket file is 0600 whatever the umask: the daemon's user
    submits (raw ZMTP, `send`, and the `trollpush send` command); another user cannot
    even connect.  The file is gone after the daemon stops."""
    sock = socket_dir / "requests.sock"
    address = f"ipc://{sock}"
    with running_daemon(_requests(base_config, address)):
        st = os.lstat(sock)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert _as(None, _submit(address, granule, bucket)) == "ok ack"
        other = _as((NOBODY, NOBODY), _submit(address, granule, bucket))
        assert other.startswith("error PermissionError"), other
        result = send(str(granule), f"s3://{bucket}/ipc/", server=address, timeout=10)
        assert result.ok, result.error
        cli = subprocess.run([sys.executable, "-m", "trollpush", "send", str(granule),
                              f"s3://{bucket}/cli/", "--server", address, "--timeout", "10"],
                             capture_output=True, text=True, timeout=60, cwd=ROOT,
                             env=os.environ.copy())
        assert cli.returncode == 0, cli.stdout + cli.stderr
    assert not sock.exists()


@needs_root
def test_mode_and_group_let_a_group_submit(base_config: dict[str, Any], granule: Path,
                                           bucket: str, socket_dir: Path,
                                           open_umask: None) -> None:
    """requests.mode 0660 and requests.group: the socket file gets both; a member of the
    group submits, a user in neither owner nor group cannot."""
    group = grp.getgrgid(NOBODY).gr_name
    sock = socket_dir / "requests.sock"
    address = f"ipc://{sock}"
    with running_daemon(_requests(base_config, address, mode="0660", group=group)):
        st = os.lstat(sock)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, NOBODY)
        member = _as((NOBODY, NOBODY), _submit(address, granule, bucket))
        assert member == "ok ack", member
        outsider = _as(OTHER, _submit(address, granule, bucket))
        assert outsider.startswith("error PermissionError"), outsider


def _stale(path: Path) -> None:
    """A socket file whose listener died without removing it (kill -9)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()


async def _sink(item: Any) -> None:
    return None


async def test_a_stale_socket_is_replaced_but_a_live_one_is_not_taken_over(
        socket_dir: Path) -> None:
    """A socket file left by a crash is removed; one with a live listener (another daemon)
    makes start-up fail instead of silently stealing its address."""
    sock = socket_dir / "requests.sock"
    _stale(sock)
    first = RequestServer(f"ipc://{sock}", _sink)
    first.start()
    try:
        assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600
        second = RequestServer(f"ipc://{sock}", _sink)
        with pytest.raises(SetupError, match="another process listens"):
            second.start()
        second.close()
        zmtp.connect(f"ipc://{sock}").close()  # still the first's: it answers ZMTP
    finally:
        await first.stop()
        first.close()
    assert not sock.exists()


async def test_a_path_that_is_not_a_socket_is_never_removed(socket_dir: Path) -> None:
    """libzmq unlinks whatever is at an ipc path before it binds: a typo must not delete a
    file.  (The config check refuses it at load; this is the start-up's own check, for a
    file that appeared after.)"""
    victim = socket_dir / "important.txt"
    victim.write_text("keep me")
    server = RequestServer(f"ipc://{victim}", _sink)
    with pytest.raises(SetupError, match="is not a socket"):
        server.start()
    server.close()
    assert victim.read_text() == "keep me"


# --- config ------------------------------------------------------------------------------


def _problems(requests: dict[str, Any]) -> list[str]:
    data = {"requests": requests, "endpoints": {"default": {}}}
    try:
        parse_config(data)
    except ConfigError as err:
        return [str(p) for p in err.problems]
    return []


def _parsed(requests: dict[str, Any]) -> Any:
    return parse_config({"requests": requests, "endpoints": {"default": {}}}).requests


def test_mode_and_group_defaults(socket_dir: Path) -> None:
    """ipc without mode: 0600 (the daemon's user only); with a group: 0660 (the group is
    meant to submit); tcp has neither."""
    address = f"ipc://{socket_dir}/r.sock"
    assert (_parsed({"address": address}).mode, _parsed({"address": address}).group) == (
        0o600, None)
    with_group = _parsed({"address": address, "group": NOBODY})
    assert (with_group.mode, with_group.group) == (0o660, NOBODY)
    assert _parsed({"address": address, "group": grp.getgrgid(0).gr_name}).group == 0
    tcp = _parsed({"address": "tcp://127.0.0.1:15556"})
    assert (tcp.mode, tcp.group) == (None, None)


@pytest.mark.parametrize(("value", "mode"), [("0660", 0o660), ("660", 0o660), ("0o640", 0o640),
                                             ("0600", 0o600)])
def test_mode_forms(socket_dir: Path, value: Any, mode: int) -> None:
    """A quoted octal string (an unquoted number is refused: see below)."""
    assert _parsed({"address": f"ipc://{socket_dir}/r.sock", "mode": value}).mode == mode


@pytest.mark.parametrize(("requests", "expected"), [
    ({"address": "tcp://127.0.0.1:15556", "mode": "0660"}, "requests.mode"),
    ({"address": "tcp://127.0.0.1:15556", "group": 0}, "requests.group"),
    ({"address": "ipc://{dir}/r.sock", "mode": "0999"}, "requests.mode"),
    ({"address": "ipc://{dir}/r.sock", "mode": 660}, "requests.mode"),  # decimal 660
    ({"address": "ipc://{dir}/r.sock", "mode": 0o660}, "requests.mode"),  # YAML's 0660
    ({"address": "ipc://{dir}/r.sock", "mode": 506}, "requests.mode"),  # would be 0o772
    ({"address": "ipc://{dir}/r.sock", "mode": "rw-rw----"}, "requests.mode"),
    ({"address": "ipc://{dir}/r.sock", "mode": True}, "requests.mode"),
    ({"address": "ipc://{dir}/r.sock", "group": "no-such-group-tp"}, "requests.group"),
    ({"address": "ipc://{dir}/r.sock", "group": 987654}, "requests.group"),
    ({"address": "ipc://relative/r.sock"}, "absolute path"),
    ({"address": "ipc:///no/such/dir/r.sock"}, "existing directory"),
    ({"address": "ipc://{dir}/" + "x" * 120}, "at most 107 bytes"),
    ({"address": "ipc://{dir}/a-file"}, "is not a socket"),
])
def test_bad_ipc_settings_are_refused(socket_dir: Path, requests: dict[str, Any],
                                      expected: str) -> None:
    (socket_dir / "a-file").write_text("x")
    requests = {k: v.replace("{dir}", str(socket_dir)) if isinstance(v, str) else v
                for k, v in requests.items()}
    problems = _problems(requests)
    assert any(expected in p for p in problems), problems
