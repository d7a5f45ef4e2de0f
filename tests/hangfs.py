"""A file system whose look-ups hang: a hung NFS mount, made real with FUSE (as root).

The kernel sends each path look-up under the mount point to this process over
``/dev/fuse``; names that start with ``hang`` are never answered until ``release()``, so
``stat``, ``lstat``, ``realpath`` and ``access`` on them block in the kernel exactly as on
a dead NFS server.  Other names are regular 1-byte files (mode 0644).  Only the few
operations that a stat needs are served (the protocol is ``include/uapi/linux/fuse.h``);
the rest are answered ENOSYS.  No library: libfuse is not needed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import stat
import struct
import threading
import time
from pathlib import Path

_IN = struct.Struct("<IIQQIIIHH")  # fuse_in_header
_OUT = struct.Struct("<IiQ")  # fuse_out_header
_ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # fuse_attr
_LOOKUP, _FORGET, _GETATTR, _STATFS, _INIT, _INTERRUPT, _DESTROY, _BATCH_FORGET = (
    1, 2, 3, 17, 26, 36, 38, 42)
_NO_REPLY = {_FORGET, _BATCH_FORGET, _INTERRUPT}
_MS_NOSUID, _MS_NODEV, _MNT_DETACH = 2, 4, 2
_ROOT = 1


def available() -> str | None:
    """Why a hanging file system cannot be mounted here (None: it can)."""
    if os.geteuid() != 0:
        return "mounting a FUSE file system needs root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this host"
    return None


class HangFS:
    """Mount at ``mountpoint``; ``path(name)`` names a file under it."""

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = os.open("/dev/fuse", os.O_RDWR)
        self._held: list[int] = []  # unique ids of look-ups left unanswered
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._released = False
        self._nodes: dict[str, int] = {}
        self.hung = 0  # look-ups held so far
        opts = f"fd={self._fd},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
        if self._libc.mount(b"hangfs", bytes(mountpoint), b"fuse", _MS_NOSUID | _MS_NODEV,
                            opts) != 0:
            err = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(err, f"mount hangfs at {mountpoint}: {os.strerror(err)}")
        self._thread = threading.Thread(target=self._serve, name="hangfs", daemon=True)
        self._thread.start()

    def path(self, name: str) -> Path:
        return self.mountpoint / name

    def release(self) -> None:
        """Answer every held look-up (no such file) and every later one at once."""
        with self._lock:
            self._released = True
            held, self._held = self._held, []
        for unique in held:
            self._reply(unique, -errno.ENOENT)

    def close(self) -> None:
        """Release, stop serving and unmount."""
        self.release()
        self._stop.set()
        self._thread.join(timeout=10)
        self._libc.umount2(bytes(self.mountpoint), _MNT_DETACH)
        os.close(self._fd)

    def _reply(self, unique: int, error: int = 0, body: bytes = b"") -> None:
        with contextlib.suppress(OSError):  # the request was interrupted, or unmounting
            os.write(self._fd, _OUT.pack(_OUT.size + len(body), error, unique) + body)

    @staticmethod
    def _attr(node: int, directory: bool) -> bytes:
        now = int(time.time())
        mode = (stat.S_IFDIR | 0o755) if directory else (stat.S_IFREG | 0o644)
        return _ATTR.pack(node, 0 if directory else 1, 1, now, now, now, 0, 0, 0, mode,
                          2 if directory else 1, 0, 0, 0, 4096, 0)

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not select.select([self._fd], [], [], 0.1)[0]:
                continue
            try:
                data = os.read(self._fd, (1 << 20) + 8192)
            except OSError as err:
                if err.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue  # ENOENT: the request was interrupted meanwhile
                return  # ENODEV: unmounted
            self._handle(data)

    def _handle(self, data: bytes) -> None:
        _, opcode, unique, node, *_ = _IN.unpack_from(data)
        body = data[_IN.size:]
        if opcode in _NO_REPLY:
            return
        if opcode == _INIT:
            minor = struct.unpack_from("<II", body)[1]
            out = struct.pack("<IIIIHHIIHHI", 7, min(minor, 31), 0, 0, 16, 12, 65536, 1, 0, 0,
                              0) + b"\0" * 28
            self._reply(unique, 0, out)
        elif opcode == _LOOKUP and node == _ROOT:
            name = body.split(b"\0", 1)[0].decode()
            with self._lock:
                if name.startswith("hang") and not self._released:
                    self._held.append(unique)
                    self.hung += 1
                    return
            number = self._nodes.setdefault(name, len(self._nodes) + 2)
            entry = struct.pack("<QQQQII", number, 0, 0, 0, 0, 0) + self._attr(number, False)
            self._reply(unique, 0, entry)
        elif opcode == _LOOKUP:
            self._reply(unique, -errno.ENOTDIR)
        elif opcode == _GETATTR:
            self._reply(unique, 0, struct.pack("<QII", 0, 0, 0) + self._attr(node,
                                                                            node == _ROOT))
        elif opcode == _STATFS:
            self._reply(unique, 0, struct.pack("<QQQQQIIII", 0, 0, 0, 0, 0, 4096, 255, 4096, 0)
                        + b"\0" * 24)
        elif opcode == _DESTROY:
            self._reply(unique)
        else:
            self._reply(unique, -errno.ENOSYS)
