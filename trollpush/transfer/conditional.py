"""Conditional writes: what a 412 means.

A PUT or a CompleteMultipartUpload with ``If-None-Match: *`` (``if_none_match``) that
finds an object at the key is refused with 412 (:class:`ObjectExists`, never retried:
see ``policy``), and writes nothing.  The object there may be ours: the same file sent
again, or an earlier attempt of this very upload whose answer was lost.  It is looked at
(a HEAD, with the SSE-C key if any) and counts as landed when it has the size and the
checksum we sent; anything else is the failure ``exists``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from ..errors import ObjectExists, TransferError
from ..models import ObjectOptions, Upload, encryption_found
from . import policy
from .policy import Endpoint
from .single import Outcome


async def existing(end: Endpoint, upload: Upload, size: int, options: ObjectOptions,
                   sent: Outcome) -> Outcome:
    """A conditional write found an object at the key: what it is, if it is what we
    sent (the same size and checksum: our own earlier attempt whose answer was lost,
    or the same file sent before), else :class:`ObjectExists`.  (``sent.seen``: the
    HEAD of a look before writing, used as it is.)"""
    try:
        head = sent.seen if sent.seen is not None else await end.head(upload, options)
    except TransferError as err:
        if policy.retry_later(err):  # the store down or slow: a later round compares
            raise
        raise ObjectExists(f"{upload.url} exists and was not overwritten "
                           f"(if_none_match); it could not be compared: {err.detail}"
                           ) from err
    why = differs(head, size, options, sent)
    if why is not None:
        raise ObjectExists(f"{upload.url} exists with other content ({why}) and was not "
                           "overwritten (if_none_match)")
    return Outcome.found(head, sent.checksum, sent.parts, sent.part_size)


def differs(head: Mapping[str, Any], size: int, options: ObjectOptions,
            sent: Outcome) -> str | None:
    """Why the object a HEAD describes is not the ``size`` bytes we sent (None: it is).
    An object not encrypted as asked is not it either: a completion must not say that
    what is kept in clear is encrypted (its storage class is announced as found)."""
    there = head.get("ContentLength")
    if there != size:
        return f"{there} bytes, not the {size} sent"
    found = encryption_found(head)
    if options.encryption != "none" and found != options.encryption:
        return f"it is encrypted {found}, not {options.encryption}"
    stored = options.stored(head)
    ours = sent.checksum
    if stored is not None and ours is not None:
        if sent.parts and "-" not in stored:  # a composite reported without its "-N"
            ours = ours.removesuffix(f"-{sent.parts}")  # (moto): N is in the ETag then
            if not str(head.get("ETag") or "").strip('"').endswith(f"-{sent.parts}"):
                return f"it is not in {sent.parts} parts"
        return None if stored == ours else f"its {options.checksum} checksum differs"
    if options.checksum == "md5" and not sent.parts and sent.checksum is not None:
        etag = str(head.get("ETag") or "").strip('"')
        if etag == base64.b64decode(sent.checksum).hex():
            return None
        return "its ETag is not the MD5 of the file"
    if options.checksum == "none":
        return "the endpoint sends no checksum to compare with"
    return f"the store reports no {options.checksum} checksum to compare"
