"""A multipart upload, in three explicit steps: create -> parts -> complete.

The abort is in place the moment the upload id exists: any way out but success aborts
it, so no part is left behind; only a cancellation with progress recorded keeps it, to be
resumed (its parts checked with ListParts).  Parts are at least 5 MiB and at most 10,000;
``max_parts_in_flight`` of them are sent at once, each in a slot of the pool, each
streamed from the file's descriptor.  Unfinished uploads of the same object that
trollpush lost track of (a kill -9 between create and record) are aborted as strays.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..config.defaults import MIN_PART
from ..config.units import MiB
from ..errors import ObjectExists, TransferError
from ..models import ObjectOptions, Stat, Upload
from . import checksum
from .policy import AttemptCounter, Endpoint, classify
from .single import Outcome
from .source import Guard, Source, SourceChanged

if TYPE_CHECKING:
    from ..progress import Meter

logger = logging.getLogger(__name__)

MAX_PARTS = 10_000

#: a part as CompleteMultipartUpload lists it, and its checksum
Part = tuple[dict[str, Any], str | None]


def part_size(size: int, chunksize: int) -> int:
    """The part size for ``size`` bytes: >= 5 MiB, and at most 10,000 parts."""
    chunk = max(chunksize, MIN_PART)
    if math.ceil(size / chunk) > MAX_PARTS:
        chunk = math.ceil(size / MAX_PARTS / MiB) * MiB
    return chunk


class Progress(Protocol):
    """Where the engine records a multipart upload's progress so it can resume it (the
    journal, for one job); without one, an interrupted upload is aborted."""

    #: the job was recovered after a stop or a crash: a multipart upload may exist at the
    #: store whose id was never recorded (killed between creating and recording it)
    recovered: bool

    @property
    def abandoned(self) -> bool:
        """The requester gave up: a cancelled upload is aborted, not kept for resuming."""

    async def multipart_started(self, upload: Upload, upload_id: str, part_size: int,
                                stat: Stat) -> None: ...

    async def part_done(self, upload: Upload, number: int, etag: str,
                        checksum: str | None) -> None: ...

    def multipart(self, upload: Upload) -> tuple[str, Mapping[int, tuple[str, str | None]],
                                                 int | None, Stat | None] | None:
        """(upload id, {part: (etag, checksum)}, part size, stat) recorded earlier."""


async def send(end: Endpoint, upload: Upload, source: Source, options: ObjectOptions,
               counter: AttemptCounter, progress: Progress | None,
               meter: Meter | None = None) -> Outcome:
    """Upload the file in parts (resuming a recorded upload of it where one is left);
    ``meter``: where the bytes read to be sent are counted (a watched request)."""
    chunk = part_size(source.size, end.config.multipart_chunksize)
    count = math.ceil(source.size / chunk)
    guard = source.guard()
    upload_id, done_parts = await _resumable(end, upload, options, chunk, source.stat,
                                             progress)
    if upload_id is None and options.if_none_match:
        seen = await end.peek(upload, options)
        if seen is not None:
            # not one part sent to learn at the complete what a HEAD tells now: the
            # engine compares the object there with this file's checksum
            value = await end.files.call(end.config, source.size, checksum.of_object,
                                         source.fd, source.size, options.checksum, count,
                                         chunk, long=True)
            return Outcome(None, value, count, chunk, exists=True, seen=seen)
    if upload_id is None:
        upload_id = await _create(end, upload, options, counter, chunk, source.stat,
                                  progress)
    # from here on, any way out but success aborts the upload (no parts left behind);
    # only a cancellation with progress recorded keeps it, to be resumed later
    try:
        in_flight = asyncio.Semaphore(end.config.max_parts_in_flight)
        async with asyncio.TaskGroup() as group:
            tasks = {number: group.create_task(_part(
                end, upload, options, upload_id, source, number, chunk, in_flight, counter,
                progress, guard, meter)) for number in range(1, count + 1)
                if number not in done_parts}
        parts = [done_parts[n] if n in done_parts else tasks[n].result()
                 for n in range(1, count + 1)]
        # the last moment to keep a changed file from becoming the object
        await end.files.call(end.config, 0, guard.check)
        try:
            done = await end.tries(0, counter, lambda: end.client.complete_multipart_upload(
                Bucket=upload.bucket, Key=upload.key, UploadId=upload_id,
                MultipartUpload={"Parts": [p for p, _ in parts]}, **options.complete()),
                f"complete {upload.url}")
        except ObjectExists:  # (if_none_match) another object is there: ours is dropped
            done = None
    except BaseException as err:
        if (isinstance(err, asyncio.CancelledError) and progress is not None
                and not progress.abandoned):
            logger.info("multipart upload %s left for resuming (%s)", upload.url, upload_id)
            raise
        await asyncio.shield(abort(end, upload, upload_id))
        if isinstance(err, BaseExceptionGroup):
            raise await _first_failure(end, upload, err, guard) from err
        raise
    value = checksum.composite(options.checksum, [v for _, v in parts])
    if done is None:  # no parts left behind; the engine compares what is there
        await asyncio.shield(abort(end, upload, upload_id))
        return Outcome(None, value, count, chunk, exists=True)
    return Outcome.of(done, options, value, count, chunk)


async def _create(end: Endpoint, upload: Upload, options: ObjectOptions,
                  counter: AttemptCounter, chunk: int, stat: Stat,
                  progress: Progress | None) -> str:
    """A new multipart upload's id, recorded at once (strays of this object aborted)."""
    if progress is not None and progress.recovered:
        await abort_strays(end, upload)
    tried = counter.attempts
    created = await end.tries(0, counter, lambda: end.client.create_multipart_upload(
        Bucket=upload.bucket, Key=upload.key, **options.create()), f"create {upload.url}")
    upload_id: str = created["UploadId"]
    if counter.attempts - tried > 1:  # an attempt that timed out may have created one
        await abort_strays(end, upload, keep=upload_id)
    if progress is not None:
        await progress.multipart_started(upload, upload_id, chunk, stat)
    return upload_id


async def _first_failure(end: Endpoint, upload: Upload, err: BaseExceptionGroup[Any],
                         guard: Guard) -> BaseException:
    """What a failed part makes of the whole upload: its own error, or a change of the
    file where the part only read short."""
    first = err.exceptions[0]
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    if (isinstance(first, Exception) and not isinstance(first, SourceChanged)
            and not await end.files.call(end.config, 0, guard.ok)):  # (a part read short?)
        return SourceChanged(f"{upload.source.uri} changed during the upload; "
                             "the multipart upload was aborted")
    if isinstance(first, TransferError):
        return first
    return classify(first)


async def _resumable(end: Endpoint, upload: Upload, options: ObjectOptions, chunk: int,
                     stat: Stat, progress: Progress | None
                     ) -> tuple[str | None, dict[int, Part]]:
    """A recorded multipart upload of this same file, with the parts the store still
    has (checked with ListParts); (None, {}) to start afresh."""
    recorded = progress.multipart(upload) if progress is not None else None
    if recorded is None:
        return None, {}
    upload_id, parts, recorded_chunk, recorded_stat = recorded
    if recorded_chunk != chunk or recorded_stat != stat:
        logger.info("not resuming %s: the file or the part size changed", upload.url)
        await asyncio.shield(abort(end, upload, upload_id))
        return None, {}
    try:
        listed: dict[int, str] = {}
        paginator = end.client.get_paginator("list_parts")
        async for page in paginator.paginate(Bucket=upload.bucket, Key=upload.key,
                                             UploadId=upload_id, **options.list_parts()):
            listed.update({p["PartNumber"]: p["ETag"] for p in page.get("Parts", [])})
    except Exception as err:  # NoSuchUpload (aborted or expired), or the store is down
        logger.info("not resuming %s (%s): %s", upload.url, upload_id, classify(err).detail)
        return None, {}
    kept = {n: ({"PartNumber": n, "ETag": etag, **options.part_record(value)}, value)
            for n, (etag, value) in parts.items() if listed.get(n) == etag}
    logger.info("resuming multipart upload %s (%s): %d part(s) already there",
                upload.url, upload_id, len(kept))
    return upload_id, kept


async def _part(end: Endpoint, upload: Upload, options: ObjectOptions, upload_id: str,
                source: Source, number: int, chunk: int, in_flight: asyncio.Semaphore,
                counter: AttemptCounter, progress: Progress | None, guard: Guard,
                meter: Meter | None) -> Part:
    ep = end.config
    offset = (number - 1) * chunk
    length = min(chunk, source.size - offset)
    fd = source.fd
    tally = None if meter is None else meter.tally((end.name, upload.url, number))
    async with in_flight, end.pool.slot():
        value = await end.files.call(ep, length, checksum.of_range, fd, offset, length,
                                     options.checksum, long=True)
        response = await end.tries(length, counter, lambda: end.client.upload_part(
            Bucket=upload.bucket, Key=upload.key, UploadId=upload_id, PartNumber=number,
            Body=checksum.RangeReader(fd, offset, length, tally=tally), ContentLength=length,
            **options.part(value)), f"part {number} of {upload.url}", guard)
    if progress is not None:
        await progress.part_done(upload, number, response["ETag"], value)
    return {"PartNumber": number, "ETag": response["ETag"], **options.part_record(value)}, value


async def abort(end: Endpoint, upload: Upload, upload_id: str) -> None:
    """Abort one multipart upload; best effort: a failure is only logged."""
    try:
        await end.tries(0, AttemptCounter(), lambda: end.client.abort_multipart_upload(
            Bucket=upload.bucket, Key=upload.key, UploadId=upload_id), f"abort {upload.url}")
        logger.info("multipart upload aborted %s (%s)", upload.url, upload_id)
    except TransferError as err:
        if "NoSuchUpload" in err.detail:  # completed after all (a retried complete whose
            # first answer was lost), aborted or expired: nothing is left behind
            logger.info("multipart upload %s (%s) is gone already", upload.url, upload_id)
            return
        logger.error("could not abort multipart upload %s (%s): %s: parts remain until "
                     "a lifecycle rule removes them", upload.url, upload_id, err.detail)


async def abort_strays(end: Endpoint, upload: Upload, keep: str | None = None) -> None:
    """Abort the unfinished multipart uploads of this object that trollpush lost track
    of (no parts left behind, even after kill -9).  The object's lock is held, so any
    other upload of the same key is a stray; best effort: a failure is only logged."""
    ep = end.config
    try:
        async with asyncio.timeout(ep.attempt_budget(0, ep.tries)):
            pages = end.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=upload.bucket, Prefix=upload.key)
            strays = [u["UploadId"] async for page in pages for u in page.get("Uploads", [])
                      if u.get("Key") == upload.key and u.get("UploadId") != keep]
    except Exception as err:
        detail = "timed out" if isinstance(err, TimeoutError) else classify(err).detail
        logger.warning("could not look for stray multipart uploads of %s: %s", upload.url,
                       detail)
        return
    for upload_id in strays:
        logger.info("aborting a stray multipart upload of %s (%s)", upload.url, upload_id)
        await asyncio.shield(abort(end, upload, upload_id))
