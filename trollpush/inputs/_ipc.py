"""The socket file of an ``ipc://`` request address: who may connect is who may submit.

A ZeroMQ socket has no access control of its own (libzmq bounds neither who connects nor
what a peer makes it hold while a message is incomplete), so the file's permissions are
the gate: connecting to a Unix socket needs write permission on it.  libzmq creates the
file with the process umask and unlinks whatever is at the path first, so binding goes
through here: a live socket or a non-socket at the path is refused, a stale one removed,
the file is created owner-only and only then given the configured mode and group.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import SetupError


@dataclass(frozen=True)
class SocketFile:
    """A socket file made by this process: removed at close only if it is still ours."""

    path: str
    device: int
    inode: int

    def remove(self) -> None:
        """Unlink the file if it is the one we made (not a successor's)."""
        with contextlib.suppress(OSError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == (self.device, self.inode):
                os.unlink(self.path)


#: host names of this machine's loopback interface, as an address's host part gives them
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def clear_stale(path: str, address: str) -> None:
    """Make room for binding at ``path``: refuse a live socket or a non-socket, remove a
    socket nobody listens on (left by a crash)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as err:
        raise SetupError(f"requests.address {address}: cannot check {path} ({err.strerror})"
                         ) from err
    if not stat.S_ISSOCK(st.st_mode):
        raise SetupError(f"requests.address {address}: {path} exists and is not a socket; "
                         "trollpush does not replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as err:
        if err.errno != errno.ECONNREFUSED:
            raise SetupError(f"requests.address {address}: cannot tell whether {path} is in "
                             f"use ({err.strerror})") from err
    else:
        raise SetupError(f"requests.address {address}: another process listens on {path} "
                         "(another trollpush daemon?)")
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@contextlib.contextmanager
def owner_only() -> Iterator[None]:
    """Files created meanwhile get mode 0600 at most: the socket file never exists with
    wider permissions than its final ones.  (The umask is process-wide; it only ever
    narrows what another thread creates during a bind, for microseconds.)"""
    old = os.umask(0o177)
    try:
        yield
    finally:
        os.umask(old)


def restrict(path: str, address: str, mode: int, group: int | None) -> SocketFile:
    """Give the freshly bound socket file its group and mode; what to remove at close.

    The file is opened without following a symlink and changed through that handle
    (``/proc/self/fd``), so a file swapped in meanwhile is refused, never changed."""
    what = f"group {group} and mode {mode:04o}" if group is not None else f"mode {mode:04o}"
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW)
    except OSError as err:
        raise SetupError(f"requests.address {address}: {path} is gone after bind "
                         f"({err.strerror})") from err
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode):
            raise SetupError(f"requests.address {address}: {path} was replaced after bind "
                             "(is its directory writable by others?)")
        handle = f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else path
        if group is not None:
            os.chown(handle, -1, group)
        os.chmod(handle, mode)
    except OSError as err:
        raise SetupError(f"requests.address {address}: cannot give {path} {what} "
                         f"({err.strerror}; the daemon's user must own the file and belong "
                         "to the group)") from err
    finally:
        os.close(fd)
    return SocketFile(path, st.st_dev, st.st_ino)
