"""What the kernel knows of a pool's connections: ``TCP_INFO`` (Linux), read every few
seconds by the pool, never per request.

From each open socket: the smoothed round-trip time, and the segments and bytes it sent
again.  The pool's figures are the mean RTT of its open connections (the last one known
while none is open), and retransmissions summed over every connection as counters that
only grow: what each socket added since it was last read.  What a connection sent again
in the few seconds between its last reading and its close is not counted.
"""

from __future__ import annotations

import logging
import socket
import struct
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: the socket option (Linux only; None elsewhere: nothing is read)
TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)
#: struct tcp_info (linux/tcp.h): the fields read and their offsets
_STATE = struct.Struct("B")  # tcpi_state, at 0
_RTT = struct.Struct("I")  # tcpi_rtt, microseconds, at 68
_TOTAL_RETRANS = struct.Struct("I")  # tcpi_total_retrans, segments, at 100
_BYTES_RETRANS = struct.Struct("Q")  # tcpi_bytes_retrans, at 208 (Linux >= 4.19)
_RTT_AT, _TOTAL_RETRANS_AT, _BYTES_RETRANS_AT = 68, 100, 208
#: bytes asked for: up to tcpi_bytes_retrans and a little beyond
_SIZE = 232
_ESTABLISHED = 1  # TCP_ESTABLISHED


@dataclass(frozen=True)
class Reading:
    """One socket's TCP_INFO: smoothed RTT (seconds), segments and bytes sent again
    (bytes: None on kernels before 4.19), whether the connection is established."""

    rtt: float
    retrans_segments: int
    retrans_bytes: int | None
    established: bool


def read(sock: socket.socket) -> Reading | None:
    """The socket's TCP_INFO, or None (closed, not TCP, not Linux)."""
    if TCP_INFO is None or sock.fileno() < 0:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, _SIZE)
    except OSError:
        return None
    if len(raw) < _TOTAL_RETRANS_AT + _TOTAL_RETRANS.size:
        return None
    retrans_bytes = (_BYTES_RETRANS.unpack_from(raw, _BYTES_RETRANS_AT)[0]
                     if len(raw) >= _BYTES_RETRANS_AT + _BYTES_RETRANS.size else None)
    return Reading(rtt=_RTT.unpack_from(raw, _RTT_AT)[0] / 1e6,
                   retrans_segments=_TOTAL_RETRANS.unpack_from(raw, _TOTAL_RETRANS_AT)[0],
                   retrans_bytes=retrans_bytes,
                   established=_STATE.unpack_from(raw, 0)[0] == _ESTABLISHED)


class TcpStats:
    """A pool's connections as TCP_INFO last showed them (see the module's text)."""

    def __init__(self) -> None:
        self.rtt: float | None = None  # seconds; None: never read
        self.retrans_segments = 0
        self.retrans_bytes = 0
        self.readings = 0  # how many times the sockets were read
        self._seen: weakref.WeakKeyDictionary[socket.socket, tuple[int, int]] = (
            weakref.WeakKeyDictionary())

    def __repr__(self) -> str:
        rtt = "?" if self.rtt is None else f"{self.rtt * 1000:.3f} ms"
        return (f"<TcpStats rtt={rtt} retransmitted={self.retrans_segments} segment(s), "
                f"{self.retrans_bytes} byte(s)>")

    def sample(self, sockets: Iterable[socket.socket]) -> None:
        """Read every open socket: the mean RTT, and what each sent again since."""
        rtts = []
        for sock in sockets:
            got = read(sock)
            if got is None or not got.established:
                continue
            rtts.append(got.rtt)
            segments, sent_again = self._seen.get(sock, (0, 0))
            now_bytes = got.retrans_bytes if got.retrans_bytes is not None else sent_again
            self.retrans_segments += max(got.retrans_segments - segments, 0)
            self.retrans_bytes += max(now_bytes - sent_again, 0)
            self._seen[sock] = (got.retrans_segments, now_bytes)
        if rtts:
            self.rtt = sum(rtts) / len(rtts)
        self.readings += 1
