"""The s3daemon input: lsst-dm/s3daemon's line protocol, against real daemons and moto.

s3daemon is not on PyPI, so its client is not run itself: ``s3daemon_send`` and
``SEND_PY`` do what its ``send.py`` does (read from its source, November 2026): connect
to ``S3DAEMON_HOST``:``S3DAEMON_PORT``, send ``FILE DEST`` and a newline, read the answer
with one ``recv(4096)``, exit 0 if it starts with ``Success``, else print it to standard
error and exit 1.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trollpush.config import S3DaemonConfig, parse_config
from trollpush.errors import ConfigError, SetupError
from trollpush.inputs.s3daemon import MAX_ANSWER, S3DaemonInput, answer, parse_line
from trollpush.journal import SQLiteJournal
from trollpush.messages import NO_LIMITS, combine, completion, failure, new_message
from trollpush.models import Job, Rejection, Request, UploadResult

from .helpers import (
    Listener,
    Producer,
    daemon_process,
    free_port,
    link,
    running_daemon,
    upload_of,
    wait_until,
)
from .servers import CorruptingProxy

MiB = 1024 * 1024

SEND_PY = """
import os, socket, sys
host = os.environ.get("S3DAEMON_HOST", "localhost")
port = int(os.environ.get("S3DAEMON_PORT", 15555))
with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.connect((host, port))
    sock.sendall(f"{sys.argv[1]} {sys.argv[2]}\\n".encode("UTF-8"))
    received = sock.recv(4096).decode("utf-8")
if received.startswith("Success"):
    sys.exit(0)
print(received, file=sys.stderr)
sys.exit(1)
"""


def _connect(address: str, timeout: float = 30) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    return sock


def s3daemon_send(address: str, filename: str, dest: str) -> bytes:
    """What s3daemon's send.py sends and reads: one line, one recv(4096)."""
    with _connect(address) as sock:
        sock.sendall(f"{filename} {dest}\n".encode())
        return sock.recv(4096)


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def exchange(address: str, data: bytes, *, shut: bool = False) -> bytes:
    """Send ``data`` (then our end of the stream, with ``shut``), read until closed."""
    with _connect(address) as sock:
        sock.sendall(data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        return read_all(sock)


def reset(sock: socket.socket) -> None:
    """Close with a reset instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.fixture
def config(base_config: dict[str, Any]) -> dict[str, Any]:
    """The suite's config with the s3daemon input on a free port."""
    base_config["s3daemon"] = {"address": "127.0.0.1:0", "line_timeout": 1}
    return base_config


@pytest.fixture
def held(s3_url: str) -> Iterator[CorruptingProxy]:
    """A proxy in front of moto that holds back, until its gate opens, every request
    whose head its ``hold`` (set by the test) accepts."""
    proxy = CorruptingProxy(s3_url, hold=lambda head: False)
    yield proxy
    proxy.gate.set()
    proxy.close()


def address_of(daemon: Any) -> str:
    return str(daemon.input("s3daemon").address)


# --- the line, and the answer (no sockets) ----------------------------------------------


@pytest.mark.parametrize(("line", "destination"), [
    (b"/data/f.h5 alias/bkt/a/b/c.h5", "s3://bkt/a/b/c.h5"),  # a key with slashes
    (b"/data/f.h5 /bkt/a/", "s3://bkt/a/f.h5"),  # an empty alias; the name appended
    (b"/data/f.h5 s3://bkt/k", "s3://bkt/k"),
    (b"/data/f.h5 alias/bkt", "s3://bkt/f.h5"),
    (b"/data/f.h5 alias/bkt/k \r", "s3://bkt/k"),  # trailing blanks, as s3daemon strips
])
def test_a_line_is_a_direct_request(line: bytes, destination: str) -> None:
    item = parse_line(line, False, endpoint="archive", limits=NO_LIMITS)
    assert isinstance(item, Request), item
    assert (item.origin, item.type, item.destination, item.endpoint) == (
        "s3daemon", "file", destination, "archive")
    assert item.files[0].uri == "/data/f.h5" and item.metadata == {}


@pytest.mark.parametrize(("line", "reason", "shown"), [
    (b"hello", "bad_message", "expected '<file> <alias>/<bucket>/<key>', got 'hello'"),
    (b"/a b/c/d extra", "bad_message", "expected"),
    (b" /a b/c/d", "bad_message", "expected"),
    (b"/a\xff\xfe b/c/d", "bad_message", "not UTF-8"),
    (b"/a nobucket", "bad_destination", "'nobucket'"),
    (b"/a http://host/b/k", "bad_destination", "expected s3://BUCKET/KEY"),
    (b"relative/f.h5 a/b/k", "bad_message", "the path must be absolute"),
    (b"ssh://elsewhere/f.h5 a/b/k", "remote_file", "not on this host"),
])
def test_a_bad_line_is_refused_with_its_reason(line: bytes, reason: str, shown: str) -> None:
    item = parse_line(line, False, endpoint="default", limits=NO_LIMITS)
    assert isinstance(item, Rejection), item
    assert item.reason == reason and shown in item.detail, item


def test_the_answer_is_success_or_the_reason_and_message(granule: Path) -> None:
    request = parse_line(f"{granule} a/b/k".encode(), True, endpoint="d", limits=NO_LIMITS)
    assert isinstance(request, Request)
    up = upload_of(granule, "b", "k")
    job = Job(request, None, "d", (up,), {}, "/uploaded/")
    assert answer(completion(job, [UploadResult(up, 70_000, 1, 0.1)])) == b"Success"
    fail = failure("/failed", uri=str(granule), destination="s3://b/k", reason="file_missing",
                   error="no such file")
    assert answer(fail) == b"file_missing: no such file"
    both = combine([new_message("/x", "file", {"uri": "s3://b/k"}), fail], "/x")
    assert answer(both) == b"file_missing: no such file"
    long = failure("/failed", uri="u", destination=None, reason="bad_message", error="é" * 5000)
    text = answer(long)
    assert len(text) <= MAX_ANSWER < 4096 and text.decode().startswith("bad_message: éé")


# --- the config section -------------------------------------------------------------------


def test_an_s3daemon_section_alone_is_a_complete_config() -> None:
    """`s3daemon:` with nothing under it: on at the default address, the only endpoint."""
    config = parse_config({"s3daemon": None, "endpoints": {"store": {}}})
    assert config.s3daemon is not None
    assert (config.s3daemon.address, config.s3daemon.endpoint) == ("127.0.0.1:15557", "store")
    assert (config.s3daemon.host, config.s3daemon.port) == ("127.0.0.1", 15557)
    assert "input  s3daemon: line protocol on 127.0.0.1:15557 -> endpoint store" in \
        config.summary()
    ipv6 = parse_config({"s3daemon": {"address": "[::1]:0"}, "endpoints": {"e": {}}})
    assert ipv6.s3daemon is not None and ipv6.s3daemon.host == "::1"


@pytest.mark.parametrize(("section", "key", "expected"), [
    ({"endpoint": "nowhere"}, "s3daemon.endpoint", "one of the endpoints: a, b"),
    ({}, "s3daemon.endpoint", "the name of an endpoint (one of: a, b)"),
    ({"address": "127.0.0.1:70000", "endpoint": "a"}, "s3daemon.address", "up to 65535"),
    ({"address": "127.0.0.1", "endpoint": "a"}, "s3daemon.address", "HOST:PORT"),
    ({"max_connections": 0, "endpoint": "a"}, "s3daemon.max_connections", ">= 1"),
])
def test_config_mistakes_name_the_key(section: dict[str, Any], key: str,
                                      expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"s3daemon": section, "endpoints": {"a": {}, "b": {}}})
    assert any(p.key == key and expected in str(p) for p in info.value.problems), \
        [str(p) for p in info.value.problems]


class _NoIntake:
    """An intake nothing is handed to (the listening socket alone is tested)."""

    limits = NO_LIMITS


def test_it_listens_on_loopback_and_warns_of_any_other_address(
        caplog: pytest.LogCaptureFixture) -> None:
    """A port in use is a SetupError naming the key; an address beyond loopback works
    but is logged as open to anyone who reaches it."""
    intake: Any = _NoIntake()

    async def start(address: str) -> str:
        each = S3DaemonInput(S3DaemonConfig(address=address), intake)
        try:
            await each.start()
            return each.describe()
        finally:
            await each.close()

    with socket.create_server(("127.0.0.1", 0)) as busy:
        taken = f"127.0.0.1:{busy.getsockname()[1]}"
        with pytest.raises(SetupError, match=f"s3daemon.address {taken}: cannot listen"):
            asyncio.run(start(taken))
    for quiet in ("127.0.0.1:0", "localhost:0"):
        assert asyncio.run(start(quiet)).startswith(f"s3daemon on {quiet[:-1]}")
    assert "reachable beyond this host" not in caplog.text
    asyncio.run(start("0.0.0.0:0"))
    assert "reachable beyond this host and has no authentication" in caplog.text


# --- a real daemon --------------------------------------------------------------------------


def test_a_plain_socket_client_gets_success_and_the_object_lands(
        config: dict[str, Any], s3: Any, bucket: str, granule: Path, producer: Producer,
        listener: Listener) -> None:
    """s3daemon's own exchange: one line in, `Success` out once the object is there; the
    completion is announced like any direct request's."""
    with running_daemon(config) as daemon:
        link(producer, listener, "/new/file/viirs/")
        got = s3daemon_send(address_of(daemon), str(granule), f"alias/{bucket}/a/b/c.h5")
        assert got == b"Success"
        assert s3.get_object(Bucket=bucket, Key="a/b/c.h5")["Body"].read() == \
            granule.read_bytes()
        for dest, key in ((f"/{bucket}/d/", f"d/{granule.name}"), (f"s3://{bucket}/e", "e")):
            assert s3daemon_send(address_of(daemon), str(granule), dest) == b"Success"
            assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == 70_000
        done = listener.wait_for(lambda ms: len([m for m in ms if m.type == "file"]) == 3)
        assert daemon.counts["completed"] == 3
    assert {m.data["uri"] for m in done if m.type == "file"} == {
        f"s3://{bucket}/a/b/c.h5", f"s3://{bucket}/d/{granule.name}", f"s3://{bucket}/e"}


def test_an_s3daemon_user_switches_with_no_change_to_the_client(
        config: dict[str, Any], s3: Any, bucket: str, granule: Path, tmp_path: Path) -> None:
    """The client as s3daemon users run it, pointed at trollpush by S3DAEMON_PORT: exit 0
    on success, exit 1 with the error text on standard error."""
    script = tmp_path / "send.py"
    script.write_text(SEND_PY)
    with running_daemon(config) as daemon:
        env = {**os.environ, "S3DAEMON_HOST": "localhost",
               "S3DAEMON_PORT": address_of(daemon).rsplit(":", 1)[1]}

        def send(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, str(script), *args], env=env, timeout=60,
                                  capture_output=True, text=True, check=False)

        ok = send(str(granule), f"summit/{bucket}/raw/{granule.name}")
        bad = send(str(tmp_path / "missing.h5"), f"summit/{bucket}/raw/")
    assert (ok.returncode, ok.stderr) == (0, "")
    assert s3.head_object(Bucket=bucket, Key=f"raw/{granule.name}")["ContentLength"] == 70_000
    assert bad.returncode == 1
    assert bad.stderr.startswith(f"file_missing: {tmp_path / 'missing.h5'}: no such file")


def test_errors_are_answered_with_the_reason_and_message(
        config: dict[str, Any], s3: Any, bucket: str, granule: Path, tmp_path: Path) -> None:
    config["daemon"]["allowed_roots"] = [str(granule.parent)]
    cases = {
        (str(tmp_path / "nope.h5"), f"a/{bucket}/k"): "file_missing: ",
        (str(granule), "nobucket"): "bad_destination: 'nobucket': expected s3://BUCKET/KEY",
        (str(granule), "a/tp-no-such-bucket-here/k"): "permanent_error: PUT "
                                                      "s3://tp-no-such-bucket-here/k: NoSuchBucket",
        (str(tmp_path), f"a/{bucket}/k"): "not_a_file: ",
        ("/etc/hostname", f"a/{bucket}/k"): "not_allowed: /etc/hostname: outside the allowed",
    }
    with running_daemon(config) as daemon:
        got = {case: s3daemon_send(address_of(daemon), *case).decode() for case in cases}
        assert daemon.counts["failed"] == 1 and daemon.counts["rejected"] == 4
    for case, expected in cases.items():
        assert got[case].startswith(expected), (case, got[case])
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)


def test_hostile_input_gets_an_error_text_and_the_daemon_goes_on(
        config: dict[str, Any], bucket: str, granule: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """Garbage, a line that is not UTF-8, one too long, one that never ends, one cut off
    by the client: each gets its error text and a closed connection, each is logged
    (escaped), and the next client is served as if nothing happened."""
    config["daemon"]["max_request_bytes"] = "4KiB"
    with running_daemon(config) as daemon:
        where = address_of(daemon)
        garbage = exchange(where, b"hello \x1b[31mworld and more\n")
        http = exchange(where, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # the rest unread
        not_utf8 = exchange(where, b"/data/\xff\xfe.h5 a/b/k\n")
        huge = exchange(where, b"/" + b"a" * (4 * MiB) + b" a/b/k\n")  # read, then dropped
        endless = exchange(where, b"/data/f.h5 a/b/k")  # no newline: line_timeout (1 s)
        cut = exchange(where, b"/data/f.h5 a/b/k", shut=True)
        silent = exchange(where, b"", shut=True)  # connects and leaves: nothing to say
        after = s3daemon_send(where, str(granule), f"a/{bucket}/after.h5")
    assert garbage == (b"bad_message: expected '<file> <alias>/<bucket>/<key>', got "
                       b"'hello \\x1b[31mworld and more'")
    assert http.endswith(b"got 'GET / HTTP/1.1\\r'")
    assert not_utf8.startswith(b"bad_message: the line is not UTF-8")
    assert huge == b"too_large: a line longer than daemon.max_request_bytes (4096 bytes)"
    assert endless == b"bad_message: no whole line within s3daemon.line_timeout (1 s)"
    assert cut.startswith(b"bad_message: the connection ended before the newline")
    assert silent == b""
    assert after == b"Success"
    assert "\x1b" not in caplog.text and "\\x1b[31m" in caplog.text
    for shown in ("not UTF-8", "too_large", "line_timeout", "ended before the newline"):
        assert shown in caplog.text


def test_idle_connections_are_bounded_and_clients_beyond_the_cap_wait(
        config: dict[str, Any], s3: Any, bucket: str, granule: Path) -> None:
    """Twice max_connections clients that send nothing: the first ones are served (timed
    out and answered), the rest wait in the listen queue, none is refused; a real client
    behind them waits its turn and lands its file."""
    config["s3daemon"].update(max_connections=4, line_timeout=1.5)
    results: list[bytes] = []
    with running_daemon(config) as daemon:
        where = address_of(daemon)
        idle = [_connect(where) for _ in range(8)]
        worker = threading.Thread(target=lambda: results.append(
            s3daemon_send(where, str(granule), f"a/{bucket}/late.h5")))
        try:
            wait_until(lambda: daemon.input("s3daemon").received == 4, 10, "the first four")
            time.sleep(0.3)
            assert daemon.input("s3daemon").received == 4  # the cap holds
            worker.start()
            answers = []
            for sock in idle:
                answers.append(read_all(sock))
                sock.close()
            worker.join(timeout=30)
        finally:
            for sock in idle:
                sock.close()
    assert answers == [b"bad_message: no whole line within s3daemon.line_timeout (1.5 s)"] * 8
    assert results == [b"Success"]
    assert s3.head_object(Bucket=bucket, Key="late.h5")["ContentLength"] == 70_000


@pytest.mark.parametrize("hang_up", ["close", "reset"])
def test_a_client_that_hangs_up_mid_upload_abandons_its_request(
        config: dict[str, Any], held: CorruptingProxy, s3: Any, bucket: str, tmp_path: Path,
        producer: Producer, listener: Listener, hang_up: str) -> None:
    """The client goes while part 2 of 3 is held at the store: the multipart upload is
    aborted (nothing left to list), `client_gone` is announced, and the journal has
    finished the request (a restart would not resume it)."""
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(12 * MiB))
    config["endpoints"]["default"].update(url=held.url, multipart_threshold="5MiB",
                                          multipart_chunksize="5MiB", max_parts_in_flight=1,
                                          prewarm=0)
    journal = tmp_path / "journal.sqlite"
    config["journal"] = {"path": str(journal)}
    held.hold = lambda head: b"partNumber=2" in head
    with running_daemon(config) as daemon:
        link(producer, listener, "/new/file/viirs/")
        sock = _connect(address_of(daemon))
        sock.sendall(f"{path} a/{bucket}/big.bin\n".encode())
        wait_until(lambda: held.held == 1, 30, "part 2 held at the store")
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
        if hang_up == "close":
            sock.close()
        else:
            reset(sock)
        gone = listener.wait_for(lambda ms: any(m.data.get("reason") == "client_gone"
                                                for m in ms), 30, "client_gone")
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        assert daemon.counts["failed"] == 1
    [failed] = [m for m in gone if m.type == "failure"]
    assert failed.data["destination"] == f"s3://{bucket}/big.bin"
    assert "the s3daemon client" in failed.data["error"]
    assert _unfinished(journal) == []
    held.gate.set()  # the held part goes on now, to an upload that no longer exists
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)


def _unfinished(path: Path) -> list[Request]:
    async def read() -> list[Request]:
        journal = SQLiteJournal(path)
        await journal.open()
        try:
            return journal.unfinished()
        finally:
            await journal.close()
    return asyncio.run(read())


def test_a_stop_answers_every_waiting_client_and_keeps_their_requests(
        config: dict[str, Any], held: CorruptingProxy, bucket: str, granule: Path,
        tmp_path: Path) -> None:
    """SIGTERM while three clients wait (one uploading, one queued, one still being
    handed to the full queue): each is told `shutdown`, none is cut off without a word,
    and every request stays in the journal for the next start.  A fourth, still to send
    its line, is told so too."""
    config["s3daemon"]["line_timeout"] = 60
    config["endpoints"]["default"].update(url=held.url, prewarm=0)
    config["journal"] = {"path": str(tmp_path / "journal.sqlite")}
    config["daemon"].update(shutdown_grace=0.2, max_in_flight=1, queue_size=1)
    held.hold = lambda head: head.startswith(b"PUT ")
    socks: list[socket.socket] = []
    try:
        with running_daemon(config) as daemon:
            for i in range(3):
                socks.append(_connect(address_of(daemon)))
                socks[-1].sendall(f"{granule} a/{bucket}/kept{i}.h5\n".encode())
                if i == 0:
                    wait_until(lambda: held.held == 1, 30, "the upload held at the store")
            wait_until(lambda: daemon.counts["accepted"] == 3, 30, "three accepted")
            socks.append(_connect(address_of(daemon)))
            wait_until(lambda: daemon.input("s3daemon").received == 4, 30, "the fourth")
            daemon.stop()
            got = [read_all(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    assert all(g.startswith(b"shutdown: the daemon stopped; the request stays in its "
                            b"journal") for g in got[:3]), got
    assert got[3] == b"shutdown: the daemon stopped before reading this request"
    kept = _unfinished(tmp_path / "journal.sqlite")
    assert sorted(r.destination or "" for r in kept) == [
        f"s3://{bucket}/kept{i}.h5" for i in range(3)]


@pytest.mark.slow
def test_kill_9_after_the_request_was_journaled_then_a_restart_finishes_it(
        config: dict[str, Any], held: CorruptingProxy, s3_url: str, s3: Any, bucket: str,
        granule: Path, tmp_path: Path, listener: Listener) -> None:
    """The daemon dies (kill -9) while the upload is held at the store: the client gets
    nothing, the next start finishes the request from its journal, the object lands and
    the completion is announced."""
    port = free_port()
    config["s3daemon"]["address"] = f"127.0.0.1:{port}"
    config["endpoints"]["default"].update(url=held.url, prewarm=0)
    config["journal"] = {"path": str(tmp_path / "journal.sqlite")}
    held.hold = lambda head: head.startswith(b"PUT ")
    with daemon_process(config, tmp_path) as (proc, log):
        _ready(proc, log)
        sock = _connect(f"127.0.0.1:{port}")
        sock.sendall(f"{granule} summit/{bucket}/raw/{granule.name}\n".encode())
        wait_until(lambda: held.held == 1, 30, "the upload held at the store")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    try:
        assert read_all(sock) == b""  # nothing: no Success for what did not land
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    config["endpoints"]["default"]["url"] = s3_url  # the store, no longer held back
    with daemon_process(config, tmp_path) as (proc, log):
        _ready(proc, log)
        done = listener.wait_for(lambda ms: any(m.type == "file" for m in ms), 60,
                                 "the completion")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert "resuming 1 request(s) from the journal" in log.read_text()
    [message] = [m for m in done if m.type == "file"]
    assert message.data["uri"] == f"s3://{bucket}/raw/{granule.name}"
    key = f"raw/{granule.name}"
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == granule.read_bytes()


def _ready(proc: subprocess.Popen[bytes], log: Path) -> None:
    wait_until(lambda: "trollpush ready" in log.read_text() or proc.poll() is not None, 30,
               "daemon ready")
    assert proc.poll() is None, log.read_text()
