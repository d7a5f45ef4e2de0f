"""The daemon: wires receive -> journal -> route -> transfer -> announce.

Bounded everywhere: a queue between the receivers and the dispatcher, a limit on
requests in flight, and per-endpoint upload slots.  SIGINT/SIGTERM stop intake and let
work in progress finish for ``daemon.shutdown_grace`` seconds; whatever is left is
answered and announced as a ``shutdown`` failure, never dropped in silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any

from posttroll.message import Message

from . import announce, logsafe
from ._startup import StartupSignals
from .announce import Announcer
from .config import Config
from .errors import Reason, SetupError, UnrecordableError
from .journal import JobRecord, Journal, MemoryJournal, State
from .models import Job, Rejection, Request, Stat, Upload, UploadResult
from .receive import Limits, RequestServer, SubscribeReceiver
from .route import Router
from .sqlite_journal import SQLiteJournal
from .transfer import TransferEngine

logger = logging.getLogger(__name__)

#: pub-sub message types that are never requests, dropped with a debug line: heartbeats,
#: and trollpush's own announcements (refusing those loudly would feed a loop when a
#: daemon hears its own publisher)
QUIET_TYPES = frozenset({"beat", announce.FAILURE_TYPE, announce.ACK_TYPE,
                         announce.MULTIPLE_TYPE})


#: after a restart, how long subscribers get to reconnect before recovered completions
#: are published (a PUB socket drops what it sends before they have re-subscribed)
RECOVERY_SETTLE = 1.0


def _shutdown(request: Request, detail: str) -> Rejection:
    return Rejection(Reason.SHUTDOWN, detail, request.origin, subject=request.subject,
                     uri=request.files[0].uri, metadata=request.metadata, reply=request.reply)


def make_journal(config: Config) -> Journal:
    """The configured journal: SQLite at ``journal.path``, or memory for ``path: memory``."""
    keep = config.journal.keep_landed_days * 86400
    if config.journal.path is None:
        return MemoryJournal(keep_landed_seconds=keep)
    return SQLiteJournal(config.journal.path, keep_landed_seconds=keep)


class _ObjectLock:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0  # holders and waiters


#: runs one journal step of an accepted request: a failure is logged, not raised
Recorder = Callable[[Awaitable[None], str], Awaitable[None]]


class _JobProgress:
    """The engine's view of the journal for one job: where multipart progress goes.

    Progress that cannot be recorded (a full disk) costs only a resume: the upload goes
    on, and a restart starts it afresh."""

    def __init__(self, journal: Journal, job: Job, record: Recorder, *,
                 recovered: bool = False) -> None:
        self._journal = journal
        self._job = job
        self._record = record
        self.recovered = recovered

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


class Daemon:
    """One trollpush daemon; ``await run()`` until ``stop()`` or a signal."""

    def __init__(self, config: Config, *, journal: Journal | None = None) -> None:
        self.config = config
        self.journal: Journal = journal if journal is not None else make_journal(config)
        #: a durable journal keeps what shutdown cuts off, to finish at the next start
        self.durable = not isinstance(self.journal, MemoryJournal)
        self._overwrite = {t.name: t.overwrite for t in config.targets}
        self._limits = Limits(config.daemon.max_request_bytes, config.daemon.allowed_roots,
                              config.daemon.file_timeout)
        self._objects: dict[tuple[str, str, str], _ObjectLock] = {}
        self._resuming: set[str] = set()  # ids of requests recovered from the journal
        self._feeders: set[asyncio.Task[None]] = set()
        self.router = Router(config)
        self.transfer = TransferEngine(config.endpoints, warm_buckets=config.warm_buckets(),
                                       roots=config.daemon.allowed_roots,
                                       file_timeout=config.daemon.file_timeout)
        self.announcer = Announcer(config.publish)
        self.requests: RequestServer | None = None
        self.subscriber: SubscribeReceiver | None = None
        self.counts: Counter[str] = Counter()
        #: the last journal write failed: new requests are refused until one succeeds
        self.journal_down = False
        self.ready = threading.Event()
        self._stop_requested = threading.Event()
        self._queue: asyncio.Queue[Request | Rejection] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fatal: BaseException | None = None

    def __repr__(self) -> str:
        queued = self._queue.qsize() if self._queue else 0
        return (f"<Daemon queued={queued} in_flight={len(self._tasks)} {dict(self.counts)} "
                f"{self.transfer!r}>")

    def stop(self) -> None:
        """Ask the daemon to shut down; safe from any thread, before or after run()."""
        self._stop_requested.set()
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile: nothing to stop
                loop.call_soon_threadsafe(stopping.set)

    def fatal(self, what: str, err: BaseException) -> None:
        """An intake died: stop the daemon loudly rather than run on deaf."""
        logger.error("%s stopped working, shutting down: %s", what, err, exc_info=err)
        self._fatal = err
        self.stop()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        if self._stop_requested.is_set():
            self._stopping.set()
        self._queue = asyncio.Queue(self.config.daemon.queue_size)
        self._slots = asyncio.Semaphore(self.config.daemon.max_in_flight)
        if self._stopping.is_set():  # a stop during start-up: nothing started, nothing lost
            logger.info("stopped before starting (a stop was asked for during start-up)")
            return
        self._install_signals()
        try:
            await self._start()
            dispatcher = asyncio.create_task(self._dispatch(), name="dispatch")
            self._recover()
            logger.info("trollpush ready: %s", ", ".join(self._inputs()) or "no inputs")
            self.ready.set()
            await self._stopping.wait()
            logger.info("shutting down: intake stopped, %d request(s) queued, %d in flight",
                        self._queue.qsize(), len(self._tasks))
            await self._stop_intake()
            await self._drain(dispatcher)
        finally:
            await self._close()
            self.ready.clear()
            t = self.transfer
            logger.info("stopped: %s; uploads: %d completed, %d failed, %d retried",
                        ", ".join(f"{v} {k}" for k, v in sorted(self.counts.items()))
                        or "no requests", t.completed, t.failed, t.retried)
        if self._fatal is not None:
            raise SetupError(f"intake failed: {self._fatal}") from self._fatal

    def _inputs(self) -> list[str]:
        out = []
        if self.requests:
            out.append(f"requests on {self.requests.address}")
        if self.config.subscribe:
            out.append(f"subscribed to {list(self.config.subscribe.topics)}")
        return out

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        assert self._loop is not None and self._stopping is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._loop.add_signal_handler(sig, self._stopping.set)
        # SIGHUP is reserved for a config reload; until then it must not kill the daemon.
        self._loop.add_signal_handler(signal.SIGHUP, lambda: logger.info("SIGHUP ignored"))

    async def _start(self) -> None:
        try:
            await self.journal.open()
        except Exception as err:
            raise SetupError(f"journal: {err}") from err
        await self.transfer.start()
        await asyncio.to_thread(self.announcer.start)
        if self.config.requests is not None:
            self.requests = RequestServer(self.config.requests.address, self.submit,
                                          on_fatal=self.fatal, limits=self._limits,
                                          mode=self.config.requests.mode,
                                          group=self.config.requests.group)
            self.requests.start()
        if self.config.subscribe is not None:
            assert self._loop is not None
            self.subscriber = SubscribeReceiver(self.config.subscribe.settings, self.submit,
                                                self._loop, on_fatal=self.fatal,
                                                limits=self._limits)
            await asyncio.to_thread(self.subscriber.start)

    async def _stop_intake(self) -> None:
        if self.requests is not None:
            await self.requests.stop()
        if self.subscriber is not None:
            await asyncio.to_thread(self.subscriber.stop)

    async def _drain(self, dispatcher: asyncio.Task[None]) -> None:
        """Finish queued and running work within the grace period; fail the rest loudly."""
        assert self._queue is not None
        grace = self.config.daemon.shutdown_grace
        try:
            async with asyncio.timeout(grace):
                await self._queue.join()
                while self._tasks:
                    await asyncio.gather(*self._tasks, return_exceptions=True)
        except TimeoutError:
            logger.warning("grace period of %g s over: cancelling %d running and %d waiting "
                           "request(s)", grace, len(self._tasks),
                           self._queue.qsize())
        for feeder in list(self._feeders):  # recovered requests not yet queued stay journaled
            feeder.cancel()
        dispatcher.cancel()
        await asyncio.gather(dispatcher, *self._feeders, return_exceptions=True)
        left = [item for intake in (self.requests, self.subscriber) if intake is not None
                for item in intake.undelivered]
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
        for item in left:
            if isinstance(item, Request):
                self.counts["abandoned"] += 1
                if self.durable:  # journaled on receipt: the next start does it
                    await self._defer(item)
                    continue
                item = _shutdown(item, "the daemon stopped before starting this request")
            await self._refuse(item)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _close(self) -> None:
        """Release everything; one failing step must not skip the others."""
        steps: list[tuple[str, Callable[[], Awaitable[None] | None]]] = [
            ("intake", self._stop_intake), ("transfer", self.transfer.close),
            ("publisher", self.announcer.stop)]
        if self.requests is not None:
            steps.append(("request socket", self.requests.close))
        steps.append(("journal", self.journal.close))
        for name, step in steps:
            try:
                result = step()
                if result is not None:
                    await result
            except Exception:
                logger.exception("shutdown: closing the %s failed", name)

    # --- recovery -----------------------------------------------------------------------

    def _recover(self) -> None:
        """Queue what the journal holds from an earlier run (crash or stop): each request
        continues from its recorded state instead of starting over."""
        pending = self.journal.unfinished()
        if not pending:
            return
        logger.info("resuming %d request(s) from the journal", len(pending))
        self._resuming.update(r.id for r in pending)
        self.counts["resumed"] += len(pending)

        async def feed() -> None:
            assert self._queue is not None
            if self.config.publish is not None:
                await asyncio.sleep(RECOVERY_SETTLE)
            for request in pending:
                await self._queue.put(request)

        task = asyncio.create_task(feed(), name="recover")
        self._feeders.add(task)
        task.add_done_callback(self._feeders.discard)

    async def _resume_job(self, record: JobRecord, index: int,
                          done: dict[int, list[Message]]) -> list[Message]:
        if record.state == State.ANNOUNCED:
            done[index] = []
            return []
        if record.state == State.UPLOADED:  # landed before the stop: announce it now
            return await self._conclude(record.job, index, done, record.results)
        return await self._run_job(record.job, index, done, recovered=True)

    # --- intake -------------------------------------------------------------------------

    async def submit(self, item: Request | Rejection) -> None:
        """Record a request in the journal (it is accepted from here on: on receipt for
        pub-sub, before any reply for REQ/REP), then queue it; waits while the queue is
        full."""
        assert self._queue is not None
        if isinstance(item, Request):
            try:
                await self.journal.accepted(item)
                self.counts["accepted"] += 1
                self._journal_ok()
            except UnrecordableError as err:
                item = Rejection(Reason.BAD_MESSAGE, str(err), item.origin,
                                 subject=item.subject, uri=item.files[0].uri,
                                 reply=item.reply)
            except Exception as err:  # a full disk, an I/O error: refused, nothing kept
                self._journal_failed(err, item.describe())
                item = Rejection(Reason.JOURNAL_UNAVAILABLE,
                                 f"the journal cannot be written, the request is not "
                                 f"accepted ({err})", item.origin, subject=item.subject,
                                 uri=item.files[0].uri, metadata=item.metadata,
                                 reply=item.reply)
        await self._queue.put(item)

    async def _record[R](self, step: Awaitable[R], what: str) -> R | None:
        """A journal step of a request already accepted.  If the journal cannot be
        written, the request goes on: its outcome stays the one it has (one outcome per
        request, never a completion and an internal error), and the journal keeps the
        older record, which at worst repeats work after a restart."""
        try:
            result = await step
        except Exception as err:
            self._journal_failed(err, what)
            return None
        self._journal_ok()
        return result

    def _journal_failed(self, err: BaseException, what: str) -> None:
        self.counts["journal_errors"] += 1
        if not self.journal_down:
            self.journal_down = True
            logger.error("the journal cannot be written (%s): new requests are refused "
                         "(journal_unavailable) until it can; work in progress goes on",
                         err, exc_info=err)
        else:
            logger.warning("journal still unavailable (%s): %s", what, err)

    def _journal_ok(self) -> None:
        if self.journal_down:
            self.journal_down = False
            logger.warning("the journal can be written again: accepting requests")

    async def _dispatch(self) -> None:
        assert self._queue is not None and self._slots is not None
        while True:
            await self._slots.acquire()  # before taking an item: nothing is held here
            try:
                item = await self._queue.get()
            except BaseException:
                self._slots.release()
                raise
            try:
                if isinstance(item, Rejection):
                    self._slots.release()
                    await self._refuse(item)
                    continue
                task = asyncio.create_task(self._process(item), name=f"request-{item.id}")
                self._tasks.add(task)
                task.add_done_callback(self._done)
            except Exception:
                logger.exception("dispatch failed for %r", item)
            finally:
                self._queue.task_done()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        assert self._slots is not None
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            logger.error("request task crashed", exc_info=task.exception())

    async def _refuse(self, item: Rejection) -> None:
        if item.origin == "subscribe" and item.message_type in QUIET_TYPES:
            logger.debug("ignored %s message on %s", item.message_type, item.subject)
            return
        if item.reason != Reason.SHUTDOWN:  # shutdown leftovers are counted as abandoned
            self.counts["rejected"] += 1
        logger.warning("rejected %s message%s: %s (%s)", item.origin,
                       f" {item.subject}" if item.subject else "", item.detail, item.reason)
        message = self.announcer.rejection(item)
        self.announcer.publish(message)
        if item.reply is not None:
            await item.reply.send(message)

    # --- one request ----------------------------------------------------------------------

    async def _process(self, request: Request) -> None:
        """Accept, route, transfer and announce one request; it always ends answered."""
        jobs: tuple[Job, ...] = ()
        done: dict[int, list[Message]] = {}
        messages: list[Message] = []
        journaled = False  # finished in the journal already
        try:
            records = self.journal.jobs(request) if request.id in self._resuming else []
            self._resuming.discard(request.id)
            if records:  # recovered: continue the jobs as recorded (the config may differ)
                jobs = tuple(r.job for r in records)
                messages += await self._jobs(request, jobs, [
                    self._resume_job(r, i, done) for i, r in enumerate(records)])
                return await self._settle(request, messages, jobs_started=True)
            result = self.router.route(request)
            jobs = result.jobs
            reply = request.reply
            if reply is not None and reply.wants_ack and jobs:
                await reply.send(announce.ack(request, [u.url for j in jobs for u in j.uploads]))
            for fail in result.failures:
                logger.warning("route failed for %s: %s (%s)", request.describe(), fail.detail,
                               fail.reason)
                messages.append(self.announcer.route_failure(request, fail))
                self.announcer.publish(messages[-1])
                await self._record(self.journal.failed(request, None, fail.reason),
                                   request.describe())
            # a lone job finishes its request in the journal step that records it
            lone = len(jobs) == 1 and not result.failures
            messages += await self._jobs(request, jobs, [
                self._run_job(job, i, done, finish=lone) for i, job in enumerate(jobs)])
            journaled = lone and not _failed(messages)
        except asyncio.CancelledError:
            await self._abandon(request, jobs, done)
            raise
        except Exception as err:
            messages.extend(self._internal(request, None, err))
        await self._settle(request, messages, jobs_started=bool(jobs), journaled=journaled)

    async def _jobs(self, request: Request, jobs: Sequence[Job],
                    runs: list[Coroutine[Any, Any, list[Message]]]) -> list[Message]:
        """Run a request's jobs at once; one that crashes becomes an internal_error."""
        outcomes: list[list[Message] | BaseException]
        if len(runs) == 1:  # the common case, without gather's task per job
            try:
                outcomes = [await runs[0]]
            except Exception as err:
                outcomes = [err]
        else:
            outcomes = await asyncio.gather(*runs, return_exceptions=True)
        return [m for job, out in zip(jobs, outcomes, strict=True)
                for m in (self._internal(request, job, out)
                          if isinstance(out, BaseException) else out)]

    async def _settle(self, request: Request, messages: Sequence[Message], *,
                      jobs_started: bool, journaled: bool = False) -> None:
        self.counts["failed" if _failed(messages) else "completed"] += 1
        await self._finish(request, messages, jobs_started=jobs_started, journaled=journaled)

    async def _finish(self, request: Request, messages: Sequence[Message], *,
                      jobs_started: bool, journaled: bool = False) -> None:
        if not journaled:
            await self._record(self.journal.finished(request), request.describe())
        reply = request.reply
        # a request that could not start gets its failure even if it asked only for the ack
        if reply is not None and (reply.wants_final or not jobs_started) and messages:
            await reply.send(announce.combine(messages, request.subject))

    def _internal(self, request: Request, job: Job | None, err: BaseException) -> list[Message]:
        """A bug or a broken dependency (the journal, say): announced, never silent."""
        logger.error("internal error on %s", job.describe() if job else request.describe(),
                     exc_info=err)
        message = self.announcer.rejection(Rejection(
            Reason.INTERNAL, f"internal error: {type(err).__name__}: {err}", request.origin,
            subject=request.subject, uri=request.files[0].uri, metadata=request.metadata))
        self.announcer.publish(message)
        return [message]

    async def _run_job(self, job: Job, index: int, done: dict[int, list[Message]], *,
                       finish: bool = False, recovered: bool = False) -> list[Message]:
        keys = sorted({(job.endpoint, u.bucket, u.key) for u in job.uploads})
        async with contextlib.AsyncExitStack() as stack:
            # one upload per object at a time (locks in a fixed order: no deadlock)
            for key in keys:
                await stack.enter_async_context(self._object_lock(key))
            results = await self._transfer(job, recovered=recovered)
            # recorded (landed) before the next upload of these objects may look
            return await self._conclude(job, index, done, results, finish=finish)

    @contextlib.asynccontextmanager
    async def _object_lock(self, key: tuple[str, str, str]) -> AsyncIterator[None]:
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

    async def _transfer(self, job: Job, *, recovered: bool = False
                        ) -> tuple[UploadResult, ...]:
        """Upload what has not landed yet; a file that already landed at its object is
        answered without a transfer once its content and the store confirm it (unless the
        target says ``overwrite: always`` or the request asks to overwrite)."""
        lookup = (self._overwrite.get(job.target or "", "changed") != "always"
                  and not job.request.overwrite)
        # one journal step: what landed at these objects before, and "transferring"
        landed = await self._record(self.journal.begin(job, lookup), job.describe()) or {}
        progress = (_JobProgress(self.journal, job, self._record, recovered=recovered)
                    if self.durable else None)
        # what failed in a way worth waiting out goes again, until max_age (wall clock)
        deadline = job.request.accepted_at + self.config.daemon.max_age
        return await self.transfer.upload_all(job.uploads, job.endpoint, deadline=deadline,
                                              what=job.describe(), progress=progress,
                                              landed=landed)

    async def _conclude(self, job: Job, index: int, done: dict[int, list[Message]],
                        results: tuple[UploadResult, ...], *, finish: bool = False
                        ) -> list[Message]:
        """Announce the job's outcome and record it (``finish``: the request's only job,
        finished in the same journal step)."""
        failed = [r for r in results if not r.ok]
        if failed:
            messages = [self.announcer.upload_failure(job, r) for r in failed]
            for m in messages:
                self.announcer.publish(m)
            await self._record(self.journal.failed(job.request, job,
                                                   failed[0].reason or "upload_failed"),
                               job.describe())
        else:  # published first: a crash before the record repeats it, never loses it
            messages = [announce.completion(job, results)]
            await self.announcer.sent(messages[0])
            await self._record(self.journal.concluded(job, results, finish=finish),
                               job.describe())
            logger.debug("announced %s on %s", job.describe(), job.publish_topic)
        done[index] = messages
        return messages

    async def _defer(self, request: Request) -> None:
        """Shutdown cut a journaled request off: the next start finishes it.  Only a
        waiting requester is told (pub-sub gets the completion later, not a failure)."""
        logger.info("left in the journal for the next start: %s", request.describe())
        if request.reply is not None:
            await request.reply.send(self.announcer.rejection(_shutdown(
                request, "the daemon stopped; the request stays in its journal and is "
                         "finished at the next start")))

    async def _abandon(self, request: Request, jobs: Sequence[Job],
                       done: dict[int, list[Message]]) -> None:
        """Shutdown cut the request off: fail (and answer) only the jobs not yet done."""
        self.counts["abandoned"] += 1
        if self.durable:
            await self._defer(request)
            return
        messages = [m for i in sorted(done) for m in done[i]]
        cut: list[Job | None] = [job for i, job in enumerate(jobs) if i not in done] or [None]
        for job in cut:
            where = f" ({job.target or 'direct'})" if job else ""
            message = self.announcer.rejection(_shutdown(
                request, f"the daemon stopped before this request finished{where}"))
            self.announcer.publish(message)
            messages.append(message)
            if job is not None:
                await self._record(self.journal.failed(request, job, Reason.SHUTDOWN),
                                   request.describe())
        await self._finish(request, messages, jobs_started=True)


def _failed(messages: Sequence[Message]) -> bool:
    return any(m.type == announce.FAILURE_TYPE for m in messages)


async def run_daemon(config: Config, *, startup: StartupSignals | None = None) -> None:
    """Run a daemon for ``config`` until SIGINT/SIGTERM (``startup``: the signal handlers
    that stood in while it started)."""
    daemon = Daemon(config)
    if startup is not None:
        startup.attach(daemon.stop)
    await daemon.run()


def serve(config: Config, *, startup: StartupSignals | None = None) -> None:
    """Run a daemon for ``config`` on the event loop it asks for (``daemon.event_loop``)."""
    logsafe.install()  # one record, one line, whoever set up logging
    if config.daemon.event_loop == "uvloop":
        import uvloop

        uvloop.run(run_daemon(config, startup=startup))
    else:
        asyncio.run(run_daemon(config, startup=startup))
