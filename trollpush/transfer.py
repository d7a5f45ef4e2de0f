"""Transfer: uploads with tries, a time budget per attempt, and bounded concurrency.

Policy (s3nd's model): each attempt gets ``attempt_budget`` seconds, growing by
``timeout_factor`` per retry; timeouts and transient errors are retried at once (with a
short pause only when the store asks to slow down); permanent errors fail at once.
``max_parallel`` slots bound the requests in flight per endpoint: a single PUT takes one,
a multipart upload one per part in flight.  Files are read from disk as they are sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import aiohttp
import botocore.exceptions

from . import checksum
from ._workers import Workers
from .checksum import Stat
from .config import EndpointConfig
from .errors import PermanentTransferError, Reason, RetriesExhausted, TransferError, TransferTimeout
from .models import Upload, UploadResult
from .pool import EndpointPool

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: S3 error codes that no retry can fix
PERMANENT_CODES = frozenset({
    "NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "InvalidBucketName", "AllAccessDisabled", "AccountProblem", "InvalidRequest",
    "NotImplemented", "KeyTooLongError", "EntityTooLarge", "MethodNotAllowed",
    "NoSuchUpload", "InvalidArgument",
})
#: codes that mean "slow down": retried after a short pause, not at once
THROTTLE_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException",
                            "RequestLimitExceeded", "ServiceUnavailable", "503"})
#: client-side (4xx) codes that a new attempt can fix: a body damaged in flight, a slow
#: client, a clock or token refreshed meanwhile
RETRY_4XX_CODES = frozenset({"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch",
                             "XAmzContentChecksumMismatch", "RequestTimeout",
                             "RequestTimeTooSkewed", "IncompleteBody", "ExpiredToken"})
MIN_PART = 5 * 1024 * 1024
MAX_PARTS = 10_000


def part_size(size: int, chunksize: int) -> int:
    """The part size for ``size`` bytes: >= 5 MiB, and at most 10,000 parts."""
    chunk = max(chunksize, MIN_PART)
    if math.ceil(size / chunk) > MAX_PARTS:
        chunk = math.ceil(size / MAX_PARTS / (1024 * 1024)) * 1024 * 1024
    return chunk


def classify(err: BaseException) -> TransferError:
    """Translate botocore/aiohttp/OS errors into trollpush's transfer errors (one place)."""
    if isinstance(err, TransferError):
        return err
    if isinstance(err, botocore.exceptions.ClientError):
        info = err.response.get("Error", {})
        code = str(info.get("Code", "?"))
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        detail = f"{code}: {info.get('Message', err)}"
        if code in PERMANENT_CODES:
            return PermanentTransferError(detail)
        if code in THROTTLE_CODES or status in (429, 503):
            return TransferError(detail, throttled=True)
        if 400 <= status < 500 and status not in (408,) and code not in RETRY_4XX_CODES:
            return PermanentTransferError(detail)  # the request itself is wrong
        return TransferError(detail)
    if isinstance(err, (botocore.exceptions.NoCredentialsError,
                        botocore.exceptions.PartialCredentialsError,
                        botocore.exceptions.ParamValidationError)):
        return PermanentTransferError(f"{type(err).__name__}: {err}")
    if isinstance(err, FileNotFoundError):
        return PermanentTransferError(f"cannot read {err.filename}: {err.strerror}",
                                      reason=Reason.FILE_MISSING)
    if isinstance(err, PermissionError):
        return PermanentTransferError(f"cannot read {err.filename}: {err.strerror}",
                                      reason=Reason.FILE_UNREADABLE)
    if isinstance(err, (botocore.exceptions.BotoCoreError, aiohttp.ClientError, OSError)):
        return TransferError(f"{type(err).__name__}: {err}")
    raise err


class Progress(Protocol):
    """Where the engine records a multipart upload's progress so it can resume it (the
    journal, for one job); without one, an interrupted upload is aborted."""

    #: the job was recovered after a stop or a crash: a multipart upload may exist at the
    #: store whose id was never recorded (killed between creating and recording it)
    recovered: bool

    async def multipart_started(self, upload: Upload, upload_id: str, part_size: int,
                                stat: Stat) -> None: ...

    async def part_done(self, upload: Upload, number: int, etag: str,
                        checksum: str | None) -> None: ...

    def multipart(self, upload: Upload) -> tuple[str, Mapping[int, tuple[str, str | None]],
                                                 int | None, Stat | None] | None:
        """(upload id, {part: (etag, checksum)}, part size, stat) recorded earlier."""


@dataclass
class _Outcome:
    etag: str | None
    checksum: str | None
    parts: int


class TransferEngine:
    """Uploads files to S3 through one warm pool per endpoint."""

    def __init__(self, endpoints: Mapping[str, EndpointConfig],
                 warm_buckets: Mapping[str, str] | None = None) -> None:
        self._configs = dict(endpoints)
        self._warm = dict(warm_buckets or {})
        self._pools: dict[str, EndpointPool] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        # short file-system calls (stat, open, small reads); long checksum reads go to
        # asyncio.to_thread so that they never hold up a batch of short ones
        self._io = Workers()
        self.completed = 0
        self.failed = 0
        self.retried = 0

    @property
    def active(self) -> int:
        """Requests (PUTs and parts) in progress now, over all endpoints."""
        return sum(p.active for p in self._pools.values())

    def __repr__(self) -> str:
        return (f"<TransferEngine endpoints={len(self._pools)} active={self.active} "
                f"completed={self.completed} failed={self.failed} retried={self.retried}>")

    async def start(self) -> None:
        self._io.start()
        for name, ep in self._configs.items():
            pool = EndpointPool(ep, self._warm.get(name))
            await pool.start()
            self._pools[name] = pool
            self._slots[name] = asyncio.Semaphore(ep.max_parallel)
            logger.info("endpoint %s ready", ep.summary())

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()
        await self._io.close()

    def pool(self, endpoint: str) -> EndpointPool:
        return self._pools[endpoint]

    def client(self, endpoint: str) -> Any:
        """The endpoint's live client (for tools and tests that inspect the store)."""
        return self._pools[endpoint].client

    # --- one file -------------------------------------------------------------------------

    async def upload(self, upload: Upload, endpoint: str, *,
                     progress: Progress | None = None) -> UploadResult:
        """Upload one file; never raises (the result says what happened).

        The file's (size, mtime, inode) is taken before and after: a file that changed
        meanwhile is uploaded again (up to ``tries`` times), never reported as landed.
        """
        pool = self._pools[endpoint]
        ep = pool.config
        start = time.monotonic()
        counter = _Counter()
        size = -1
        stat: Stat | None = None
        try:
            for turn in range(1, ep.tries + 1):
                try:  # one trip to a worker thread: stat, and the bytes of a small file
                    before, small = await self._io.run(
                        checksum.prepare, upload.source.path, ep.multipart_chunksize,
                        ep.checksum)
                except OSError as err:
                    raise classify(err) from err
                stat, size = before, before[0]
                if size >= ep.multipart_threshold:
                    out = await self._multipart(pool, endpoint, upload, before, counter,
                                                progress)
                else:
                    out = await self._single(pool, endpoint, upload, size, small, counter)
                try:
                    after = await self._io.run(checksum.stat_of, upload.source.path)
                except OSError as err:
                    raise classify(err) from err
                if after == before:
                    break
                logger.warning("file changed while uploading %s (%s -> %s), upload %d of %d",
                               upload.source.uri, stat, after, turn, ep.tries)
            else:
                raise PermanentTransferError(
                    f"{upload.source.uri} kept changing during {ep.tries} upload(s)",
                    reason=Reason.FILE_CHANGED)
        except TransferError as err:
            self.failed += 1
            logger.warning("upload failed %s -> %s after %d attempt(s): %s",
                           upload.source.uri, upload.url, counter.attempts, err.detail)
            return UploadResult(upload, size, counter.attempts, time.monotonic() - start,
                                error=err.detail, reason=err.reason)
        self.completed += 1
        seconds = time.monotonic() - start
        logger.info("upload complete %s -> %s (%d bytes, %.3f s, %d attempt(s)%s)",
                    upload.source.uri, upload.url, size, seconds, counter.attempts,
                    f", {out.parts} parts" if out.parts else "")
        return UploadResult(upload, size, counter.attempts, seconds, etag=out.etag,
                            checksum=out.checksum,
                            checksum_algorithm=None if ep.checksum == "none" else ep.checksum,
                            parts=out.parts, source_stat=stat)

    async def _single(self, pool: EndpointPool, endpoint: str, upload: Upload, size: int,
                      small: tuple[bytes, str | None] | None, counter: _Counter) -> _Outcome:
        ep = pool.config
        algo = ep.checksum
        async with self._slot(endpoint):
            if small is not None:  # read once, with its checksum, kept for every attempt
                body, value = small

                async def put() -> Any:
                    return await pool.client.put_object(
                        Bucket=upload.bucket, Key=upload.key, Body=body,
                        ContentLength=len(body), **checksum.put_params(algo, value))
            else:  # larger: checksum first, then stream from disk
                value = await asyncio.to_thread(checksum.of_file, upload.source.path, algo)

                async def put() -> Any:
                    fh = await self._io.run(open, upload.source.path, "rb")
                    try:
                        return await pool.client.put_object(
                            Bucket=upload.bucket, Key=upload.key, Body=fh, ContentLength=size,
                            **checksum.put_params(algo, value))
                    finally:
                        fh.close()

            response = await self._tries(pool, size, counter, put, f"PUT {upload.url}")
        return _Outcome(response.get("ETag"), value, 0)

    async def _multipart(self, pool: EndpointPool, endpoint: str, upload: Upload, stat: Stat,
                         counter: _Counter, progress: Progress | None) -> _Outcome:
        ep = pool.config
        algo = ep.checksum
        size = stat[0]
        chunk = part_size(size, ep.multipart_chunksize)
        count = math.ceil(size / chunk)
        client = pool.client
        upload_id, done_parts = await self._resumable(pool, upload, chunk, stat, progress)
        if upload_id is None:
            if progress is not None and progress.recovered:
                await self._abort_strays(pool, upload)
            tried = counter.attempts
            created = await self._tries(pool, 0, counter, lambda: client.create_multipart_upload(
                Bucket=upload.bucket, Key=upload.key, **checksum.create_params(algo)),
                f"create {upload.url}")
            upload_id = created["UploadId"]
            if counter.attempts - tried > 1:  # an attempt that timed out may have created one
                await self._abort_strays(pool, upload, keep=upload_id)
            if progress is not None:
                await progress.multipart_started(upload, upload_id, chunk, stat)
        # from here on, any way out but success aborts the upload (no parts left behind);
        # only a cancellation with progress recorded keeps it, to be resumed later
        try:
            fd = await self._io.run(os.open, upload.source.path, os.O_RDONLY)
            try:
                in_flight = asyncio.Semaphore(ep.max_parts_in_flight)
                async with asyncio.TaskGroup() as group:
                    tasks = {number: group.create_task(self._part(
                        pool, endpoint, upload, upload_id, fd, number, chunk, size, in_flight,
                        counter, progress)) for number in range(1, count + 1)
                        if number not in done_parts}
            finally:
                os.close(fd)
            parts = [done_parts[n] if n in done_parts else tasks[n].result()
                     for n in range(1, count + 1)]
            done = await self._tries(pool, 0, counter, lambda: client.complete_multipart_upload(
                Bucket=upload.bucket, Key=upload.key, UploadId=upload_id,
                MultipartUpload={"Parts": [p for p, _ in parts]}), f"complete {upload.url}")
        except BaseException as err:
            if isinstance(err, asyncio.CancelledError) and progress is not None:
                logger.info("multipart upload %s left for resuming (%s)", upload.url, upload_id)
                raise
            await asyncio.shield(self._abort(pool, upload, upload_id))
            if isinstance(err, BaseExceptionGroup):
                first = err.exceptions[0]
                while isinstance(first, BaseExceptionGroup):
                    first = first.exceptions[0]
                if isinstance(first, TransferError):
                    raise first from err
                raise classify(first) from err
            raise
        return _Outcome(done.get("ETag"), checksum.composite(algo, [v for _, v in parts]),
                        count)

    async def _resumable(self, pool: EndpointPool, upload: Upload, chunk: int, stat: Stat,
                         progress: Progress | None
                         ) -> tuple[str | None, dict[int, tuple[dict[str, Any], str | None]]]:
        """A recorded multipart upload of this same file, with the parts the store still
        has (checked with ListParts); (None, {}) to start afresh."""
        recorded = progress.multipart(upload) if progress is not None else None
        if recorded is None:
            return None, {}
        upload_id, parts, recorded_chunk, recorded_stat = recorded
        if recorded_chunk != chunk or recorded_stat != stat:
            logger.info("not resuming %s: the file or the part size changed", upload.url)
            await asyncio.shield(self._abort(pool, upload, upload_id))
            return None, {}
        try:
            listed: dict[int, str] = {}
            paginator = pool.client.get_paginator("list_parts")
            async for page in paginator.paginate(Bucket=upload.bucket, Key=upload.key,
                                                 UploadId=upload_id):
                listed.update({p["PartNumber"]: p["ETag"] for p in page.get("Parts", [])})
        except Exception as err:  # NoSuchUpload (aborted or expired), or the store is down
            logger.info("not resuming %s (%s): %s", upload.url, upload_id, classify(err).detail)
            return None, {}
        algo = pool.config.checksum
        kept = {n: ({"PartNumber": n, "ETag": etag, **checksum.part_record(algo, value)}, value)
                for n, (etag, value) in parts.items() if listed.get(n) == etag}
        logger.info("resuming multipart upload %s (%s): %d part(s) already there",
                    upload.url, upload_id, len(kept))
        return upload_id, kept

    async def _part(self, pool: EndpointPool, endpoint: str, upload: Upload, upload_id: str,
                    fd: int, number: int, chunk: int, size: int, in_flight: asyncio.Semaphore,
                    counter: _Counter, progress: Progress | None
                    ) -> tuple[dict[str, Any], str | None]:
        algo = pool.config.checksum
        offset = (number - 1) * chunk
        length = min(chunk, size - offset)
        async with in_flight, self._slot(endpoint):
            try:
                value = await asyncio.to_thread(checksum.of_range, fd, offset, length, algo)
            except OSError as err:
                raise PermanentTransferError(f"reading part {number}: {err}") from err
            response = await self._tries(pool, length, counter, lambda: pool.client.upload_part(
                Bucket=upload.bucket, Key=upload.key, UploadId=upload_id, PartNumber=number,
                Body=checksum.RangeReader(fd, offset, length), ContentLength=length,
                **checksum.put_params(algo, value)), f"part {number} of {upload.url}")
        if progress is not None:
            await progress.part_done(upload, number, response["ETag"], value)
        return {"PartNumber": number, "ETag": response["ETag"],
                **checksum.part_record(algo, value)}, value

    async def _abort(self, pool: EndpointPool, upload: Upload, upload_id: str) -> None:
        counter = _Counter()
        try:
            await self._tries(pool, 0, counter, lambda: pool.client.abort_multipart_upload(
                Bucket=upload.bucket, Key=upload.key, UploadId=upload_id),
                f"abort {upload.url}")
            logger.info("multipart upload aborted %s (%s)", upload.url, upload_id)
        except TransferError as err:
            logger.error("could not abort multipart upload %s (%s): %s: parts remain until "
                         "a lifecycle rule removes them", upload.url, upload_id, err.detail)

    async def _abort_strays(self, pool: EndpointPool, upload: Upload,
                            keep: str | None = None) -> None:
        """Abort the unfinished multipart uploads of this object that trollpush lost track
        of (no parts left behind, even after kill -9).  The object's lock is held, so any
        other upload of the same key is a stray; best effort: a failure is only logged."""
        try:
            async with asyncio.timeout(pool.config.attempt_budget(0, pool.config.tries)):
                pages = pool.client.get_paginator("list_multipart_uploads").paginate(
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
            await asyncio.shield(self._abort(pool, upload, upload_id))

    # --- the policy -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _slot(self, endpoint: str) -> Any:
        """One of ``max_parallel`` slots, waiting at most ``queue_timeout``."""
        ep = self._configs[endpoint]
        slots = self._slots[endpoint]
        try:
            async with asyncio.timeout(ep.queue_timeout):
                await slots.acquire()
        except TimeoutError as err:
            raise TransferError(f"no upload slot free within queue_timeout "
                                f"{ep.queue_timeout:g} s", reason=Reason.QUEUE_TIMEOUT
                                ) from err
        try:
            yield
        finally:
            slots.release()

    async def _tries(self, pool: EndpointPool, size: int, counter: _Counter,
                     call: Callable[[], Awaitable[T]], what: str) -> T:
        """Run ``call`` with the per-attempt budget until it succeeds or tries run out."""
        ep = pool.config
        for attempt in range(1, ep.tries + 1):
            counter.attempts += 1
            budget = ep.attempt_budget(size, attempt)
            pool.begin()
            try:
                async with asyncio.timeout(budget):
                    return await call()
            except TimeoutError:
                error: TransferError = TransferTimeout(f"{what}: attempt {attempt} exceeded "
                                                       f"{budget:.3g} s")
            except Exception as exc:
                error = classify(exc)
                error.detail = f"{what}: {error.detail}"
            finally:
                pool.end()
            if isinstance(error, PermanentTransferError) or attempt == ep.tries:
                if attempt == 1:
                    raise error
                raise RetriesExhausted(error, attempts=attempt)
            self.retried += 1
            logger.info("retry %s (attempt %d failed: %s)", what, attempt, error.detail)
            if error.throttled:
                await asyncio.sleep(min(0.2 * 2 ** attempt, 5.0))
        raise AssertionError("unreachable")  # pragma: no cover


class _Counter:
    """Attempts made for one file, over all its requests (parts included)."""

    def __init__(self) -> None:
        self.attempts = 0


