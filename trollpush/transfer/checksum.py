"""Checksums that the store verifies: computed while reading, sent with each PUT or part.

crc32c (hardware-accelerated), sha256 and md5 map onto S3's ``x-amz-checksum-*`` and
``Content-MD5`` headers (which call takes which: ``models.ObjectOptions``); the store
rejects a body whose checksum differs (BadDigest), so a body corrupted in flight is
retried, never stored.  Multipart objects get S3's composite form: the checksum of the
parts' checksums, suffixed ``-N``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from collections.abc import Callable
from typing import Any, Protocol

import crc32c

ALGORITHMS = ("crc32c", "sha256", "md5", "none")
READ_SIZE = 1024 * 1024


class _Hash(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


class _Crc32c:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes, /) -> None:
        self.value = crc32c.crc32c(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


class _NoHash:
    def update(self, data: bytes, /) -> None:
        pass

    def digest(self) -> bytes:
        return b""


def new(algorithm: str) -> _Hash:
    if algorithm == "crc32c":
        return _Crc32c()
    if algorithm in ("sha256", "md5"):
        return hashlib.new(algorithm)
    return _NoHash()


def encode(h: _Hash) -> str | None:
    raw = h.digest()
    return base64.b64encode(raw).decode() if raw else None



def of_range(fd: int, offset: int, length: int, algorithm: str) -> str | None:
    """The checksum of ``length`` bytes at ``offset``, read in chunks (worker thread):
    a part's bytes are never all in memory at once."""
    h = new(algorithm)
    left = length
    while left > 0:
        chunk = os.pread(fd, min(left, READ_SIZE), offset + length - left)
        if not chunk:
            raise OSError(f"file ended {left} bytes early (truncated while uploading?)")
        h.update(chunk)
        left -= len(chunk)
    return encode(h)


class RangeReader(io.RawIOBase):
    """A read-only file object over ``length`` bytes at ``offset`` of an open file: the
    body of one part, streamed from disk as it is sent (aiohttp reads it in chunks off
    the event loop), so memory stays small whatever the part size."""

    def __init__(self, fd: int, offset: int, length: int,
                 check: Callable[[], None] | None = None,
                 tally: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self._fd = fd
        self._offset = offset
        self._length = length
        self._pos = 0
        #: called before the last bytes are handed out: raising there keeps them from
        #: being sent, so the store discards the incomplete body (a file that changed)
        self._check = check
        #: told the position after each read (``progress.Meter``: a watched request)
        self._tally = tally

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        left = self._length - self._pos
        if size is None or size < 0 or size > left:
            size = left
        if size == 0:
            return b""
        data = os.pread(self._fd, size, self._offset + self._pos)
        if not data:
            raise OSError("file ended early (truncated while uploading?)")
        if self._check is not None and self._pos + len(data) >= self._length:
            self._check()
        self._pos += len(data)
        if self._tally is not None:
            self._tally(self._pos)
        return data

    def seek(self, pos: int, whence: int = os.SEEK_SET, /) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = max(0, min(self._length, base + pos))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def __len__(self) -> int:
        return self._length


def composite(algorithm: str, part_values: list[str | None]) -> str | None:
    """S3's multipart form: the checksum of the parts' raw checksums, then ``-N``."""
    if algorithm == "none" or any(v is None for v in part_values):
        return None
    h = new(algorithm)
    for value in part_values:
        h.update(base64.b64decode(value or ""))
    return f"{encode(h)}-{len(part_values)}"


def of_object(fd: int, size: int, algorithm: str, parts: int, part_size: int | None
              ) -> str | None:
    """The checksum an object of these ``size`` bytes has when uploaded whole
    (``parts`` 0) or in ``parts`` parts of ``part_size``: what the store reports for it
    (read in chunks: run in a worker thread)."""
    if not parts:
        return of_range(fd, 0, size, algorithm)
    if not part_size or -(-size // part_size) != parts:
        return None  # not the same split: cannot compare
    return composite(algorithm, [of_range(fd, offset, min(part_size, size - offset), algorithm)
                                 for offset in range(0, size, part_size)])

