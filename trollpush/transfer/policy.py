"""The retry policy, in one place: what is tried again at once, what later, what never.

At once (s3nd's model): each store call gets ``tries`` attempts of ``attempt_budget``
seconds, the budget growing by ``timeout_factor`` per retry; a timeout or a transient
error is retried at once, after a short pause only when the store asks to slow down
(``throttled``).  Later: an upload that still failed that way (the store down, slow or
overloaded, no slot free) is worth a new round: the rounds wait 1 s, doubling to 60 s,
until the request's ``max_age``.  Never: a refusal no retry can fix
(:class:`PermanentTransferError`: no bucket, bad credentials, a file that is missing or
not allowed, a bug; a conditional write refused with 412, :class:`ObjectExists`, which
the engine then compares with what it sent) nor a file that kept changing.  Which is
which follows from the error's family, decided by :func:`classify` at the one boundary
where botocore, aiohttp and OS errors come in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import aiohttp
import botocore.exceptions

from .. import logsafe
from ..errors import (
    ObjectExists,
    PermanentTransferError,
    Reason,
    RetriesExhausted,
    TransferError,
    TransferTimeout,
)
from ..stats import RETRIES
from .source import SourceChanged

if TYPE_CHECKING:
    from ..config import EndpointConfig
    from ..models import ObjectOptions, Upload, UploadResult
    from ..stats import Stats
    from .files import Files
    from .pool import EndpointPool
    from .source import Guard

logger = logging.getLogger(__name__)

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
#: the pause between rounds of uploads that failed in a way worth waiting out
RETRY_FIRST, RETRY_MAX = 1.0, 60.0


class ConflictingWrite(TransferError):
    """A conditional write raced another write of the key (409
    ConditionalRequestConflict).  AWS says to write again from the start, a multipart
    upload from a new CreateMultipartUpload: so not retried on the same call, but worth
    a later round (where the other write may have landed: a 412, then compared)."""


def classify(err: BaseException) -> TransferError:
    """Translate botocore/aiohttp/OS errors into trollpush's transfer errors (one place)."""
    if isinstance(err, TransferError):
        return err
    if isinstance(err, botocore.exceptions.ClientError):
        info = err.response.get("Error", {})
        code = str(info.get("Code", "?"))
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        # a store's own text: it could echo a header (an SSE-C key) back
        detail = logsafe.hidden(f"{code}: {info.get('Message', err)}")
        if status == 412 or code == "PreconditionFailed":  # If-None-Match: * refused
            return ObjectExists(detail)
        if code == "ConditionalRequestConflict":
            return ConflictingWrite(detail)
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


def retry_later(err: TransferError) -> bool:
    """Whether an upload that failed with ``err`` may land in a later round: the store
    was down, slow or overloaded (a transfer error or a timeout, after its attempts), or
    no slot came free; not a refusal, a file's fault or a bug (permanent), nor a file
    that kept changing."""
    if isinstance(err, RetriesExhausted):
        err = err.last
    return not isinstance(err, (PermanentTransferError, SourceChanged))


class AttemptCounter:
    """Attempts made for one file, over all its requests (parts included)."""

    __slots__ = ("attempts",)

    def __init__(self) -> None:
        self.attempts = 0


@dataclass(frozen=True)
class Endpoint:
    """One endpoint as an upload's store calls see it: the pool (client, slots, pacing),
    the bounded file-system calls, and the registry that counts retries."""

    name: str
    pool: EndpointPool
    files: Files
    stats: Stats

    @property
    def config(self) -> EndpointConfig:
        return self.pool.config

    @property
    def client(self) -> Any:
        return self.pool.client

    async def head(self, upload: Upload, options: ObjectOptions) -> Any:
        """HeadObject of the upload's object (with the SSE-C key, the checksum asked
        for), in a slot and with the tries of any store call."""
        async with self.pool.slot():
            return await self.tries(0, AttemptCounter(), lambda: self.client.head_object(
                Bucket=upload.bucket, Key=upload.key, **options.head()), f"HEAD {upload.url}")

    async def peek(self, upload: Upload, options: ObjectOptions) -> Any | None:
        """The HeadObject of an object already at the key, or None: nothing there, or
        any doubt (no answer, a refusal), for a conditional write to decide.  One
        attempt, in a slot."""
        try:
            async with self.pool.slot(), asyncio.timeout(self.config.attempt_budget(0, 1)):
                return await self.client.head_object(Bucket=upload.bucket, Key=upload.key,
                                                     **options.head())
        except Exception:  # 404 (none there) and every doubt alike
            return None

    async def tries[T](self, size: int, counter: AttemptCounter,
                       call: Callable[[], Awaitable[T]], what: str,
                       guard: Guard | None = None) -> T:
        """Run ``call`` with the per-attempt budget until it succeeds or tries run out.

        With a ``guard``, a failure while the source file changed is no network error:
        it ends the attempts at once (:class:`SourceChanged`).
        """
        pool = self.pool
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
                if guard is not None and (guard.tripped
                                          or not await self.files.call(ep, 0, guard.ok)):
                    raise SourceChanged(f"{what}: the file changed during the upload; the "
                                        "attempt was abandoned before the store committed "
                                        "it") from exc
                error = classify(exc)
                error.detail = f"{what}: {error.detail}"
            finally:
                pool.end()
            if (isinstance(error, (PermanentTransferError, ConflictingWrite))
                    or attempt == ep.tries):
                if attempt == 1 or isinstance(error, ObjectExists):  # (412: an answer,
                    raise error  # maybe to our own earlier attempt that landed)
                raise RetriesExhausted(error, attempts=attempt)
            self.stats.inc(RETRIES, endpoint=self.name)
            logger.info("retry %s (attempt %d failed: %s)", what, attempt, error.detail)
            if error.throttled:
                await asyncio.sleep(min(0.2 * 2 ** attempt, 5.0))
        raise AssertionError("unreachable")  # pragma: no cover


async def rounds(count: int, run: Callable[[list[int]], Awaitable[Sequence[UploadResult]]],
                 *, deadline: float, what: str) -> tuple[UploadResult, ...]:
    """Run ``count`` uploads (``run`` takes the indexes of those to do) in rounds: the
    ones that failed in a way worth waiting out (``retry_later``) go again, after 1 s
    doubling to 60 s, until they land or ``deadline`` (wall clock: a request's
    ``accepted_at + max_age`` survives restarts).  The attempts of every round add up."""
    results: dict[int, UploadResult] = {}
    todo = list(range(count))
    delay = RETRY_FIRST
    while todo:
        fresh = await run(todo)
        for i, result in zip(todo, fresh, strict=True):
            before = results.get(i)  # every attempt of every round counts
            results[i] = result if before is None else replace(
                result, attempts=before.attempts + result.attempts)
        todo = [i for i in todo if results[i].retry_later]
        left = deadline - time.time()
        if not todo or left <= 0:
            break
        # the store is down or overloaded: wait and try again until max_age
        wait = min(delay, left)
        logger.warning("%d upload(s) of %s failed (%s); again in %.0f s (%.0f s of "
                       "max_age left)", len(todo), what, results[todo[0]].error, wait, left)
        await asyncio.sleep(wait)
        delay = min(delay * 2, RETRY_MAX)
    return tuple(results[i] for i in range(count))
