"""A raw ZMTP 3.0 peer over TCP or a Unix socket, for hostile-client tests.

libzmq itself never sends a message without its last frame; this client does, to show
what one peer can make the daemon's ROUTER socket hold.  Run as a script, it measures the
daemon's resident memory around such a peer (``python -m tests.zmtp PID ADDRESS``).
"""

from __future__ import annotations

import socket
import struct
import sys
import time

MiB = 1024 * 1024


def _greeting() -> bytes:
    # signature, version 3.0, mechanism NULL, as-server 0, filler
    return (b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00")
            + b"\x00" + b"\x00" * 31)


def _ready(socket_type: bytes) -> bytes:
    name = b"Socket-Type"
    body = b"\x05READY" + bytes([len(name)]) + name + struct.pack(">I", len(socket_type)) \
        + socket_type
    return b"\x04" + bytes([len(body)]) + body


def frame(data: bytes, *, more: bool) -> bytes:
    """One ZMTP 3.0 message frame."""
    flags = 0x01 if more else 0x00
    if len(data) > 255:
        return bytes([flags | 0x02]) + struct.pack(">Q", len(data)) + data
    return bytes([flags, len(data)]) + data


def connect(address: str, timeout: float = 10.0) -> socket.socket:
    """A connected, handshaken DEALER-typed peer at ``tcp://HOST:PORT`` or ``ipc://PATH``."""
    if address.startswith("ipc://"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address[len("ipc://"):])
    else:
        host, port = address[len("tcp://"):].rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    sock.sendall(_greeting())
    got = b""
    while len(got) < 64:
        chunk = sock.recv(64 - len(got))
        if not chunk:
            raise ConnectionError("the peer closed during the greeting")
        got += chunk
    sock.sendall(_ready(b"DEALER"))
    return sock


def _exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        data += chunk
    return data


def receive(sock: socket.socket) -> list[bytes]:
    """The next message (its frames), skipping ZMTP commands such as READY."""
    frames: list[bytes] = []
    while True:
        flags = _exactly(sock, 1)[0]
        size = struct.unpack(">Q", _exactly(sock, 8))[0] if flags & 0x02 else \
            _exactly(sock, 1)[0]
        body = _exactly(sock, size)
        if flags & 0x04:  # a command
            continue
        frames.append(body)
        if not flags & 0x01:
            return frames


def request(address: str, body: bytes, timeout: float = 10.0) -> bytes:
    """Submit one request the way a REQ socket does; the reply's last frame."""
    sock = connect(address, timeout)
    try:
        sock.sendall(frame(b"", more=True) + frame(body, more=False))
        return receive(sock)[-1]
    finally:
        sock.close()


def flood(address: str, frames: int = 256, size: int = MiB) -> socket.socket:
    """Send an empty delimiter, then ``frames`` frames of ``size`` bytes all flagged
    "more": a message whose last frame never comes.  The socket stays open."""
    sock = connect(address)
    sock.sendall(frame(b"", more=True))
    chunk = frame(b"x" * size, more=True)
    for _ in range(frames):
        sock.sendall(chunk)
    return sock


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for pid {pid}")


def _settle(pid: int, seconds: float = 3.0) -> int:
    """RSS once it stops changing (bounded)."""
    deadline = time.monotonic() + seconds
    last = rss(pid)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = rss(pid)
        if abs(now - last) < MiB:
            return now
        last = now
    return last


def main(argv: list[str]) -> int:
    pid, address = int(argv[0]), argv[1]
    frames = int(argv[2]) if len(argv) > 2 else 256
    before = _settle(pid)
    sock = flood(address, frames)
    during = _settle(pid)
    sock.close()
    after = _settle(pid)
    print(f"RSS before {before / MiB:.0f} MiB, holding {frames} x 1 MiB frames "
          f"{during / MiB:.0f} MiB, after disconnect {after / MiB:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
