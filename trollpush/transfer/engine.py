"""The transfer engine: the one face of the transfer stage.

``upload`` lands one file at one object and never raises; ``upload_all`` lands a job's
files, in rounds until the request's ``max_age`` while the store is down (see
``policy``).  Each file is opened once (see ``source``) and sent whole (``single``) or in
parts (``multipart``) through its endpoint's warm pool (``pool``).  A file that already
landed at its object is answered without a transfer once its content and the store
confirm it.  Every outcome, byte, attempt and retry is counted in the stats registry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..config import EndpointConfig
from ..errors import ObjectExists, PermanentTransferError, Reason, TransferError
from ..models import NO_OPTIONS, ObjectOptions, Upload, UploadResult
from ..stats import (
    ATTEMPTS,
    BYTES,
    RATE,
    RATE_BUCKETS,
    RETRIES,
    TRANSFER_SECONDS,
    UPLOADS,
    Stats,
)
from . import checksum, conditional, multipart, policy, single
from .endpoints import Endpoints
from .files import Files
from .multipart import Progress
from .policy import AttemptCounter, Endpoint
from .pool import EndpointPool
from .source import Source, SourceChanged, open_source

if TYPE_CHECKING:
    from ..progress import Meter

logger = logging.getLogger(__name__)

#: the options of uploads given none, per checksum algorithm: one instance each, so
#: their S3 parameters are built once, not per file (the small-file firehose)
_PLAIN: dict[str, ObjectOptions] = {}


def _options(upload: Upload, algorithm: str) -> ObjectOptions:
    """What the upload's store calls carry: its options with the endpoint's checksum."""
    given = upload.options
    if given is NO_OPTIONS:
        plain = _PLAIN.get(algorithm)
        if plain is None:
            plain = _PLAIN[algorithm] = ObjectOptions(checksum=algorithm)
        return plain
    return given if given.checksum == algorithm else replace(given, checksum=algorithm)


class TransferEngine:
    """Uploads files to S3 through one warm pool per endpoint.

    ``stats``: the registry it reports to (a fresh one if None): uploads by endpoint,
    outcome (``completed``, ``failed``, ``reused``: answered from the journal,
    ``already_there``: a conditional write found the same content there, nothing
    written) and reason; bytes landed, attempts and retries; seconds and rate per upload; and, read
    from each endpoint's pool when the registry is: files and store calls in progress,
    connections open and idle, keep-warm requests, the last landing, TCP_INFO.
    """

    def __init__(self, endpoints: Mapping[str, EndpointConfig],
                 warm_buckets: Mapping[str, str] | None = None, *,
                 roots: tuple[str, ...] = (), file_timeout: float = 30.0,
                 stats: Stats | None = None) -> None:
        self._configs = dict(endpoints)
        self._roots = roots  # daemon.allowed_roots, checked again on the opened file
        self._warm = dict(warm_buckets or {})
        self._files = Files(file_timeout)
        self.stats = stats if stats is not None else Stats()
        #: by name, each with its warm pool (a reload replaces some)
        self.endpoints = Endpoints(self._files, self.stats)

    @property
    def _endpoints(self) -> Mapping[str, Endpoint]:
        return self.endpoints.current

    @property
    def active(self) -> int:
        """Requests (PUTs and parts) in progress now, over all endpoints."""
        return sum(e.pool.active for e in self._endpoints.values())

    @property
    def completed(self) -> int:
        """Uploads that landed (answers from the journal and objects found already
        there not counted: what was written)."""
        return self.stats.count(UPLOADS, outcome="completed")

    @property
    def failed(self) -> int:
        return self.stats.count(UPLOADS, outcome="failed")

    @property
    def retried(self) -> int:
        """Store calls that were made again after a failed attempt."""
        return self.stats.count(RETRIES)

    def __repr__(self) -> str:
        return (f"<TransferEngine endpoints={len(self._endpoints)} active={self.active} "
                f"completed={self.completed} failed={self.failed} retried={self.retried}>")

    async def start(self) -> None:
        self._files.start()
        await self.endpoints.start(self._configs, self._warm)

    async def close(self) -> None:
        await self.endpoints.close()
        await self._files.close()

    def view(self) -> EngineView:
        """The endpoints as they are now, for the requests that start now: a reload
        swaps in a new view, and a request keeps the one it started with."""
        return EngineView(self, self.endpoints.snapshot())

    def reconfigure(self, configs: Mapping[str, EndpointConfig],
                    opened: Mapping[str, Endpoint], *, warm_buckets: Mapping[str, str],
                    roots: tuple[str, ...], file_timeout: float) -> list[Endpoint]:
        """A reload (synchronous): the endpoints become ``configs``, with the pools in
        ``opened`` (``endpoints.open``) for the new and changed ones; also the allowed
        roots and the file-call bound.  The endpoints replaced or removed are returned,
        for ``endpoints.retire`` once the requests that started with them are done."""
        retired = self.endpoints.swap(configs, opened, warm_buckets)
        self._configs, self._warm = dict(configs), dict(warm_buckets)
        self._roots = roots
        self._files.timeout = file_timeout
        return retired

    def pool(self, endpoint: str) -> EndpointPool:
        return self._endpoints[endpoint].pool

    def client(self, endpoint: str) -> Any:
        """The endpoint's live client (for tools and tests that inspect the store)."""
        return self._endpoints[endpoint].client

    # --- a job's files --------------------------------------------------------------------

    async def upload_all(self, uploads: Sequence[Upload], endpoint: str, *, deadline: float,
                         what: str, progress: Progress | None = None,
                         landed: Mapping[int, UploadResult] | None = None,
                         via: Mapping[str, Endpoint] | None = None,
                         meter: Meter | None = None,
                         look_first: bool = False) -> tuple[UploadResult, ...]:
        """Upload every file (at once), in rounds until ``deadline`` (wall clock) for
        those that failed in a way worth waiting out (see ``policy.rounds``); never
        raises.  ``landed``: by index, what landed at an object earlier (first round
        only, see :meth:`upload`); ``what``: the job, for logs; ``via``: the endpoints
        of a :meth:`view` (default: the current ones); ``meter``: where the bytes read
        to be sent are counted (a requester watches the progress); ``look_first``:
        the request may have been done before (see :meth:`upload`)."""
        earlier = dict(landed or {})

        async def run(todo: list[int]) -> Sequence[UploadResult]:
            calls = [self.upload(uploads[i], endpoint, progress=progress,
                                 landed=earlier.pop(i, None), via=via, meter=meter,
                                 look_first=look_first)
                     for i in todo]
            return [await calls[0]] if len(calls) == 1 else await asyncio.gather(*calls)

        return await policy.rounds(len(uploads), run, deadline=deadline, what=what)

    # --- one file -------------------------------------------------------------------------

    async def upload(self, upload: Upload, endpoint: str, *,
                     progress: Progress | None = None,
                     landed: UploadResult | None = None,
                     via: Mapping[str, Endpoint] | None = None,
                     meter: Meter | None = None, look_first: bool = False) -> UploadResult:
        """Upload one file; never raises (the result says what happened).

        The file is opened once and every byte is read from that descriptor.  An attempt
        during which the file changes is abandoned before the store commits it; a file
        that changed after a commit is uploaded again (up to ``tries`` times), never
        reported as landed.  ``landed``: what the journal says landed at this object
        earlier; if the file's content and the object at the store both still match it
        (and it was written with the same object options), nothing is sent (``attempts``
        0).  A conditional write (``if_none_match``) that finds an object at the key
        compares it with what was sent: the same size and checksum count as landed
        (``already_there``), anything else fails with reason ``exists``.

        ``look_first``: the request may have been done before (a redelivered request,
        whose earlier delivery may have landed the object before its instance died):
        see :func:`_again`.
        """
        end = (self._endpoints if via is None else via)[endpoint]
        options = _options(upload, end.config.checksum)
        start = time.monotonic()
        counter = AttemptCounter()
        source: Source | None = None
        end.pool.uploading += 1
        try:
            if options.missing_key is not None:
                await _abort_recorded(end, upload, progress)
                raise _key_missing(upload, options.missing_key)
            source = await end.files.call(end.config, 0, open_source, upload.source.path,
                                          upload.source.uri, self._roots, discard=Source.close)
            if landed is not None:
                reused = await self._reuse(end, upload, source, options, landed)
                if reused is not None:
                    self.stats.inc(UPLOADS, endpoint=endpoint, outcome="reused")
                    return reused
            send = _again if look_first else _send
            out = await send(end, upload, source, options, counter, progress, meter)
        except Exception as exc:
            return self._failed(endpoint, upload, exc, source.size if source else -1,
                                counter.attempts, time.monotonic() - start)
        finally:
            end.pool.uploading -= 1
            if source is not None:
                source.close()
        seconds = time.monotonic() - start
        end.pool.last_success = time.time()
        written = not out.exists  # (already there: no bytes, no transfer time counted)
        self._count(endpoint, "completed" if written else "already_there", None,
                    counter.attempts, source.size, seconds if written else None)
        logger.info("upload complete %s -> %s (%d bytes, %.3f s, %d attempt(s)%s%s)",
                    upload.source.uri, upload.url, source.size, seconds, counter.attempts,
                    f", {out.parts} parts" if out.parts else "",
                    ", already there: the same size and checksum" if out.exists else "")
        return _landed(upload, source, options, out, counter.attempts, seconds)

    def _failed(self, endpoint: str, upload: Upload, exc: Exception, size: int,
                attempts: int, seconds: float) -> UploadResult:
        if isinstance(exc, TransferError):
            failure = exc
        else:  # a bug, or a store's answer without what S3 promises: never raised, and
            # not tried again (no round fixes it)
            logger.error("internal error uploading %s -> %s", upload.source.uri,
                         upload.url, exc_info=exc)
            failure = PermanentTransferError(f"internal error: {type(exc).__name__}: {exc}",
                                             reason=Reason.INTERNAL)
        self._count(endpoint, "failed", failure.reason, attempts)
        logger.warning("upload failed %s -> %s after %d attempt(s): %s",
                       upload.source.uri, upload.url, attempts, failure.detail)
        return UploadResult(upload, size, attempts, seconds, error=failure.detail,
                            reason=failure.reason, retry_later=policy.retry_later(failure))

    def _count(self, endpoint: str, outcome: str, reason: str | None, attempts: int,
               size: int = 0, seconds: float | None = None) -> None:
        """One upload's outcome into the registry (a few updates per file, none per
        byte or attempt: the hot path stays cheap)."""
        stats = self.stats
        stats.inc(UPLOADS, endpoint=endpoint, outcome=outcome, reason=reason)
        if attempts:
            stats.inc(ATTEMPTS, attempts, endpoint=endpoint)
        if seconds is not None:
            stats.inc(BYTES, size, endpoint=endpoint)
            stats.observe(TRANSFER_SECONDS, seconds, endpoint=endpoint)
            if seconds > 0 and attempts:
                stats.observe(RATE, size / seconds, buckets=RATE_BUCKETS, endpoint=endpoint)

    async def _reuse(self, end: Endpoint, upload: Upload, source: Source,
                     options: ObjectOptions, landed: UploadResult) -> UploadResult | None:
        """The answer for a file that already landed at this object, or None to upload.

        Size, mtime and inode are no proof of identity (1-second timestamps, a rewrite in
        place): the content's checksum is computed afresh and must equal the one recorded,
        and a HEAD must show the object at the store with that size and checksum (or the
        recorded ETag where the store keeps no checksum).  Costs a read of the file and
        one round trip; any doubt means an upload.
        """
        algo = options.checksum
        why = None
        if algo == "none" or landed.checksum_algorithm != algo or landed.checksum is None:
            why = "no recorded checksum to compare with"
        elif landed.written_with != options.fingerprint:
            why = _other_options(landed, options)
        elif landed.size != source.size:
            why = f"size {source.size} is not the {landed.size} recorded"
        if why is None:
            value = await end.files.call(end.config, source.size, checksum.of_object,
                                         source.fd, source.size, algo, landed.parts,
                                         landed.part_size, long=True)
            if value != landed.checksum:
                why = "its content differs from what landed"
        if why is None:
            why = await self._at_store(end, upload, options, landed)
        if why is not None:
            logger.info("uploading %s -> %s again: %s", upload.source.uri, upload.url, why)
            return None
        logger.info("already landed, answered from the journal: %s -> %s (content and store "
                    "checked)", upload.source.uri, upload.url)
        return replace(landed, upload=upload, attempts=0, seconds=0.0,
                       source_stat=source.stat)

    async def _at_store(self, end: Endpoint, upload: Upload, options: ObjectOptions,
                        landed: UploadResult) -> str | None:
        """Why the object at the store is not the one recorded (None: it is)."""
        try:
            head = await end.head(upload, options)
        except TransferError as err:
            return err.detail
        if head.get("ContentLength") != landed.size:
            return (f"the store holds {head.get('ContentLength')} bytes, not the "
                    f"{landed.size} recorded")
        at_store = options.stored(head)
        if at_store is not None:
            return None if at_store == landed.checksum else "the store's checksum differs"
        if landed.etag and head.get("ETag") == landed.etag:
            return None
        return "the store's ETag differs"


# --- sending one file ---------------------------------------------------------------------


async def _again(end: Endpoint, upload: Upload, source: Source, options: ObjectOptions,
                 counter: AttemptCounter, progress: Progress | None,
                 meter: Meter | None) -> single.Outcome:
    """Upload a file whose request may have been done before: look before writing.

    The object at the key is looked at first (a HEAD; nothing sent when it is the
    file), then written with ``If-None-Match: *`` (a copy another writer landed
    meanwhile wins, and is compared): the same size and checksum are the answer
    (``already_there``).  Another object there is overwritten, as the request asks
    for this file there; unless the upload itself says ``if_none_match``, whose
    ``exists`` stands.  A store that reports no checksum to compare with (or an
    endpoint that sends none) gets the file again: never a false "already there".
    """
    if options.if_none_match:
        return await _send(end, upload, source, options, counter, progress, meter,
                           look=True)
    try:
        return await _send(end, upload, source, replace(options, if_none_match=True),
                           counter, progress, meter, look=True)
    except ObjectExists as err:
        logger.info("%s; the request came again and asks for %s there: uploading it "
                    "over that object", err.detail.removesuffix(" (if_none_match)"),
                    upload.source.uri)
    return await _send(end, upload, source, options, counter, progress, meter)


async def _send(end: Endpoint, upload: Upload, source: Source,
                options: ObjectOptions, counter: AttemptCounter,
                progress: Progress | None, meter: Meter | None = None, *,
                look: bool = False) -> single.Outcome:
    """Send the opened file, up to ``tries`` times while it keeps changing; a copy
    of a changed file that reached the store is withdrawn when this fails
    (``look``: a conditional write looks before writing, see ``single.put``)."""
    ep = end.config
    committed = False  # a copy reached the store, and the file changed after it
    try:
        for turn in range(1, ep.tries + 1):
            if turn > 1:
                await end.files.call(ep, 0, source.refresh)
            try:
                if source.size >= ep.multipart_threshold:
                    out = await multipart.send(end, upload, source, options, counter,
                                               progress, meter)
                else:
                    out = await single.put(end, upload, source, options, counter, meter,
                                           look=look)
            except SourceChanged as err:
                logger.warning("%s (upload %d of %d)", err.detail, turn, ep.tries)
                continue
            if out.exists:
                if committed:  # our copy of the file's earlier content is in the way
                    break
                out = await conditional.existing(end, upload, source.size, options, out)
            else:
                committed = True
            if await end.files.call(ep, 0, source.fingerprint) == source.opened:
                return out
            logger.warning("file changed after its upload to %s; upload %d of %d",
                           upload.url, turn, ep.tries)
        raise PermanentTransferError(
            f"{upload.source.uri} kept changing during {ep.tries} upload(s)",
            reason=Reason.FILE_CHANGED)
    except Exception:
        if committed:  # the copy at the store is of a file that went on changing
            await _withdraw(end, upload)
        raise


async def _withdraw(end: Endpoint, upload: Upload) -> None:
    """Delete the object a file that kept changing left behind: it was whole when
    sent, but the file went on changing right after, so it is a stale prefix or
    version that no completion describes.  Best effort: a failure is logged."""
    try:
        await end.tries(0, AttemptCounter(), lambda: end.client.delete_object(
            Bucket=upload.bucket, Key=upload.key), f"DELETE {upload.url}")
        logger.warning("removed %s: its file kept changing after each upload",
                       upload.url)
    except TransferError as err:
        logger.error("could not remove %s, the copy of a file that kept changing: %s",
                     upload.url, err.detail)


def _landed(upload: Upload, source: Source, options: ObjectOptions, out: single.Outcome,
            attempts: int, seconds: float) -> UploadResult:
    """The result of an upload that landed (or found its object already there)."""
    return UploadResult(upload, source.size, attempts, seconds, etag=out.etag,
                        checksum=out.checksum,
                        checksum_algorithm=None if options.checksum == "none"
                        else options.checksum,
                        parts=out.parts, part_size=out.part_size, source_stat=source.stat,
                        version_id=out.version_id, storage_class=out.storage_class,
                        encryption=out.encryption,
                        written_with=None if out.exists else options.fingerprint,
                        already_there=out.exists)


async def _abort_recorded(end: Endpoint, upload: Upload, progress: Progress | None) -> None:
    """A multipart upload recorded for this file that cannot go on (its SSE-C key is
    gone) is aborted, which needs no key: no encrypted parts are left behind."""
    recorded = progress.multipart(upload) if progress is not None else None
    if recorded is not None:
        await asyncio.shield(multipart.abort(end, upload, recorded[0]))


def _key_missing(upload: Upload, name: str) -> PermanentTransferError:
    return PermanentTransferError(f"the SSE-C key with MD5 {name} that {upload.url} is "
                                  "written with is not loaded (no key file of the config "
                                  "has it)", reason=Reason.BAD_OBJECT_OPTIONS)


def _other_options(landed: UploadResult, options: ObjectOptions) -> str:
    """Why an object that landed is not reused: written with other object options."""
    if landed.storage_class != options.storage_class:
        return (f"it was written with other object options (storage class "
                f"{landed.storage_class or 'default'}, now {options.storage_class or 'default'})")
    return "it was written with other object options"


class EngineView:
    """The endpoints one config gave, as the requests that started under it upload
    through them (``TransferEngine.view``): what the pipeline calls ``upload_all`` on."""

    def __init__(self, engine: TransferEngine, endpoints: Mapping[str, Endpoint]) -> None:
        self.engine = engine
        self.endpoints = endpoints

    def __repr__(self) -> str:
        return f"<EngineView {', '.join(self.endpoints)}>"

    async def upload_all(self, uploads: Sequence[Upload], endpoint: str, *, deadline: float,
                         what: str, progress: Progress | None = None,
                         landed: Mapping[int, UploadResult] | None = None,
                         meter: Meter | None = None,
                         look_first: bool = False) -> tuple[UploadResult, ...]:
        return await self.engine.upload_all(uploads, endpoint, deadline=deadline, what=what,
                                            progress=progress, landed=landed,
                                            via=self.endpoints, meter=meter,
                                            look_first=look_first)

    async def abort(self, upload: Upload, endpoint: str, upload_id: str) -> None:
        """Abort a multipart upload recorded for ``upload`` (one another instance made
        unneeded); best effort: a failure is logged, parts remain until a lifecycle
        rule removes them."""
        end = self.endpoints.get(endpoint)
        if end is None:
            logger.error("could not abort multipart upload %s (%s): endpoint %s is no "
                         "longer configured", upload.url, upload_id, endpoint)
            return
        await asyncio.shield(multipart.abort(end, upload, upload_id))
