"""SSE-C keys: read once at load, found again by name after a restart, never shown.

A key file holds the 32-byte key, raw or in base64 (44 characters, a trailing newline
allowed).  Its path comes from the operator's config and may be a symlink (a
Kubernetes secret volume is made of them): it is resolved first, then the real file is
opened without following a symlink, checked to be a regular file and read, with a bound,
from that one descriptor.  Each
key loaded is kept in this process's key ring under its name (``SseCKey.md5``, base64 of
its MD5, S3's ``SSECustomerKeyMD5``), which is all the journal records: a multipart upload
resumed after a restart takes its key from the ring again.  Every form in which a key
could reach a log line (base64, hex, Python's bytes repr) is handed to ``logsafe.hide``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat

from . import logsafe
from .models import SseCKey

KEY_BYTES = 32
_MAX_FILE = 4096

#: name -> key, for every key loaded in this process (config loads and reloads)
_RING: dict[str, SseCKey] = {}


class KeyFileError(ValueError):
    """A key file that cannot be used; the text never contains the file's content."""


def name_of(key: bytes) -> str:
    """S3's name for a key: base64 of its MD5."""
    return base64.b64encode(hashlib.md5(key, usedforsecurity=False).digest()).decode()


def load(path: str) -> SseCKey:
    """The key in ``path`` (raw 32 bytes, or base64 of them), added to the ring."""
    real = os.path.realpath(path)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise KeyFileError(f"cannot open {path}: {err.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"{path} is not a regular file")
        data = os.read(fd, _MAX_FILE + 1)
    except OSError as err:
        raise KeyFileError(f"cannot read {path}: {err.strerror}") from None
    finally:
        os.close(fd)
    key = _decoded(data)
    if key is None:
        raise KeyFileError(
            f"{path} holds {len(data) if len(data) <= _MAX_FILE else 'over 4096'} bytes; "
            f"expected a {KEY_BYTES}-byte key, raw or in base64 (44 characters)")
    return remember(key)


def remember(key: bytes) -> SseCKey:
    """Add a key to the ring (and to what logs never show); its SseCKey."""
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"an SSE-C key has {KEY_BYTES} bytes, not {len(key)}")
    named = SseCKey(name_of(key), key)
    if named.md5 not in _RING:
        _RING[named.md5] = named
        logsafe.hide(base64.b64encode(key).decode(), key.hex(), repr(key)[2:-1])
    return named


def find(md5: str) -> SseCKey:
    """The key of that name, with its bytes when it was loaded in this process (else
    without: its uploads fail with ``bad_object_options``, naming it)."""
    return _RING.get(md5) or SseCKey(md5)


def _decoded(data: bytes) -> bytes | None:
    if len(data) == KEY_BYTES:
        return data
    text = data.strip()
    if len(text) != 44:
        return None
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if len(key) == KEY_BYTES else None
