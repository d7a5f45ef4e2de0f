"""The path of one accepted request: route, transfer, announce, record; always answered.

A :class:`RequestRun` carries one request's state (its jobs, what each job announced);
a :class:`JobRunner` runs one of its jobs (object locks, the upload, the announcement).
Both share a :class:`Pipeline`: the injected journal, engine, announcer and stats, and the
routing snapshot taken when the request starts.  Nothing here knows about sockets,
signals or where the request came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol

from posttroll.message import Message

from . import messages, stats
from .access import Access
from .errors import Reason
from .journal import JobRecord, Journal, State
from .models import Job, Rejection, Request, ResultReader, Stat, Upload, UploadResult
from .progress import Meter, watch
from .route import Routing
from .stats import Stats

logger = logging.getLogger(__name__)

#: pub-sub message types that are never requests, dropped with a debug line: heartbeats,
#: and trollpush's own announcements (refusing those loudly would feed a loop when a
#: daemon hears its own publisher)
QUIET_TYPES = frozenset({"beat", messages.FAILURE_TYPE, messages.ACK_TYPE,
                         messages.MULTIPLE_TYPE, messages.PROGRESS_TYPE})


class Announcer(Protocol):
    """Where outcomes are published (``announce.Announcer``; a fake in fast tests)."""

    def publish(self, message: Message) -> None: ...

    async def sent(self, message: Message) -> None:
        """Publish and wait until the message has left: "published before recorded"."""

    def rejection(self, item: Rejection) -> Message: ...

    def route_failure(self, request: Request, fail: Any) -> Message: ...

    def upload_failure(self, job: Job, result: UploadResult) -> Message: ...


class Engine(Protocol):
    """What the pipeline asks of the transfer engine (``transfer.TransferEngine``)."""

    async def upload_all(self, uploads: Sequence[Upload], endpoint: str, *, deadline: float,
                         what: str, progress: Any = None,
                         landed: Mapping[int, UploadResult] | None = None,
                         meter: Any = None, look_first: bool = False
                         ) -> tuple[UploadResult, ...]:
        """Land the files, retrying what may succeed later until ``deadline``; bytes read
        to be sent are counted in ``meter`` (``progress.Meter``) when one is given;
        ``look_first``: the request may have been done before (it was delivered again):
        an object already there with the same content is not written again."""

    async def abort(self, upload: Upload, endpoint: str, upload_id: str) -> None:
        """Abort a multipart upload recorded earlier; best effort (a failure is logged)."""


def shutdown(request: Request, detail: str) -> Rejection:
    """The failure of a request that a stop cut off."""
    return Rejection(Reason.SHUTDOWN, detail, request.origin,
                     subject=request.subject, uri=request.files[0].uri,
                     metadata=request.metadata, reply=request.reply)


class Recorder:
    """Journal steps of requests already accepted.  A step that fails is logged and
    counted, never raised: the request keeps the one outcome it has, and the journal its
    older record (at worst, work repeated after a restart).  While the journal cannot be
    written, ``down`` is set and new requests are refused."""

    def __init__(self, registry: Stats) -> None:
        self.stats = registry
        self.down = False

    async def __call__[R](self, step: Awaitable[R], what: str) -> R | None:
        try:
            result = await step
        except Exception as err:
            self.failed(err, what)
            return None
        self.ok()
        return result

    def failed(self, err: BaseException, what: str) -> None:
        self.stats.inc(stats.JOURNAL_ERRORS)
        if not self.down:
            self.down = True
            logger.error("the journal cannot be written (%s): new requests are refused "
                         "(journal_unavailable) until it can; work in progress goes on",
                         err, exc_info=err)
        else:
            logger.warning("journal still unavailable (%s): %s", what, err)

    def ok(self) -> None:
        if self.down:
            self.down = False
            logger.warning("the journal can be written again: accepting requests")


class JobProgress:
    """The engine's view of the journal for one job: where multipart progress goes.

    Progress that cannot be recorded (a full disk) costs only a resume: the upload goes
    on, and a restart starts it afresh."""

    def __init__(self, journal: Journal, job: Job, record: Recorder, *,
                 recovered: bool = False, run: RequestRun | None = None) -> None:
        self._journal = journal
        self._job = job
        self._record = record
        self._run = run
        self.recovered = recovered

    @property
    def abandoned(self) -> bool:
        """The requester gave up: an interrupted multipart upload is aborted."""
        return self._run is not None and self._run.gone is not None

    async def multipart_started(self, upload: Upload, upload_id: str, part_size: int,
                                stat: Stat) -> None:
        await self._record(self._journal.multipart_started(
            self._job, upload, upload_id, part_size=part_size, source_stat=stat),
            self._job.describe())

    async def part_done(self, upload: Upload, number: int, etag: str,
                        checksum: str | None) -> None:
        await self._record(self._journal.part_done(self._job, upload, number, etag, checksum),
                           self._job.describe())

    def multipart(self, upload: Upload) -> tuple[str, dict[int, tuple[str, str | None]],
                                                 int | None, Stat | None] | None:
        state = self._journal.multipart(self._job, upload)
        if state is None:
            return None
        return state.upload_id, dict(state.parts), state.part_size, state.source_stat


class _ObjectLock:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0  # holders and waiters


class Pipeline:
    """What every request's run shares: collaborators, the routing snapshot, object locks."""

    def __init__(self, *, journal: Journal, engine: Engine, announcer: Announcer,
                 routing: Routing, registry: Stats, durable: bool,
                 access: Mapping[str, Access] | None = None) -> None:
        self.journal = journal
        #: like the routing, swapped between requests (a reload's endpoints: an engine
        #: view); a running request keeps the one it started with
        self.engine = engine
        self.announcer = announcer
        #: swapped whole between requests (a reload); a running request keeps its own
        self.routing = routing
        self.stats = registry
        #: a durable journal keeps what a stop cuts off, to finish at the next start
        self.durable = durable
        #: how consumers reach each endpoint's objects (told in completions)
        self.access: Mapping[str, Access] = access or {}
        self.record = Recorder(registry)
        self.resuming: set[str] = set()  # ids of requests recovered from the journal
        self.running: dict[str, RequestRun] = {}  # by request id
        #: requests whose requester gave up while they waited in the queue (id -> why)
        self.gone: dict[str, str] = {}
        self._objects: dict[tuple[str, str, str], _ObjectLock] = {}

    async def run(self, request: Request) -> None:
        await RequestRun(self, request).run()

    def abandon(self, request: Request, detail: str) -> None:
        """The requester hung up before its answer (s3nd's semantics): the request stops
        where it is, an upload in progress is aborted (no parts left at the store), and
        it ends failed with ``client_gone``, so a restart does not resume it.  Call it on
        the loop; a request already finished is left alone."""
        run = self.running.get(request.id)
        if run is not None:
            run.abandon(detail)
        elif request.id not in self.gone and len(self.gone) < 100_000:
            self.gone[request.id] = detail  # still queued: ended when its turn comes

    async def refuse(self, item: Rejection) -> None:
        """Announce (and answer) a request that was not accepted."""
        if item.origin == "subscribe" and item.message_type in QUIET_TYPES:
            logger.debug("ignored %s message on %s", item.message_type, item.subject)
            return
        if item.reason != Reason.SHUTDOWN:  # leftovers count as abandoned
            self.stats.inc(stats.REQUESTS, input=item.origin, outcome="rejected",
                           reason=item.reason)
        logger.warning("rejected %s message%s: %s (%s)", item.origin,
                       f" {item.subject}" if item.subject else "", item.detail, item.reason)
        message = self.announcer.rejection(item)
        self.announcer.publish(message)
        if item.reply is not None:
            await item.reply.send(message)

    async def defer(self, request: Request) -> None:
        """A stop cut a journaled request off: the next start finishes it.  Only a waiting
        requester is told (pub-sub gets the completion later, not a failure)."""
        logger.info("left in the journal for the next start: %s", request.describe())
        if request.reply is not None:
            await request.reply.send(self.announcer.rejection(shutdown(
                request, "the daemon stopped; the request stays in its journal and is "
                         "finished at the next start")))

    def internal(self, request: Request, job: Job | None, err: BaseException) -> Message:
        """A bug or a broken dependency: announced, never silent."""
        logger.error("internal error on %s", job.describe() if job else request.describe(),
                     exc_info=err)
        message = self.announcer.rejection(Rejection(
            Reason.INTERNAL, f"internal error: {type(err).__name__}: {err}",
            request.origin, subject=request.subject, uri=request.files[0].uri,
            metadata=request.metadata))
        self.announcer.publish(message)
        return message

    @contextlib.asynccontextmanager
    async def object_lock(self, key: tuple[str, str, str]) -> AsyncIterator[None]:
        """The lock of one object, dropped when nobody holds or waits for it."""
        entry = self._objects.setdefault(key, _ObjectLock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._objects[key]


class RequestRun:
    """One request from its routing to its answer."""

    def __init__(self, pipeline: Pipeline, request: Request) -> None:
        self.pipeline = pipeline
        self.request = request
        self.routing = pipeline.routing  # one snapshot for the whole request
        self.engine = pipeline.engine  # and the endpoints (pools) it started with
        self.jobs: tuple[Job, ...] = ()
        #: what each finished job announced, by its index in ``jobs``
        self.done: dict[int, list[Message]] = {}
        self.messages: list[Message] = []
        #: why the requester gave up, if it did (the run is then cancelled)
        self.gone: str | None = None
        #: counts the bytes sent, when the requester watches the progress
        self.meter: Meter | None = None
        self._task: asyncio.Task[Any] | None = None

    def abandon(self, detail: str) -> None:
        if self.gone is None and self._task is not None:
            self.gone = detail
            self._task.cancel()

    async def run(self) -> None:
        """Route (or resume), run every job, then record and answer once."""
        p, request = self.pipeline, self.request
        p.stats.observe(stats.QUEUED_SECONDS, time.monotonic() - request.received,
                        input=request.origin)
        gone = p.gone.pop(request.id, None)
        if gone is not None:  # the requester left while the request was queued
            self.gone = gone
            return await self._client_gone()
        self._task = asyncio.current_task()
        p.running[request.id] = self
        try:
            await self._run()
        finally:
            del p.running[request.id]

    async def _run(self) -> None:
        p, request = self.pipeline, self.request
        journaled = False  # finished in the journal already
        try:
            records = p.journal.jobs(request) if request.id in p.resuming else []
            p.resuming.discard(request.id)
            if records:  # recovered: continue the jobs as recorded (the config may differ)
                self.jobs = tuple(r.job for r in records)
                await self._run_jobs([JobRunner(self, i, r.job).resume(r)
                                      for i, r in enumerate(records)])
            else:
                journaled = await self._route_and_run()
        except asyncio.CancelledError:
            if self.gone is None or self._task is None:
                await self._cut_off()
                raise
            self._task.uncancel()  # the cancellation was ours: the request ends here
            return await self._client_gone()
        except Exception as err:
            self.messages.append(p.internal(request, None, err))
        reason = _failure(self.messages)
        p.stats.inc(stats.REQUESTS, input=request.origin,
                    outcome="completed" if reason is None else "failed", reason=reason)
        await self._end(started=bool(self.jobs), journaled=journaled)

    async def _route_and_run(self) -> bool:
        """A new request; whether its journal record is finished already."""
        p, request = self.pipeline, self.request
        result = self.routing.router.route(request)
        self.jobs = result.jobs
        reply = request.reply
        if reply is not None and reply.wants_ack and self.jobs:
            await reply.send(messages.ack(request, [u.url for j in self.jobs
                                                    for u in j.uploads]))
        for fail in result.failures:
            logger.warning("route failed for %s: %s (%s)", request.describe(), fail.detail,
                           fail.reason)
            self.messages.append(p.announcer.route_failure(request, fail))
            p.announcer.publish(self.messages[-1])
            await p.record(p.journal.failed(request, None, fail.reason), request.describe())
        # a lone job finishes its request in the journal step that records it
        lone = len(self.jobs) == 1 and not result.failures
        async with watch(request, self.jobs) as self.meter:
            await self._run_jobs([JobRunner(self, i, job).run(finish=lone)
                                  for i, job in enumerate(self.jobs)])
            failed = _failure(self.messages) is not None
            if self.meter is not None and not failed:
                self.meter.finish()
        return lone and not failed

    async def _run_jobs(self, runs: list[Coroutine[Any, Any, list[Message]]]) -> None:
        """Run the jobs at once; one that crashes becomes an internal_error."""
        outcomes: list[list[Message] | BaseException]
        if len(runs) == 1:  # the common case, without gather's task per job
            try:
                outcomes = [await runs[0]]
            except Exception as err:
                outcomes = [err]
        else:
            outcomes = await asyncio.gather(*runs, return_exceptions=True)
        for job, out in zip(self.jobs, outcomes, strict=True):
            if isinstance(out, BaseException):
                self.messages.append(self.pipeline.internal(self.request, job, out))
            else:
                self.messages.extend(out)

    async def _end(self, *, started: bool, journaled: bool = False) -> None:
        """Record the request finished and give a waiting requester its answer."""
        p, request = self.pipeline, self.request
        if not journaled:
            await p.record(p.journal.finished(request), request.describe())
        reply = request.reply
        # a request that could not start gets its failure even if it asked only for the ack
        if reply is not None and (reply.wants_final or not started) and self.messages:
            await reply.send(messages.combine(self.messages, request.subject))
        elif reply is not None and reply.wants_final and started:  # (resumed: every job
            # was announced before the stop) nothing more to say: the request is done
            await reply.send(messages.ack(request, [u.url for j in self.jobs
                                                    for u in j.uploads]))

    async def _client_gone(self) -> None:
        """The requester gave up: the jobs not done fail with ``client_gone``, and the
        request is finished in the journal (durable or not: it is not resumed)."""
        p, request = self.pipeline, self.request
        logger.warning("abandoned %s: %s", request.describe(), self.gone)
        p.stats.inc(stats.REQUESTS, input=request.origin, outcome="failed",
                    reason=Reason.CLIENT_GONE)
        await self._fail_left(Reason.CLIENT_GONE, lambda job: Rejection(
            Reason.CLIENT_GONE, f"abandoned: {self.gone}", request.origin,
            subject=request.subject, uri=request.files[0].uri,
            destination=job.uploads[0].url if job else None, metadata=request.metadata),
            record_request=True)

    async def _cut_off(self) -> None:
        """A stop cut the request off: fail (and answer) only the jobs not yet done."""
        p, request = self.pipeline, self.request
        p.stats.inc(stats.REQUESTS, input=request.origin, outcome="abandoned")
        if p.durable:
            await p.defer(request)
            return
        await self._fail_left(Reason.SHUTDOWN, lambda job: shutdown(
            request, "the daemon stopped before this request finished"
                     + (f" ({job.target or 'direct'})" if job else "")),
            record_request=False)

    async def _fail_left(self, reason: Reason, failure: Callable[[Job | None], Rejection],
                         *, record_request: bool) -> None:
        """Announce a failure for each job not done (or one for the request when none
        started), record them, then end the request; ``record_request``: record the
        request's failure in the journal when no job started."""
        p, request = self.pipeline, self.request
        self.messages = [m for i in sorted(self.done) for m in self.done[i]]
        left: list[Job | None] = [job for i, job in enumerate(self.jobs) if i not in self.done]
        for job in left or [None]:
            message = p.announcer.rejection(failure(job))
            p.announcer.publish(message)
            self.messages.append(message)
            if job is not None or record_request:
                await p.record(p.journal.failed(request, job, reason), request.describe())
        await self._end(started=True)


class JobRunner:
    """One job of a request: its objects locked, its uploads, its announcement."""

    def __init__(self, run: RequestRun, index: int, job: Job) -> None:
        self.request_run = run
        self.pipeline = run.pipeline
        self.index = index
        self.job = job

    async def run(self, *, finish: bool = False, recovered: bool = False) -> list[Message]:
        """Upload and announce (``finish``: the request's only job)."""
        keys = sorted({(self.job.endpoint, u.bucket, u.key) for u in self.job.uploads})
        async with contextlib.AsyncExitStack() as stack:
            # one upload per object at a time (locks in a fixed order: no deadlock)
            for key in keys:
                await stack.enter_async_context(self.pipeline.object_lock(key))
            results = await self._transfer(recovered=recovered)
            # recorded (landed) before the next upload of these objects may look
            return await self._announce(results, finish=finish)

    async def resume(self, record: JobRecord) -> list[Message]:
        """Continue a job recovered from the journal from the state it reached."""
        if record.state == State.ANNOUNCED:
            self.request_run.done[self.index] = []
            return []
        if record.state == State.UPLOADED:  # landed before the stop: announce it now
            return await self._announce(record.results)
        return await self.run(recovered=True)

    async def _transfer(self, *, recovered: bool) -> tuple[UploadResult, ...]:
        """Upload what has not landed yet; a file that already landed at its object is
        answered without a transfer once its content and the store confirm it (unless the
        target says ``overwrite: always`` or the request asks to overwrite)."""
        p, job = self.pipeline, self.job
        lookup = self.request_run.routing.reuse_allowed(job)
        # one journal step: what landed at these objects before, and "transferring"
        landed = await p.record(p.journal.begin(job, lookup), job.describe()) or {}
        progress = (JobProgress(p.journal, job, p.record, recovered=recovered,
                                run=self.request_run) if p.durable else None)
        deadline = job.request.accepted_at + self.request_run.routing.max_age
        return await self.request_run.engine.upload_all(
            job.uploads, job.endpoint, deadline=deadline, what=job.describe(),
            progress=progress, landed=landed, meter=self.request_run.meter,
            look_first=job.request.redelivered)

    async def _announce(self, results: tuple[UploadResult, ...], *, finish: bool = False
                        ) -> list[Message]:
        """Announce the job's outcome and record it (``finish``: the request's only job,
        finished in the same journal step)."""
        p, job = self.pipeline, self.job
        reader = job.request.reply  # None first: a Protocol isinstance is not cheap
        if reader is not None and isinstance(reader, ResultReader):
            reader.results(job, results)
        failed = [r for r in results if not r.ok]
        if failed:
            out = [p.announcer.upload_failure(job, r) for r in failed]
            for m in out:
                p.announcer.publish(m)
            await p.record(p.journal.failed(job.request, job,
                                            failed[0].reason or Reason.UPLOAD_FAILED),
                           job.describe())
        else:  # published first: a crash before the record repeats it, never loses it
            landed = time.time() - job.request.accepted_at
            for _ in results:
                p.stats.observe(stats.TOTAL_SECONDS, landed, endpoint=job.endpoint)
            out = [messages.completion(job, results, p.access.get(job.endpoint))]
            await p.announcer.sent(out[0])
            await p.record(p.journal.concluded(job, results, finish=finish), job.describe())
            logger.debug("announced %s on %s", job.describe(), job.publish_topic)
        self.request_run.done[self.index] = out
        return out


def _failure(sent: Sequence[Message]) -> str | None:
    """The reason of the first failure announced (None: none was)."""
    for m in sent:
        if m.type == messages.FAILURE_TYPE:
            return str(m.data.get("reason") or Reason.UPLOAD_FAILED)
    return None


__all__ = ["JobProgress", "JobRunner", "Pipeline", "Recorder", "RequestRun", "shutdown"]
