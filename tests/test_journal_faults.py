"""Issue 9 item 6: a journal that cannot be written (a real full file system).

While the journal cannot be written, new requests are refused with
``journal_unavailable``; work in progress ends with exactly one outcome; the daemon
accepts again once the journal can be written.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trollpush import send

from .helpers import Listener, Producer, link, running_daemon, wait_until
from .servers import CorruptingProxy

pytestmark = pytest.mark.slow


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of the test's own: filled up, it is a real full disk."""
    mount = tmp_path / "small-fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs",
                           str(mount)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(fs: Path) -> Path:
    """Take every free byte of the file system; the file that does it."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 512, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as err:
                    assert err.errno == errno.ENOSPC, err
                    break
    finally:
        os.close(fd)
    return filler


def _file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(2000))
    return path


def test_a_full_journal_refuses_new_requests_then_accepts_again(
        base_config: dict[str, Any], small_fs: Path, tmp_path: Path, s3: Any, bucket: str,
        ports: dict[str, int], producer: Producer, listener: Listener) -> None:
    base_config["journal"] = {"path": str(small_fs / "journal.sqlite")}
    server = f"tcp://127.0.0.1:{ports['req']}"

    def go(name: str) -> Any:
        return send(str(_file(tmp_path, name)), f"s3://{bucket}/{name}", server=server,
                    timeout=10, result_timeout=30)

    with running_daemon(base_config) as daemon:
        link(producer, listener, "/new/file/viirs/")
        assert go("one.h5").ok
        filler = fill(small_fs)
        refused = go("two.h5")
        assert not refused.ok and refused.message.data["reason"] == "journal_unavailable"
        assert daemon.journal_down
        listener.wait_for(lambda ms: any(m.type == "failure" and m.data.get("reason")
                                         == "journal_unavailable" for m in ms),
                          what="the refusal announced")
        filler.unlink()
        again = go("three.h5")
        assert again.ok, again.error
        assert not daemon.journal_down
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert keys == {"one.h5", "three.h5"}


def test_an_outcome_the_journal_cannot_record_is_announced_once(
        base_config: dict[str, Any], small_fs: Path, tmp_path: Path, s3_url: str, s3: Any,
        bucket: str, ports: dict[str, int], producer: Producer, listener: Listener) -> None:
    """The upload finishes while the disk is full: the completion is announced and
    answered, and no internal_error follows it for the same request."""
    proxy = CorruptingProxy(s3_url, hold=lambda head: b"/held.h5" in head.split(b"\r\n")[0])
    base_config["endpoints"]["default"].update(url=proxy.url, prewarm=0)
    base_config["journal"] = {"path": str(small_fs / "journal.sqlite")}
    server = f"tcp://127.0.0.1:{ports['req']}"
    held = _file(tmp_path, "held.h5")
    out: list[Any] = []
    try:
        with running_daemon(base_config) as daemon:
            link(producer, listener, "/new/file/viirs/")
            worker = threading.Thread(target=lambda: out.append(send(
                str(held), f"s3://{bucket}/held.h5", server=server, timeout=10,
                result_timeout=30)), daemon=True)
            worker.start()
            wait_until(lambda: proxy.held == 1, 15, "the upload held at the proxy")
            filler = fill(small_fs)
            proxy.gate.set()
            worker.join(timeout=30)
            # a later message on the same publisher: everything before it has arrived
            late = _file(tmp_path, "late.h5")
            refused = send(str(late), f"s3://{bucket}/late.h5", server=server, timeout=10)
            assert refused.message.data["reason"] == "journal_unavailable"
            messages = listener.wait_for(lambda ms: any(
                m.data.get("uri") == str(late) for m in ms), what="the later refusal")
            filler.unlink()
            assert daemon.counts["completed"] == 1 and daemon.counts["failed"] == 0
    finally:
        proxy.gate.set()
        proxy.close()
    assert out and out[0].ok and out[0].message.type == "file", out
    about = [m for m in messages if m.data.get("uri") in (str(held), f"s3://{bucket}/held.h5")]
    assert [m.type for m in about] == ["file"], [(m.type, m.data) for m in about]
    assert s3.get_object(Bucket=bucket, Key="held.h5")["Body"].read() == held.read_bytes()
