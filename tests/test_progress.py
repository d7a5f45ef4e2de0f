"""`trollpush send` watches a large upload: the daemon's progress frames (REQ/REP,
``progress: true``), the bar on a terminal, silence elsewhere; old clients unchanged.

A real daemon (in a thread) in front of moto's server; a 40 MiB file in 5 MiB parts."""

from __future__ import annotations

import fcntl
import itertools
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from posttroll.message import Message

from trollpush import _send_output as show
from trollpush.client import SendResult, request_message, send
from trollpush.messages import decode_message, new_message
from trollpush.progress import Meter

from .helpers import running_daemon

MiB = 1024 * 1024
SIZE = 40 * MiB


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("progress") / "big.bin"
    path.write_bytes(os.urandom(SIZE))
    return path


@pytest.fixture
def daemon_server(base_config: dict[str, Any], ports: dict[str, int]) -> Iterator[str]:
    """A daemon whose endpoint sends anything from 5 MiB in 5 MiB parts, two at a time,
    paced to 320 Mbit/s (a 40 MiB file takes a second: progress has time to show); its
    address."""
    base_config["endpoints"]["default"].update(
        multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_parts_in_flight=2,
        bandwidth_limit=320_000_000)
    with running_daemon(base_config):
        yield f"tcp://127.0.0.1:{ports['req']}"


def test_progress_frames_come_before_the_result(daemon_server: str, big: Path, s3: Any,
                                                bucket: str) -> None:
    seen: list[tuple[float, int, int]] = []
    result = send(str(big), f"s3://{bucket}/watched/", server=daemon_server, timeout=15,
                  result_timeout=90,
                  progress=lambda done, total: seen.append((time.monotonic(), done, total)))
    assert result.ok, result.error
    assert result.message.data["size"] == SIZE
    assert "progress" not in result.message.data  # a reserved key, not metadata
    done = [d for _, d, _ in seen]
    assert len(seen) > 1, seen
    assert all(a < b for a, b in itertools.pairwise(done)), done  # growing
    assert done[-1] == SIZE and {t for _, _, t in seen} == {SIZE}
    assert any(0 < d < SIZE for d in done), done  # counted while the parts went
    # at most one frame per 0.25 s, and one more at the end
    assert len(seen) <= 4 * (seen[-1][0] - seen[0][0]) + 2, seen
    head = s3.head_object(Bucket=bucket, Key="watched/big.bin")
    assert head["ContentLength"] == SIZE and head["ETag"].endswith('-8"')


def test_an_old_style_request_gets_exactly_its_replies(daemon_server: str, big: Path,
                                                       bucket: str, granule: Path) -> None:
    """No ``progress`` flag, no progress frame: a DEALER speaking like the older `send`
    (``reply: both``) gets the ack and the result, a plain REQ socket its one reply; the
    next frame each gets is the answer to its next request, nothing left over between."""
    ctx = zmq.Context()
    dealer, req = ctx.socket(zmq.DEALER), ctx.socket(zmq.REQ)
    try:
        for sock in (dealer, req):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, 90_000)
            sock.connect(daemon_server)
        old = request_message(str(big), f"s3://{bucket}/old/")
        assert "progress" not in old.data and old.data["reply"] == "both"
        dealer.send_multipart([b"", old.encode().encode()])
        got = [decode_message(dealer.recv_multipart()[-1].decode()) for _ in range(2)]
        assert [m.type for m in got] == ["ack", "file"]
        assert got[1].data["size"] == SIZE
        dealer.send_multipart([b"", request_message(str(granule),
                                                    f"s3://{bucket}/old2/").encode().encode()])
        nxt = decode_message(dealer.recv_multipart()[-1].decode())
        assert nxt.type == "ack" and nxt.data["uri"] == str(granule)

        plain = Message("/plain/", "file", {"uri": str(big), "destination": f"s3://{bucket}/req/"})
        req.send_string(plain.encode())
        reply = decode_message(req.recv_string())
        assert reply.type == "file" and reply.data["size"] == SIZE
        req.send_string(Message("/plain/", "file", {
            "uri": str(granule), "destination": f"s3://{bucket}/req2/"}).encode())
        reply = decode_message(req.recv_string())
        assert reply.type == "file" and reply.data["uri"].endswith(f"req2/{granule.name}")
    finally:
        dealer.close()
        req.close()
        ctx.term()


def _on_terminal(args: list[str], timeout: float = 90, *, sized: bool = True
                 ) -> tuple[int, str]:
    """``trollpush ARGS`` with a pseudo-terminal as stdout and stderr: its exit code and
    everything it wrote there, read until it closes the terminal (bounded).  Unsized, the
    terminal says 0 x 0, as one under `script` or a CI console may."""
    master, slave = pty.openpty()
    if sized:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "trollpush", *args],
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            env=os.environ.copy())
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no end of output within {timeout} s: {out[-500:]!r}"
            ready, _, _ = select.select([master], [], [], left)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            out += chunk
        return proc.wait(timeout=max(deadline - time.monotonic(), 1)), out.decode(
            errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_send_on_a_terminal_shows_a_bar_then_a_summary(daemon_server: str, big: Path,
                                                       bucket: str) -> None:
    code, out = _on_terminal(["send", str(big), f"s3://{bucket}/tty/", "--server",
                              daemon_server])
    assert code == 0, out
    # the bar, seen part way (a 40 MiB file takes a second here)
    assert re.search(r"big\.bin:\s+[1-9]\d%\|.*\| [\d.]+MiB/40\.0MiB \[.*MiB/s\]", out), out
    summary = re.search(rf"uploaded 40 MiB to s3://{bucket}/tty/big\.bin in \d+\.\d s, "
                        r"[\d.]+ Mbit/s, crc32c:\S+-8\r?\n", out)
    assert summary, out
    assert out.rstrip().endswith(summary.group(0).rstrip())  # the last line

    code, out = _on_terminal(["send", str(big), f"s3://{bucket}/tty-quiet/", "--server",
                              daemon_server, "--quiet"])
    assert (code, out) == (0, "")


def test_a_terminal_of_no_size_still_shows_the_bar(daemon_server: str, big: Path,
                                                   bucket: str) -> None:
    """tqdm draws nothing on a 0 x 0 terminal unless told a size."""
    code, out = _on_terminal(["send", str(big), f"s3://{bucket}/unsized/", "--server",
                              daemon_server], sized=False)
    assert code == 0, out
    assert re.search(r"big\.bin:\s+[1-9]\d%\|.*\| [\d.]+MiB/40\.0MiB", out), out


def test_send_prints_nothing_when_not_on_a_terminal(daemon_server: str, big: Path,
                                                    bucket: str, s3: Any) -> None:
    proc = subprocess.run([sys.executable, "-m", "trollpush", "send", str(big),
                           f"s3://{bucket}/piped/", "--server", daemon_server],
                          capture_output=True, text=True, timeout=90, env=os.environ.copy(),
                          stdin=subprocess.DEVNULL)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert s3.head_object(Bucket=bucket, Key="piped/big.bin")["ContentLength"] == SIZE


def test_a_failure_on_a_terminal_goes_to_stderr_as_before(daemon_server: str,
                                                          big: Path) -> None:
    code, out = _on_terminal(["send", str(big), "s3://no-such-bucket-progress/x",
                              "--server", daemon_server])
    assert code == 1
    assert "upload failed" in out and "NoSuchBucket" in out
    assert "uploaded" not in out


# --- the parts, without a daemon ----------------------------------------------------------


def test_meter_counts_each_body_once_however_often_it_is_read() -> None:
    meter = Meter(300)
    first, second = meter.tally(("ep", "s3://b/k", 1)), meter.tally(("ep", "s3://b/k", 2))
    first(60)
    first(100)
    second(50)
    assert meter.done == 150
    again = meter.tally(("ep", "s3://b/k", 1))  # a retry reads part 1 from the start
    again(30)
    assert meter.done == 150
    meter.sent(("ep", "s3://b/k", 0), 400)  # never beyond the total
    assert meter.done == 300
    meter = Meter(10)
    meter.finish()  # landed without being read (answered from the journal)
    assert meter.done == 10


def test_summary_line() -> None:
    data = {"uri": "s3://b/dir/f.nc", "uid": "f.nc", "size": 512 * MiB,
            "checksum": "crc32c:AAAAAA==-103"}
    result = SendResult(True, new_message("/x/", "file", data), 43.1)
    assert show.summary(result) == ("uploaded 512 MiB to s3://b/dir/f.nc in 43.1 s, "
                                    "99.7 Mbit/s, crc32c:AAAAAA==-103")
    assert show.size_text(70_000) == "68.4 KiB" and show.size_text(12) == "12 B"
    assert show.size_text(3 * 1024**3) == "3 GiB"
