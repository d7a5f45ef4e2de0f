"""Transfer: uploads with tries, a time budget per attempt, and bounded concurrency.

Policy (s3nd's model): each attempt gets ``attempt_budget`` seconds, growing by
``timeout_factor`` per retry; timeouts and transient errors are retried at once (with a
short pause only when the store asks to slow down); permanent errors fail at once.
``max_parallel`` slots bound the requests in flight per endpoint: a single PUT takes one,
a multipart upload one per part in flight.  Each file is opened once (see ``source``):
a small one is read whole right before it is sent, a larger one is streamed from its
descriptor as it is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import aiohttp
import botocore.exceptions

from .._workers import Workers
from ..config import EndpointConfig
from ..errors import (
    PermanentTransferError,
    Reason,
    RetriesExhausted,
    TransferError,
    TransferTimeout,
)
from ..models import Stat, Upload, UploadResult
from . import checksum
from .pool import EndpointPool
from .source import Guard, Source, SourceChanged, open_source

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
    part_size: int | None = None


class TransferEngine:
    """Uploads files to S3 through one warm pool per endpoint."""

    def __init__(self, endpoints: Mapping[str, EndpointConfig],
                 warm_buckets: Mapping[str, str] | None = None, *,
                 roots: tuple[str, ...] = (), file_timeout: float = 30.0) -> None:
        self._configs = dict(endpoints)
        self._roots = roots  # daemon.allowed_roots, checked again on the opened file
        self._file_timeout = file_timeout
        self._warm = dict(warm_buckets or {})
        self._pools: dict[str, EndpointPool] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        # short file-system calls (open, fstat, small reads); long checksum reads on
        # threads of their own, so that they never hold up the short ones (and never
        # take the loop's default executor, where aiohttp reads request bodies)
        self._io = Workers()
        self._reads = Workers(name="trollpush-read")
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
        self._reads.start()
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
        await self._reads.close()

    def pool(self, endpoint: str) -> EndpointPool:
        return self._pools[endpoint]

    def client(self, endpoint: str) -> Any:
        """The endpoint's live client (for tools and tests that inspect the store)."""
        return self._pools[endpoint].client

    # --- one file -------------------------------------------------------------------------

    async def upload(self, upload: Upload, endpoint: str, *,
                     progress: Progress | None = None,
                     landed: UploadResult | None = None) -> UploadResult:
        """Upload one file; never raises (the result says what happened).

        The file is opened once and every byte is read from that descriptor.  An attempt
        during which the file changes is abandoned before the store commits it; a file
        that changed after a commit is uploaded again (up to ``tries`` times), never
        reported as landed.  ``landed``: what the journal says landed at this object
        earlier; if the file's content and the object at the store both still match it,
        nothing is sent (``attempts`` 0).
        """
        pool = self._pools[endpoint]
        ep = pool.config
        start = time.monotonic()
        counter = _Counter()
        size = -1
        stat: Stat | None = None
        source: Source | None = None
        committed = False  # a copy reached the store, and the file changed after it
        try:
            source = await self._fs(ep, 0, open_source, upload.source.path, upload.source.uri,
                                    self._roots, discard=Source.close)
            size = source.size
            if landed is not None:
                reused = await self._reuse(pool, endpoint, upload, source, landed)
                if reused is not None:
                    return reused
            for turn in range(1, ep.tries + 1):
                if turn > 1:
                    await self._fs(ep, 0, source.refresh)
                stat, size = source.stat, source.size
                try:
                    if size >= ep.multipart_threshold:
                        out = await self._multipart(pool, endpoint, upload, source, counter,
                                                    progress)
                    else:
                        out = await self._single(pool, endpoint, upload, source, counter)
                except SourceChanged as err:
                    logger.warning("%s (upload %d of %d)", err.detail, turn, ep.tries)
                    continue
                committed = True
                if await self._fs(ep, 0, source.fingerprint) == source.opened:
                    committed = False
                    break
                logger.warning("file changed after its upload to %s; upload %d of %d",
                               upload.url, turn, ep.tries)
            else:
                raise PermanentTransferError(
                    f"{upload.source.uri} kept changing during {ep.tries} upload(s)",
                    reason=Reason.FILE_CHANGED)
        except Exception as exc:
            if isinstance(exc, TransferError):
                failure = exc
            else:  # a bug, or a store's answer without what S3 promises: never raised
                logger.error("internal error uploading %s -> %s", upload.source.uri,
                             upload.url, exc_info=exc)
                failure = TransferError(f"internal error: {type(exc).__name__}: {exc}",
                                        reason=Reason.INTERNAL)
            if committed:  # the copy at the store is of a file that went on changing
                await self._withdraw(pool, upload)
            self.failed += 1
            logger.warning("upload failed %s -> %s after %d attempt(s): %s",
                           upload.source.uri, upload.url, counter.attempts, failure.detail)
            return UploadResult(upload, size, counter.attempts, time.monotonic() - start,
                                error=failure.detail, reason=failure.reason)
        finally:
            if source is not None:
                source.close()
        self.completed += 1
        seconds = time.monotonic() - start
        logger.info("upload complete %s -> %s (%d bytes, %.3f s, %d attempt(s)%s)",
                    upload.source.uri, upload.url, size, seconds, counter.attempts,
                    f", {out.parts} parts" if out.parts else "")
        return UploadResult(upload, size, counter.attempts, seconds, etag=out.etag,
                            checksum=out.checksum,
                            checksum_algorithm=None if ep.checksum == "none" else ep.checksum,
                            parts=out.parts, part_size=out.part_size, source_stat=stat)

    async def _fs(self, ep: EndpointConfig, size: int, fn: Callable[..., T], *args: Any,
                  long: bool = False, discard: Callable[[T], object] | None = None) -> T:
        """One blocking file-system call in a worker thread, waited for at most
        ``file_timeout`` (plus the time ``size`` bytes may take to read): a hung mount
        fails the upload instead of holding it up for ever.  The thread itself stays stuck
        until the kernel returns, so another takes its place; ``discard`` releases what the
        call returns if it comes back after the wait was given up."""
        workers = self._reads if long else self._io
        limit = self._file_timeout + (ep.attempt_budget(size, 1) if size else 0.0)
        call = workers.submit(fn, *args, discard=discard)
        try:
            wait = limit
            while True:
                try:
                    return await asyncio.wait_for(asyncio.shield(call.future), wait)
                except TimeoutError:
                    # the time counts from when a thread began the call; not begun: every
                    # thread is stuck in an earlier call, so a new one takes this call
                    if call.started is None:
                        if not workers.grow():
                            raise
                        continue
                    wait = call.started + limit - time.monotonic()
                    if wait <= 0:
                        raise
        except TimeoutError as err:
            call.future.cancel()
            workers.grow()
            raise PermanentTransferError(
                f"a file-system call ({getattr(fn, '__name__', 'read')}) took longer than "
                f"{limit:g} s (daemon.file_timeout): a hung mount?",
                reason=Reason.FILE_UNREADABLE) from err
        except asyncio.CancelledError:
            call.future.cancel()
            raise
        except OSError as err:
            raise classify(err) from err

    async def _reuse(self, pool: EndpointPool, endpoint: str, upload: Upload, source: Source,
                     landed: UploadResult) -> UploadResult | None:
        """The answer for a file that already landed at this object, or None to upload.

        Size, mtime and inode are no proof of identity (1-second timestamps, a rewrite in
        place): the content's checksum is computed afresh and must equal the one recorded,
        and a HEAD must show the object at the store with that size and checksum (or the
        recorded ETag where the store keeps no checksum).  Costs a read of the file and
        one round trip; any doubt means an upload.
        """
        ep = pool.config
        algo = ep.checksum
        why = None
        if algo == "none" or landed.checksum_algorithm != algo or landed.checksum is None:
            why = "no recorded checksum to compare with"
        elif landed.size != source.size:
            why = f"size {source.size} is not the {landed.size} recorded"
        if why is None:
            value = await self._fs(ep, source.size, checksum.of_object, source.fd, source.size,
                                   algo, landed.parts, landed.part_size, long=True)
            if value != landed.checksum:
                why = "its content differs from what landed"
        if why is None:
            why = await self._at_store(pool, endpoint, upload, landed)
        if why is not None:
            logger.info("uploading %s -> %s again: %s", upload.source.uri, upload.url, why)
            return None
        logger.info("already landed, answered from the journal: %s -> %s (content and store "
                    "checked)", upload.source.uri, upload.url)
        return replace(landed, upload=upload, attempts=0, seconds=0.0,
                       source_stat=source.stat)

    async def _at_store(self, pool: EndpointPool, endpoint: str, upload: Upload,
                        landed: UploadResult) -> str | None:
        """Why the object at the store is not the one recorded (None: it is)."""
        ep = pool.config
        try:
            async with self._slot(endpoint):
                head = await self._tries(pool, 0, _Counter(), lambda: pool.client.head_object(
                    Bucket=upload.bucket, Key=upload.key, ChecksumMode="ENABLED"),
                    f"HEAD {upload.url}")
        except TransferError as err:
            return err.detail
        if head.get("ContentLength") != landed.size:
            return (f"the store holds {head.get('ContentLength')} bytes, not the "
                    f"{landed.size} recorded")
        at_store = checksum.stored(ep.checksum, head)
        if at_store is not None:
            return None if at_store == landed.checksum else "the store's checksum differs"
        if landed.etag and head.get("ETag") == landed.etag:
            return None
        return "the store's ETag differs"

    async def _single(self, pool: EndpointPool, endpoint: str, upload: Upload,
                      source: Source, counter: _Counter) -> _Outcome:
        ep = pool.config
        algo = ep.checksum
        size = source.size
        async with self._slot(endpoint):
            # read (small files: once, kept for every attempt) right before sending, so
            # that the check that the file did not change covers the whole attempt
            small = await self._fs(ep, min(size, ep.multipart_chunksize), source.read_all,
                                   ep.multipart_chunksize, algo)
            guard = source.guard()
            if small is not None:  # a snapshot, checked whole as it was read
                body, value = small
                sent = False

                async def put() -> Any:
                    nonlocal sent
                    if sent:  # a retry, later: is the snapshot still the file?
                        await self._fs(ep, 0, guard.check)
                    sent = True
                    return await pool.client.put_object(
                        Bucket=upload.bucket, Key=upload.key, Body=body,
                        ContentLength=len(body), **checksum.put_params(algo, value))
            else:  # larger: checksum first, then stream from the descriptor
                value = await self._fs(ep, size, checksum.of_range, source.fd, 0, size, algo,
                                       long=True)

                async def put() -> Any:
                    return await pool.client.put_object(
                        Bucket=upload.bucket, Key=upload.key, ContentLength=size,
                        Body=checksum.RangeReader(source.fd, 0, size, check=guard.check),
                        **checksum.put_params(algo, value))

            response = await self._tries(pool, size, counter, put, f"PUT {upload.url}", guard)
        return _Outcome(response.get("ETag"), value, 0)

    async def _multipart(self, pool: EndpointPool, endpoint: str, upload: Upload,
                         source: Source, counter: _Counter, progress: Progress | None
                         ) -> _Outcome:
        ep = pool.config
        algo = ep.checksum
        size, stat = source.size, source.stat
        chunk = part_size(size, ep.multipart_chunksize)
        count = math.ceil(size / chunk)
        client = pool.client
        guard = source.guard()
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
            in_flight = asyncio.Semaphore(ep.max_parts_in_flight)
            async with asyncio.TaskGroup() as group:
                tasks = {number: group.create_task(self._part(
                    pool, endpoint, upload, upload_id, source, number, chunk, in_flight,
                    counter, progress, guard)) for number in range(1, count + 1)
                    if number not in done_parts}
            parts = [done_parts[n] if n in done_parts else tasks[n].result()
                     for n in range(1, count + 1)]
            # the last moment to keep a changed file from becoming the object
            await self._fs(ep, 0, guard.check)
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
                if (isinstance(first, Exception) and not isinstance(first, SourceChanged)
                        and not await self._fs(ep, 0, guard.ok)):  # (a part read short?)
                    raise SourceChanged(f"{upload.source.uri} changed during the upload; "
                                        "the multipart upload was aborted") from err
                if isinstance(first, TransferError):
                    raise first from err
                raise classify(first) from err
            raise
        return _Outcome(done.get("ETag"), checksum.composite(algo, [v for _, v in parts]),
                        count, chunk)

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
                    source: Source, number: int, chunk: int, in_flight: asyncio.Semaphore,
                    counter: _Counter, progress: Progress | None, guard: Guard
                    ) -> tuple[dict[str, Any], str | None]:
        ep = pool.config
        algo = ep.checksum
        offset = (number - 1) * chunk
        length = min(chunk, source.size - offset)
        fd = source.fd
        async with in_flight, self._slot(endpoint):
            value = await self._fs(ep, length, checksum.of_range, fd, offset, length, algo,
                                   long=True)
            response = await self._tries(pool, length, counter, lambda: pool.client.upload_part(
                Bucket=upload.bucket, Key=upload.key, UploadId=upload_id, PartNumber=number,
                Body=checksum.RangeReader(fd, offset, length), ContentLength=length,
                **checksum.put_params(algo, value)), f"part {number} of {upload.url}", guard)
        if progress is not None:
            await progress.part_done(upload, number, response["ETag"], value)
        return {"PartNumber": number, "ETag": response["ETag"],
                **checksum.part_record(algo, value)}, value

    async def _withdraw(self, pool: EndpointPool, upload: Upload) -> None:
        """Delete the object a file that kept changing left behind: it was whole when
        sent, but the file went on changing right after, so it is a stale prefix or
        version that no completion describes.  Best effort: a failure is logged."""
        try:
            await self._tries(pool, 0, _Counter(), lambda: pool.client.delete_object(
                Bucket=upload.bucket, Key=upload.key), f"DELETE {upload.url}")
            logger.warning("removed %s: its file kept changing after each upload",
                           upload.url)
        except TransferError as err:
            logger.error("could not remove %s, the copy of a file that kept changing: %s",
                         upload.url, err.detail)

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
                     call: Callable[[], Awaitable[T]], what: str, guard: Guard | None = None
                     ) -> T:
        """Run ``call`` with the per-attempt budget until it succeeds or tries run out.

        With a ``guard``, a failure while the source file changed is no network error:
        it ends the attempts at once (:class:`SourceChanged`).
        """
        ep = pool.config
        for attempt in range(1, ep.tries + 1):
            counter.attempts += 1
            budget = ep.attempt_budget(size, attempt)
            pool.begin()
            try:
                async with asyncio.timeout(budget):
                    return await call()
            except SourceChanged:
                raise
            except TimeoutError:
                error: TransferError = TransferTimeout(f"{what}: attempt {attempt} exceeded "
                                                       f"{budget:.3g} s")
            except Exception as exc:
                if guard is not None and (guard.tripped or not await self._fs(ep, 0, guard.ok)):
                    raise SourceChanged(f"{what}: the file changed during the upload; the "
                                        "attempt was abandoned before the store committed "
                                        "it") from exc
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


