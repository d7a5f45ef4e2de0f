"""Checks on receipt: no open, no final symlink, and a bound on the file-system calls.

A file on a hung mount is a real one here: a FUSE file system (tests/hangfs.py) whose
look-ups block in the kernel until the test releases them, as on a dead NFS server.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from trollpush import send
from trollpush.client import request_message
from trollpush.errors import Reason
from trollpush.inputs._checks import CheckThreads
from trollpush.inputs.requests import RequestServer
from trollpush.inputs.subscribe import SubscribeReceiver
from trollpush.messages import NO_LIMITS, Limits, decode
from trollpush.models import Rejection, Request

from . import hangfs
from .helpers import Producer, free_port, running_daemon, wait_until, wait_until_async

pytestmark = pytest.mark.slow


def _frame(path: Path | str) -> bytes:
    text: str = request_message(str(path), "s3://b/k").encode()
    return text.encode()


def _decoded(path: Path | str, limits: Limits = NO_LIMITS) -> Request | Rejection:
    return decode(_frame(path), origin="request", limits=limits)


# --- symlinks and FIFOs --------------------------------------------------------------------


def test_a_final_symlink_is_refused_on_receipt(tmp_path: Path) -> None:
    """The upload opens without following a final symlink, so receipt refuses one at
    once, with or without allowed_roots (the link and its target both inside them)."""
    (tmp_path / "real.h5").write_bytes(b"x")
    (tmp_path / "link.h5").symlink_to(tmp_path / "real.h5")
    for limits in (Limits(), Limits(roots=(str(tmp_path),))):
        item = _decoded(tmp_path / "link.h5", limits)
        assert isinstance(item, Rejection), item
        assert item.reason == Reason.NOT_A_FILE
        assert "does not follow a final symlink" in item.detail
        assert isinstance(_decoded(tmp_path / "real.h5", limits), Request)


def test_a_symlink_in_a_directory_path_is_followed(tmp_path: Path) -> None:
    """Only the final component is refused as a link: a linked directory is fine."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f.h5").write_bytes(b"x")
    (tmp_path / "current").symlink_to(tmp_path / "data")
    assert isinstance(_decoded(tmp_path / "current" / "f.h5"), Request)


def test_not_allowed_wins_over_a_symlink_out_of_the_roots(tmp_path: Path) -> None:
    """A link inside the roots to a file outside them is `not_allowed` (it says where the
    file really is), not just `not_a_file`."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    (root / "link.h5").symlink_to(outside / "secret")
    item = _decoded(root / "link.h5", Limits(roots=(str(root),)))
    assert isinstance(item, Rejection) and item.reason == Reason.NOT_ALLOWED


def test_a_dataset_with_a_symlinked_item_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.h5").write_bytes(b"a")
    (tmp_path / "b.h5").symlink_to(tmp_path / "a.h5")
    from posttroll.message import Message

    raw = Message("/x/", "dataset", {"dataset": [{"uri": str(tmp_path / "a.h5")},
                                                 {"uri": str(tmp_path / "b.h5")}]})
    item = decode(raw.encode().encode(), origin="subscribe")
    assert isinstance(item, Rejection) and item.reason == Reason.NOT_A_FILE


def test_a_fifo_is_refused_without_opening_it(tmp_path: Path) -> None:
    """A FIFO with no writer: an open for reading would block for ever; receipt answers
    `not_a_file` at once (in a thread here, so that a regression fails instead of
    hanging the test run)."""
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    out: list[Request | Rejection] = []
    thread = threading.Thread(target=lambda: out.append(_decoded(fifo)), daemon=True)
    thread.start()
    thread.join(timeout=5)
    assert out, "checking a FIFO blocked"
    assert isinstance(out[0], Rejection) and out[0].reason == Reason.NOT_A_FILE
    # nobody holds it open for reading: a non-blocking writer finds no reader
    with pytest.raises(OSError, match="No such device or address"):
        os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)


# --- a bound on the file-system work ------------------------------------------------------


@pytest.fixture
def hung(tmp_path: Path) -> Iterator[hangfs.HangFS]:
    """A mount whose names starting with `hang` never answer (until the test ends)."""
    why = hangfs.available()
    if why:
        pytest.skip(why)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        fs = hangfs.HangFS(mountpoint)
    except OSError as err:  # e.g. a container without the right to mount
        pytest.skip(f"cannot mount a FUSE file system here: {err}")
    yield fs
    fs.close()


async def test_the_request_server_bounds_a_hung_check(hung: hangfs.HangFS,
                                                      tmp_path: Path) -> None:
    """A request for a file on a hung mount is answered `file_unreadable` after
    file_timeout, and the request behind it is served without waiting for the mount."""
    ok = tmp_path / "ok.h5"
    ok.write_bytes(b"x")
    items: list[Request | Rejection] = []

    async def sink(item: Request | Rejection) -> None:
        items.append(item)

    server = RequestServer("tcp://127.0.0.1:0", sink, limits=Limits(file_timeout=1.0))
    server.start()
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(server.address)
        started = time.monotonic()
        await sock.send_multipart([b"", _frame(hung.path("hang.h5"))])
        await sock.send_multipart([b"", _frame(ok)])
        await wait_until_async(lambda: len(items) == 2, 15, "both requests decoded")
        took = time.monotonic() - started
    finally:
        await server.stop()
        server.close()
        sock.close()
        ctx.term()
    stuck, fine = items
    assert isinstance(stuck, Rejection) and stuck.reason == Reason.FILE_UNREADABLE
    assert "daemon.file_timeout (1 s)" in stuck.detail
    assert stuck.uri == str(hung.path("hang.h5")) and stuck.reply is not None
    assert isinstance(fine, Request)
    assert took < 5, f"{took:.1f} s"


async def test_the_subscriber_bounds_a_hung_check(hung: hangfs.HangFS,
                                                  tmp_path: Path) -> None:
    """The pub-sub reader does not hang on a file on a hung mount: that message is
    refused after file_timeout and the ones behind it go on."""
    ok = tmp_path / "ok.h5"
    ok.write_bytes(b"x")
    address = f"tcp://127.0.0.1:{free_port()}"
    producer = Producer(address)
    items: list[Request | Rejection] = []

    async def sink(item: Request | Rejection) -> None:
        items.append(item)

    receiver = SubscribeReceiver({"topics": ["/new/"], "nameserver": False,
                                  "addresses": [address]}, sink, asyncio.get_running_loop(),
                                 limits=Limits(file_timeout=1.0))
    await asyncio.to_thread(receiver.start)
    try:
        for _ in range(200):  # linked once a probe (a remote file) comes through
            producer.send("/new/x/", "file", {"uri": "ssh://elsewhere.invalid/probe"})
            if items:
                break
            await asyncio.sleep(0.05)
        assert items, "the subscription never joined"
        items.clear()
        started = time.monotonic()
        producer.send("/new/x/", "file", {"uri": str(hung.path("hang.h5"))})
        producer.send("/new/x/", "file", {"uri": str(ok)})
        hang_uri = str(hung.path("hang.h5"))

        def both() -> bool:
            return any(isinstance(i, Rejection) and i.uri == hang_uri for i in items) and any(
                isinstance(i, Request) and i.files[0].path == ok for i in items)

        await wait_until_async(both, 15, "both messages decoded")
        took = time.monotonic() - started
    finally:
        await asyncio.to_thread(receiver.stop)
        producer.close()
    stuck = [i for i in items if isinstance(i, Rejection)
             and i.uri == str(hung.path("hang.h5"))]
    assert len(stuck) == 1 and stuck[0].reason == Reason.FILE_UNREADABLE, items
    assert any(isinstance(i, Request) and i.files[0].path == ok for i in items), items
    assert took < 5, f"{took:.1f} s"


def test_a_daemon_answers_a_request_on_a_hung_mount(hung: hangfs.HangFS,
                                                    base_config: dict[str, Any],
                                                    granule: Path, bucket: str,
                                                    ports: dict[str, int]) -> None:
    """End to end: `send` for a file on a hung mount gets `file_unreadable` after
    daemon.file_timeout, and the daemon goes on serving."""
    base_config["daemon"]["file_timeout"] = 1
    server = f"tcp://127.0.0.1:{ports['req']}"
    with running_daemon(base_config):
        started = time.monotonic()
        stuck = send(str(hung.path("hang.h5")), f"s3://{bucket}/x/", server=server, timeout=10)
        took = time.monotonic() - started
        fine = send(str(granule), f"s3://{bucket}/x/", server=server, timeout=10)
    assert not stuck.ok and stuck.message.data["reason"] == Reason.FILE_UNREADABLE
    assert "daemon.file_timeout" in stuck.message.data["error"]
    assert took < 5, f"{took:.1f} s"
    assert fine.ok, fine.error


def test_check_threads_are_not_held_up_by_a_stuck_one() -> None:
    """A check that never returns keeps its thread; the next check gets another."""
    checks = CheckThreads("test", limit=2)
    gate = threading.Event()
    try:
        stuck = checks.submit(gate.wait, 30)
        assert checks.submit(lambda: 42).result(timeout=5) == 42
        wait_until(lambda: checks.busy == 1, 5, "the second thread back")
        assert not stuck.done()
        blocked = checks.submit(gate.wait, 30)
        third = checks.submit(lambda: 7)  # the limit: this one waits for a thread
        assert checks.busy == 2
        assert len([t for t in threading.enumerate() if t.name.startswith("test-")]) == 2
        gate.set()
        assert third.result(timeout=5) == 7 and blocked.result(timeout=5)
        # the books balance: both threads free again, none counted twice
        wait_until(lambda: checks.busy == 0, 5, "both threads free")
        assert [checks.submit(lambda: 1).result(timeout=5) for _ in range(3)] == [1, 1, 1]
        wait_until(lambda: checks.busy == 0, 5, "both threads free again")
    finally:
        gate.set()
        checks.close()
