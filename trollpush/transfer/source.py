"""The source file of one upload, opened once and read only through that descriptor.

A path is a name, and names change under us: between the check on receipt and the
upload, a local user can swap an allowed file for a symlink to someone else's secret, or
for a FIFO that blocks ``open()`` forever.  So the file is opened once, without
following a final symlink and without blocking (``O_NOFOLLOW | O_NONBLOCK``); the
*opened descriptor* is checked (a regular file by ``fstat``, inside ``allowed_roots`` by
its real path from ``/proc/self/fd``), and every byte of every attempt and part is read
from it with ``pread``.  Whether the file changed is asked of the descriptor too.
"""

from __future__ import annotations

import errno
import os
import stat as stat_
from pathlib import Path

from ..errors import PermanentTransferError, Reason, TransferError
from ..models import Stat
from . import checksum

#: what tells two states of one open file apart: size, mtime, ctime (any write or
#: metadata change moves it), inode, device
Fingerprint = tuple[int, int, int, int, int]

_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


class SourceChanged(TransferError):
    """The file changed while it was being sent: the attempt is abandoned before the
    store commits it (the last bytes are never sent, or the multipart upload is
    aborted), so no torn object is ever left behind."""

    reason = Reason.FILE_CHANGED


def fingerprint(fd: int) -> Fingerprint:
    st = os.fstat(fd)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


def under(real: str, roots: tuple[str, ...]) -> bool:
    """Whether the real path ``real`` is one of ``roots`` or below one."""
    return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


class Source:
    """One opened source file: its descriptor and its fingerprint when opened."""

    def __init__(self, fd: int, uri: str, opened: Fingerprint) -> None:
        self.fd = fd
        self.uri = uri
        self.opened = opened

    def __repr__(self) -> str:
        return f"<Source {self.uri!r} fd={self.fd} size={self.size}>"

    @property
    def size(self) -> int:
        return self.opened[0]

    @property
    def stat(self) -> Stat:
        """(size, mtime_ns, inode) as opened: what the journal records."""
        return self.opened[0], self.opened[1], self.opened[3]

    def fingerprint(self) -> Fingerprint:
        """The file's fingerprint now (an ``fstat`` of the descriptor: no name involved)."""
        return fingerprint(self.fd)

    def refresh(self) -> Fingerprint:
        """Take the fingerprint now as the one to compare later changes with."""
        self.opened = self.fingerprint()
        return self.opened

    def guard(self) -> Guard:
        """A check that the file is still as it is now (see :class:`Guard`)."""
        return Guard(self, self.opened)

    def read_all(self, algorithm: str) -> tuple[bytes, str | None]:
        """All bytes and their checksum: a snapshot checked to be whole (the file did
        not change while read)."""
        size = self.size
        chunks = []
        left = size
        while left > 0:
            chunk = os.pread(self.fd, left, size - left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if left or self.fingerprint() != self.opened:
            raise SourceChanged(f"{self.uri} changed while it was read")
        h = checksum.new(algorithm)
        h.update(data)
        return data, checksum.encode(h)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Guard:
    """Asks the descriptor whether the file is still as it was when an attempt began;
    remembers a "no" so that the engine can tell a change from a network error."""

    def __init__(self, source: Source, expected: Fingerprint) -> None:
        self._source = source
        self._expected = expected
        self.tripped = False

    def ok(self) -> bool:
        try:
            same = self._source.fingerprint() == self._expected
        except OSError:
            same = False
        if not same:
            self.tripped = True
        return same

    def check(self) -> None:
        """Raise :class:`SourceChanged` unless the file is unchanged."""
        if not self.ok():
            raise SourceChanged(f"{self._source.uri} changed during the upload; the attempt "
                                "was abandoned before the store committed it")


def open_source(path: Path | str, uri: str, roots: tuple[str, ...] = ()) -> Source:
    """Open a source file for an upload (blocking: run in a worker thread).

    Refused, for good (PermanentTransferError): a final symlink and anything that is not
    a regular file (``not_a_file``), a file whose real path is outside ``roots``
    (``not_allowed``), a missing (``file_missing``) or unreadable one
    (``file_unreadable``).

    ``O_NOFOLLOW`` guards only the last component: a directory on the way may be a
    symlink out of the roots.  So with ``roots`` the parent directory is resolved first
    without opening anything (``O_PATH``), its real path checked, and only then is the
    file opened, relative to that directory: nothing outside the roots (a device, a FIFO
    of another user) is ever opened.
    """
    fd = _open(os.fspath(path), uri, roots)
    try:
        st = os.fstat(fd)
        if not stat_.S_ISREG(st.st_mode):
            raise PermanentTransferError(f"{uri}: not a regular file", reason=Reason.NOT_A_FILE)
        if roots:  # and the file as opened (the directory may have moved meanwhile)
            real = _real_path(fd)
            if not under(real, roots):
                raise PermanentTransferError(f"{uri}: outside the allowed roots (it is "
                                             f"{real!r})", reason=Reason.NOT_ALLOWED)
        return Source(fd, uri, (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                                st.st_dev))
    except BaseException:
        os.close(fd)
        raise


def _open(path: str, uri: str, roots: tuple[str, ...]) -> int:
    """The descriptor of ``path`` (not a final symlink; with ``roots``, relative to a
    parent directory checked first); errors as transfer errors with their reason."""
    parent = -1
    try:
        try:
            if roots:
                head, name = os.path.split(path)
                parent = os.open(head or "/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                where = _real_path(parent)
                if not under(os.path.join(where, name), roots):
                    raise PermanentTransferError(f"{uri}: outside the allowed roots (it is in "
                                                 f"{where!r})", reason=Reason.NOT_ALLOWED)
                fd = os.open(name, _FLAGS, dir_fd=parent)
            else:
                fd = os.open(path, _FLAGS)
        finally:
            if parent >= 0:
                os.close(parent)
    except FileNotFoundError as err:
        raise PermanentTransferError(f"cannot read {uri}: no such file",
                                     reason=Reason.FILE_MISSING) from err
    except PermissionError as err:
        raise PermanentTransferError(f"cannot read {uri}: permission denied",
                                     reason=Reason.FILE_UNREADABLE) from err
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise PermanentTransferError(f"{uri}: a symbolic link (trollpush does not follow "
                                         "a final symlink)", reason=Reason.NOT_A_FILE) from err
        if err.errno in (errno.ENXIO, errno.ENODEV, errno.EISDIR, errno.ENOTDIR):
            raise PermanentTransferError(f"{uri}: not a regular file",
                                         reason=Reason.NOT_A_FILE) from err
        raise PermanentTransferError(f"cannot read {uri}: {err.strerror}",
                                     reason=Reason.FILE_UNREADABLE) from err
    except ValueError as err:  # a NUL or a lone surrogate the file system cannot encode
        raise PermanentTransferError(f"{uri!r}: not a usable path ({err})",
                                     reason=Reason.FILE_UNREADABLE) from err
    return fd


def _real_path(fd: int) -> str:
    """The real path of an open descriptor, as the kernel has it (Linux's /proc)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError as err:
        raise PermanentTransferError(f"cannot tell the real path of an open file ({err}); "
                                     "daemon.allowed_roots needs /proc",
                                     reason=Reason.NOT_ALLOWED) from err

