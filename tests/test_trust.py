"""Issue 9, the holes hostile testing found: a source swapped after acceptance (symlink
race, FIFO, directory), torn objects, repeats answered without proof, attempts that
lied.  Each test fails on the code before the fix.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import crc32c
import pytest

from trollpush import send

from .conftest import CREDS
from .helpers import running_daemon, started_engine, upload_of, wait_until, wait_until_async
from .servers import CorruptingProxy

pytestmark = pytest.mark.slow
MiB = 1024 * 1024

#: the attacker: a second process that swaps a file the daemon has accepted
SWAP = """
import os, sys
path, secret, kind = sys.argv[1:4]
if kind == "symlink":
    os.unlink(path); os.symlink(secret, path)
elif kind == "parent_symlink":
    d = os.path.dirname(path); os.rename(d, d + ".old"); os.symlink(os.path.dirname(secret), d)
elif kind == "fifo":
    os.unlink(path); os.mkfifo(path)
elif kind == "directory":
    os.unlink(path); os.mkdir(path)
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="trollpush-trust-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _attacker() -> tuple[str, dict[str, Any]]:
    """How to run the second process: as the unprivileged `nobody` when the tests run as
    root (as the daemon may), with a Python that user may execute."""
    if os.geteuid() == 0:
        import pwd

        system = shutil.which("python3", path="/usr/bin:/bin")
        with contextlib.suppress(KeyError):
            pw = pwd.getpwnam("nobody")
            if system:
                return system, {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    return sys.executable, {}


def _sender(server: str, path: Path, dest: str, out: dict[str, Any], name: str,
            **kw: Any) -> threading.Thread:
    def run() -> None:
        start = time.monotonic()
        out[name] = send(str(path), dest, server=server, timeout=10, **kw)
        out[name + "_seconds"] = time.monotonic() - start
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# --- 1, 8, 9: a file swapped after it was accepted -----------------------------------------


@pytest.mark.parametrize(("swap", "reason"), [
    ("symlink", "not_a_file"),  # the race of item 1: a symlink to someone else's secret
    ("parent_symlink", "not_allowed"),  # a directory on the way swapped: real path checked
    ("fifo", "not_a_file"),  # item 8: open() used to block for ever
    ("directory", "not_a_file"),  # item 9: used to be retried for an hour
])
def test_a_file_swapped_after_acceptance_is_refused_at_upload(
        swap: str, reason: str, base_config: dict[str, Any], s3_url: str, s3: Any,
        bucket: str, ports: dict[str, int], shared_dir: Path) -> None:
    """Request A holds the object's lock (its PUT held at a proxy); request B, for an
    innocent file in a world-writable allowed root, waits for the same object; a second
    process, as an unprivileged user, swaps B's file.  B must fail at once, and the
    object must hold A's bytes, never the secret."""
    root = shared_dir / "data"
    (root / "sub").mkdir(parents=True)
    secret_dir = shared_dir / "secret"
    secret_dir.mkdir()
    secret = secret_dir / "b.h5"
    secret.write_bytes(b"SECRET-" * 500)
    secret.chmod(0o600)
    for d in (root, root / "sub"):
        d.chmod(0o1777)  # world-writable, sticky (as /tmp)
    a, b = root / "a.h5", root / "sub" / "b.h5"
    a.write_bytes(os.urandom(3000))
    b.write_bytes(b"innocent")  # the attacker's own file, in a directory of its own
    python, as_attacker = _attacker()
    if as_attacker:
        for path in (b, root / "sub"):
            os.chown(path, as_attacker["user"], as_attacker["group"])
    proxy = CorruptingProxy(s3_url, hold=lambda head: head.startswith(b"PUT "))
    base_config["endpoints"]["default"].update(url=proxy.url, prewarm=0, attempt_timeout=60)
    base_config["daemon"]["allowed_roots"] = [str(root)]
    server = f"tcp://127.0.0.1:{ports['req']}"
    dest = f"s3://{bucket}/shared.h5"
    out: dict[str, Any] = {}
    try:
        with running_daemon(base_config) as daemon:
            first = _sender(server, a, dest, out, "a")
            wait_until(lambda: proxy.held == 1, 15, "A's PUT held at the proxy")
            second = _sender(server, b, dest, out, "b")
            wait_until(lambda: any(e.users == 2 for e in daemon.pipeline._objects.values()), 15,
                       "B waiting for the object's lock")
            subprocess.run([python, "-c", SWAP, str(b), str(secret), swap], check=True,
                           timeout=30, **as_attacker)
            proxy.gate.set()
            first.join(timeout=30)
            second.join(timeout=30)
            assert "b" in out, "B got no answer"
            # the daemon is not stuck behind B: an unrelated file goes at once
            other = root / "other.h5"
            other.write_bytes(b"other")
            again = send(str(other), f"s3://{bucket}/other.h5", server=server, timeout=10,
                         result_timeout=20)
            assert again.ok, again.error
            stop_started = time.monotonic()
        assert time.monotonic() - stop_started < 15, "the daemon took long to stop"
    finally:
        proxy.gate.set()
        proxy.close()
    assert out["a"].ok, out["a"].error
    failure = out["b"].message.data
    assert not out["b"].ok and failure["reason"] == reason, failure
    assert failure["attempts"] == 0
    assert out["b_seconds"] < 30
    body = s3.get_object(Bucket=bucket, Key="shared.h5")["Body"].read()
    assert body == a.read_bytes() and b"SECRET" not in body


async def test_a_fifo_or_a_symlink_is_refused_without_blocking(s3_url: str, bucket: str,
                                                               tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    target = tmp_path / "real.h5"
    target.write_bytes(b"x")
    link = tmp_path / "link.h5"
    link.symlink_to(target)
    engine = await started_engine(s3_url, tries=3)
    try:
        start = time.monotonic()
        results = [await engine.upload(upload_of(p, bucket, p.name), "default")
                   for p in (fifo, link, tmp_path)]
    finally:
        await engine.close()
    assert time.monotonic() - start < 10
    assert [r.reason for r in results] == ["not_a_file"] * 3
    assert all(r.attempts == 0 for r in results)


async def test_a_hung_file_system_call_is_bounded(s3_url: str, bucket: str,
                                                 tmp_path: Path) -> None:
    """daemon.file_timeout bounds each file-system call: a hung open fails its upload."""
    path = tmp_path / "f.h5"
    path.write_bytes(b"x")
    release = threading.Event()
    engine = await started_engine(s3_url)
    engine._files.timeout = 0.5
    import trollpush.transfer.engine as transfer

    real = transfer.open_source  # type: ignore[attr-defined]

    def hung(*args: Any) -> Any:  # a stale NFS mount: the call does not return
        release.wait(30)
        return real(*args)

    transfer.open_source = hung  # type: ignore[attr-defined,assignment]
    try:
        start = time.monotonic()
        result = await engine.upload(upload_of(path, bucket, "f.h5"), "default")
        elapsed = time.monotonic() - start
    finally:
        transfer.open_source = real  # type: ignore[attr-defined]
        release.set()
        await engine.close()
    assert result.reason == "file_unreadable" and "file_timeout" in (result.error or "")
    assert elapsed < 5


# --- 5: no torn object ----------------------------------------------------------------------

#: a producer still writing: appends until told to stop (bounded in time and size)
GROW = """
import os, sys, time
path = sys.argv[1]
deadline = time.monotonic() + 60
with open(path, "ab", buffering=0) as f:
    for _ in range(60_000):
        if time.monotonic() > deadline or os.path.exists(path + ".stop"):
            break
        f.write(b"y" * 1024)
        time.sleep(0.001)
"""


def _weed(url: str) -> Any:
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"])


@pytest.mark.parametrize(("size", "settings"), [
    (1 * MiB, {}),  # read whole, sent from memory
    (12 * MiB, {"multipart_chunksize": 5 * MiB}),  # streamed single PUT
    (12 * MiB, {"multipart_threshold": 5 * MiB, "multipart_chunksize": 5 * MiB}),
])
async def test_a_file_growing_during_its_upload_leaves_no_object(
        size: int, settings: dict[str, Any], seaweed: str, weed_bucket: str,
        tmp_path: Path) -> None:
    path = tmp_path / "growing.bin"
    path.write_bytes(os.urandom(size))
    writer = await asyncio.create_subprocess_exec(sys.executable, "-c", GROW, str(path))
    try:
        await wait_until_async(lambda: path.stat().st_size > size, 10, "the writer writing")
        engine = await started_engine(seaweed, tries=2, **settings)
        try:
            result = await engine.upload(upload_of(path, weed_bucket, "growing.bin"),
                                         "default")
        finally:
            await engine.close()
    finally:
        await asyncio.to_thread(Path(f"{path}.stop").touch)
        await asyncio.wait_for(writer.wait(), 30)
    assert not result.ok and result.reason == "file_changed", result
    client = _weed(seaweed)
    with pytest.raises(botocore.exceptions.ClientError):
        client.head_object(Bucket=weed_bucket, Key="growing.bin")
    assert client.list_multipart_uploads(Bucket=weed_bucket).get("Uploads", []) == []


# --- 4: a repeat is answered only with proof ------------------------------------------------


def _crc(data: bytes) -> str:
    return base64.b64encode(crc32c.crc32c(data).to_bytes(4, "big")).decode()


def test_a_repeat_is_uploaded_again_unless_content_and_store_match(
        base_config: dict[str, Any], s3: Any, bucket: str, ports: dict[str, int],
        tmp_path: Path) -> None:
    server = f"tcp://127.0.0.1:{ports['req']}"
    path = tmp_path / "granule.h5"
    data = os.urandom(3000)
    path.write_bytes(data)
    dest = f"s3://{bucket}/g.h5"

    def again(**kw: Any) -> Any:
        result = send(str(path), dest, server=server, timeout=10, result_timeout=30, **kw)
        assert result.ok, result.error
        return result

    with running_daemon(base_config) as daemon:
        again()
        again()  # unchanged, and the store has it: answered, nothing sent
        assert daemon.transfer.completed == 1

        # (a) the object was deleted at the store: uploaded again
        s3.delete_object(Bucket=bucket, Key="g.h5")
        again()
        assert daemon.transfer.completed == 2
        assert s3.get_object(Bucket=bucket, Key="g.h5")["Body"].read() == data

        # (b) another writer replaced the object (another daemon, say): uploaded again
        s3.put_object(Bucket=bucket, Key="g.h5", Body=os.urandom(5000))
        reply = again()
        assert daemon.transfer.completed == 3 and reply.message.data["size"] == 3000
        assert s3.get_object(Bucket=bucket, Key="g.h5")["Body"].read() == data

        # (c) rewritten in place within the same second: same size, mtime and inode
        st = path.stat()
        new = os.urandom(3000)
        with open(path, "r+b") as fh:
            fh.write(new)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert (path.stat().st_size, path.stat().st_mtime_ns, path.stat().st_ino) == (
            st.st_size, st.st_mtime_ns, st.st_ino)
        reply = again()
        assert daemon.transfer.completed == 4
        assert reply.message.data["checksum"] == f"crc32c:{_crc(new)}"
        assert s3.get_object(Bucket=bucket, Key="g.h5")["Body"].read() == new

        # and --overwrite forces an upload of an unchanged file
        again(overwrite=True)
        assert daemon.transfer.completed == 5
        again()
        assert daemon.transfer.completed == 5


async def test_a_multipart_repeat_is_checked_against_the_store(seaweed: str, weed_bucket: str,
                                                              tmp_path: Path) -> None:
    """The composite checksum of a multipart object is computed afresh with the part size
    it was uploaded with, and compared with what the store reports."""
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(11 * MiB))
    engine = await started_engine(seaweed, multipart_threshold=5 * MiB,
                                  multipart_chunksize=5 * MiB)
    up = upload_of(path, weed_bucket, "big.bin")
    try:
        first = await engine.upload(up, "default")
        assert first.ok and first.parts == 3 and first.part_size == 5 * MiB
        again = await engine.upload(up, "default", landed=first)
        assert again.ok and again.attempts == 0 and engine.completed == 1
        _weed(seaweed).put_object(Bucket=weed_bucket, Key="big.bin", Body=b"other")
        third = await engine.upload(up, "default", landed=first)
        assert third.ok and third.attempts >= 1 and engine.completed == 2
    finally:
        await engine.close()


# --- 11: attempts tell the truth ------------------------------------------------------------


class _ResettingStore:
    """Reads each request's head, counts it, and resets the connection."""

    def __init__(self) -> None:
        self._srv = socket.create_server(("127.0.0.1", 0))
        self._srv.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._srv.getsockname()[1]}"
        self.puts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._srv.accept()
            except TimeoutError:
                continue
            with contextlib.closing(conn):
                conn.settimeout(5)
                head = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in head and len(head) < 65536:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        head += chunk
                if head.startswith(b"PUT "):
                    self.puts += 1
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                b"\x01\x00\x00\x00\x00\x00\x00\x00")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._srv.close()


def test_attempts_count_every_round(base_config: dict[str, Any], granule: Path,
                                    ports: dict[str, int]) -> None:
    """The store is down past max_age: the failure reports every attempt of every round."""
    store = _ResettingStore()
    base_config["endpoints"]["default"].update(url=store.url, prewarm=0, tries=2,
                                               connect_timeout=2)
    base_config["daemon"]["max_age"] = 3.5
    try:
        with running_daemon(base_config):
            result = send(str(granule), "s3://b/k.h5", timeout=10, result_timeout=60,
                          server=f"tcp://127.0.0.1:{ports['req']}")
    finally:
        store.close()
    assert not result.ok
    attempts = result.message.data["attempts"]
    assert attempts == store.puts and attempts > 2, (attempts, store.puts)


async def test_a_body_is_never_sent_again_behind_trollpushs_back(
        seaweed: str, weed_bucket: str, tmp_path: Path) -> None:
    """A server that resets a kept-alive connection (SeaweedFS keeps them, moto does not):
    aiohttp would send the PUT again on its own; every send must be one of trollpush's
    counted attempts."""
    bucket = weed_bucket
    proxy = CorruptingProxy(seaweed, reset_reused=True)
    engine = await started_engine(proxy.url, tries=3)
    try:
        results = []
        for n in range(2):
            path = tmp_path / f"f{n}"
            path.write_bytes(os.urandom(1000))
            results.append(await engine.upload(upload_of(path, bucket, f"f{n}"), "default"))
    finally:
        await engine.close()
        proxy.close()
    assert all(r.ok for r in results), results
    assert sum(r.attempts for r in results) == proxy.methods["PUT"] == 3



# --- from the hostile review: what a directory on the way, a hung mount and a late answer
# --- must not do


async def test_a_directory_symlink_out_of_the_roots_is_never_opened(tmp_path: Path) -> None:
    """O_NOFOLLOW guards only the last component: the parent is resolved and checked
    first, so a FIFO (or a device) outside the roots is never opened at all."""
    from trollpush.errors import PermanentTransferError
    from trollpush.transfer.source import open_source

    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.mkfifo(outside / "f")
    (root / "d").symlink_to(outside)
    opened = threading.Event()

    def writer() -> None:  # returns only when someone opens the FIFO for reading
        fd = os.open(outside / "f", os.O_WRONLY)
        opened.set()
        os.close(fd)
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    with pytest.raises(PermanentTransferError) as caught:
        await asyncio.to_thread(open_source, str(root / "d" / "f"), "f", (str(root),))
    assert caught.value.reason == "not_allowed"
    assert not opened.wait(0.5), "the FIFO outside the roots was opened"
    os.close(os.open(outside / "f", os.O_RDONLY | os.O_NONBLOCK))  # let the writer go
    thread.join(timeout=10)


async def test_hung_opens_hold_up_only_their_own_uploads(s3_url: str, bucket: str,
                                                         tmp_path: Path) -> None:
    """More hung opens than worker threads: healthy files still go, and no descriptor of
    an open that answered too late is left behind."""
    import trollpush.transfer.engine as transfer

    real = transfer.open_source  # type: ignore[attr-defined]
    release = threading.Event()

    def slow(path: Any, *args: Any) -> Any:
        if Path(path).name.startswith("hung"):
            release.wait(30)  # a mount that answers only much later
        return real(path, *args)

    paths = []
    for n in range(12):
        paths.append(tmp_path / f"hung{n}")
        paths[-1].write_bytes(b"h")
    for n in range(5):
        paths.append(tmp_path / f"ok{n}")
        paths[-1].write_bytes(b"o")
    engine = await started_engine(s3_url)
    engine._files.timeout = 0.5
    transfer.open_source = slow  # type: ignore[attr-defined,assignment]
    try:
        results = await asyncio.gather(*(engine.upload(upload_of(p, bucket, p.name),
                                                       "default") for p in paths))
        release.set()

        def leaked() -> list[str]:
            found = []
            for fd in os.listdir("/proc/self/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path)):
                        found.append(fd)
            return found
        await wait_until_async(lambda: not leaked(), 10, "late descriptors closed")
    finally:
        transfer.open_source = real  # type: ignore[attr-defined]
        release.set()
        await engine.close()
    assert [r.reason for r in results[:12]] == ["file_unreadable"] * 12
    assert all(r.ok for r in results[12:]), results[12:]


async def test_a_copy_is_withdrawn_when_a_later_try_fails(s3_url: str, s3: Any, bucket: str,
                                                          tmp_path: Path) -> None:
    """The first PUT lands, then the file grows; the second try fails otherwise (here a
    bug): the copy at the store is of a file that went on changing, so it goes."""
    path = tmp_path / "grows.bin"
    path.write_bytes(os.urandom(2000))
    engine = await started_engine(s3_url, tries=3)
    puts = 0

    def after(**_: Any) -> None:
        with open(path, "ab") as fh:
            fh.write(b"more")

    def before(**_: Any) -> None:
        nonlocal puts
        puts += 1
        if puts == 2:
            raise RuntimeError("injected: the second try breaks")

    events = engine.client("default").meta.events
    events.register("after-call.s3.PutObject", after)
    events.register("before-send.s3.PutObject", before)
    try:
        result = await engine.upload(upload_of(path, bucket, "grows.bin"), "default")
    finally:
        await engine.close()
    assert not result.ok and result.reason == "internal_error", result
    with pytest.raises(botocore.exceptions.ClientError):
        s3.head_object(Bucket=bucket, Key="grows.bin")
