"""A single PUT: a file below ``multipart_threshold``, sent whole in one request.

A small file (up to ``multipart_chunksize``) is read once, right before it is sent, and
kept for every attempt; a larger one is checksummed first, then streamed from its
descriptor as it is sent, the last bytes held back unless the file is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ObjectExists
from ..models import ObjectOptions, Upload, encryption_found
from . import checksum
from .policy import AttemptCounter, Endpoint
from .source import Source

if TYPE_CHECKING:
    from ..progress import Meter


@dataclass
class Outcome:
    """What the store answered for an upload that landed (a single PUT: ``parts`` 0);
    or, ``exists``, that a conditional write found an object at the key and wrote
    nothing (``checksum``: of what was sent, for the engine to compare)."""

    etag: str | None
    checksum: str | None
    parts: int
    part_size: int | None = None
    version_id: str | None = None
    encryption: str = "none"  # see ObjectOptions.encryption_of
    exists: bool = False
    storage_class: str | None = None
    #: the HeadObject that found the object there, when the upload looked before
    #: writing (the engine compares it instead of asking again)
    seen: Any = None

    @classmethod
    def of(cls, response: Any, options: ObjectOptions, checksum: str | None, parts: int = 0,
           part_size: int | None = None) -> Outcome:
        """From a PutObject or CompleteMultipartUpload response: the object as written."""
        return cls(response.get("ETag"), checksum, parts, part_size, _version(response),
                   options.encryption_of(response), storage_class=options.storage_class)

    @classmethod
    def found(cls, head: Any, checksum: str | None, parts: int = 0,
              part_size: int | None = None) -> Outcome:
        """From the HeadObject of an object that was already there (``exists``): what it
        is, not what was asked for (S3 leaves out the class STANDARD)."""
        return cls(head.get("ETag"), checksum, parts, part_size, _version(head),
                   encryption_found(head), exists=True,
                   storage_class=str(head.get("StorageClass") or "STANDARD"))


def _version(response: Any) -> str | None:
    """"null" is S3's name for "no version" (moto says it of an unversioned bucket)."""
    version = response.get("VersionId")
    return None if version == "null" else version


async def put(end: Endpoint, upload: Upload, source: Source, options: ObjectOptions,
              counter: AttemptCounter, meter: Meter | None = None, *,
              look: bool = False) -> Outcome:
    """``meter``: where the bytes read to be sent are counted (a watched request);
    ``look``: a conditional write (``if_none_match``) looks first (a HEAD), so that an
    object already there costs no body sent."""
    ep = end.config
    client = end.client
    files = end.files
    size = source.size
    if look and options.if_none_match:
        seen = await end.peek(upload, options)
        if seen is not None:  # the engine compares it with this file's checksum
            value = await files.call(ep, size, checksum.of_range, source.fd, 0, size,
                                     options.checksum, long=True)
            return Outcome(None, value, 0, exists=True, seen=seen)
    async with end.pool.slot():
        # read (small files: once, kept for every attempt) right before sending, so
        # that the check that the file did not change covers the whole attempt
        small = (await files.call(ep, size, source.read_all, options.checksum)
                 if size <= ep.multipart_chunksize else None)
        guard = source.guard()
        if small is not None:  # a snapshot, checked whole as it was read
            body, value = small
            sent = False

            async def attempt() -> Any:
                nonlocal sent
                if sent:  # a retry, later: is the snapshot still the file?
                    await files.call(ep, 0, guard.check)
                sent = True
                return await client.put_object(
                    Bucket=upload.bucket, Key=upload.key, Body=body,
                    ContentLength=len(body), **options.put(value))
        else:  # larger: checksum first, then stream from the descriptor
            value = await files.call(ep, size, checksum.of_range, source.fd, 0, size,
                                     options.checksum, long=True)
            tally = None if meter is None else meter.tally((end.name, upload.url, 0))

            async def attempt() -> Any:
                return await client.put_object(
                    Bucket=upload.bucket, Key=upload.key, ContentLength=size,
                    Body=checksum.RangeReader(source.fd, 0, size, check=guard.check,
                                              tally=tally),
                    **options.put(value))

        try:
            response = await end.tries(size, counter, attempt, f"PUT {upload.url}", guard)
        except ObjectExists:  # (if_none_match) nothing was written: the engine compares
            return Outcome(None, value, 0, exists=True)
        if small is not None and meter is not None:
            meter.sent((end.name, upload.url, 0), size)
    return Outcome.of(response, options, value)
