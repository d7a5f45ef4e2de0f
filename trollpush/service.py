"""The service: lifecycle around the pipeline.

Start the journal, engine, publisher and inputs; accept (journal, then queue) what the
inputs hand over; dispatch queued requests to the pipeline within ``max_in_flight``; on
SIGINT/SIGTERM stop intake and let work in progress finish for ``daemon.shutdown_grace``
seconds.  Whatever is left is answered and announced as a ``shutdown`` failure, or kept
in a durable journal for the next start, never dropped in silence.  ``build_service``
wires the real collaborators; tests may pass fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from . import logsafe, stats
from . import status as status_
from ._startup import StartupSignals
from .access import accesses
from .announce import Announcer
from .config import Config
from .errors import Reason, SetupError, UnrecordableError
from .inputs import REGISTRY, Input, InputFactory, build_inputs, offer
from .journal import Journal, MemoryJournal
from .messages import Limits
from .models import Rejection, Request
from .pipeline import Pipeline, shutdown
from .recovered import hand_over
from .reload import Reloader
from .route import Routing
from .sdnotify import SystemdNotify
from .stats import Stats

if TYPE_CHECKING:
    from .transfer import TransferEngine

logger = logging.getLogger(__name__)

#: after a restart, how long subscribers get to reconnect before recovered completions
#: are published (a PUB socket drops what it sends before they have re-subscribed)
RECOVERY_SETTLE = 1.0


@dataclass
class _Bound:
    """What one run of a service binds to its event loop (a service stopped by a signal
    may be run again, on another loop)."""

    loop: asyncio.AbstractEventLoop
    stopping: asyncio.Event
    queue: asyncio.Queue[Request | Rejection]
    slots: asyncio.Semaphore


class Observer(Protocol):
    """Told of a run's lifecycle, on the event loop (``sdnotify.SystemdNotify``): before
    start-up, once ready (inputs bound, pools warm), when the drain begins, and at the
    end (also after a failed start).  What it raises is logged, never propagated."""

    def starting(self, service: Service) -> None: ...
    def started(self, service: Service) -> None: ...
    def stopping(self, service: Service) -> None: ...
    def stopped(self, service: Service) -> None: ...


# shape: the lifecycle, plus the few seams a reload applies through (swap, build_inputs,
# add_input, requeue); the reload's steps themselves are in reload.py
class Service:
    """One trollpush daemon; ``await run()`` until ``stop()`` or a signal."""

    def __init__(self, config: Config, *, journal: Journal, engine: TransferEngine,
                 announcer: Announcer, inputs: Sequence[InputFactory] = REGISTRY,
                 registry: Stats | None = None, observers: Sequence[Observer] = ()) -> None:
        self.config = config
        self.stats = registry if registry is not None else Stats()
        self.journal = journal
        self.transfer = engine
        self.announcer = announcer
        self.limits = _limits(config)
        self.pipeline = Pipeline(journal=journal, engine=engine.view(), announcer=announcer,
                                 routing=Routing.from_config(config), registry=self.stats,
                                 durable=not isinstance(journal, MemoryJournal),
                                 access=accesses(config.endpoints))
        self._factories = tuple(inputs)
        self._observers = tuple(observers)
        self.inputs: list[Input] = []
        self.ready = threading.Event()
        self._stop_requested = threading.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._feeders: set[asyncio.Task[None]] = set()
        self._fatal: BaseException | None = None
        self._on: _Bound | None = None  # what the current run bound to its loop
        self._pending: list[Request] = []  # recovered from the journal, to be queued
        #: SIGHUP and daemon.watch_config re-read the config (see reload.py)
        self.reloader = Reloader(self)
        #: rates over the last minute and the endpoints' failures (``trollpush status``)
        self.activity = status_.Activity(self.stats, lambda: self.config.endpoints)
        _follow(self)

    def __repr__(self) -> str:
        queued = self._on.queue.qsize() if self._on is not None else 0
        return (f"<Service queued={queued} in_flight={len(self._tasks)} "
                f"{dict(self.counts)} {self.transfer!r}>")

    @property
    def journal_down(self) -> bool:
        """The last journal write failed: new requests are refused until one succeeds."""
        return self.pipeline.record.down

    @property
    def counts(self) -> Counter[str]:
        """Requests by outcome (``accepted``, ``rejected``, ``completed``, ...) and journal
        errors: a snapshot of the stats, for the stop summary and tests."""
        out = self.stats.outcomes()
        out["journal_errors"] += self.stats.count(stats.JOURNAL_ERRORS)
        return +out  # (no zero entries, as before)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the service runs on (inputs reading in threads hand over to it)."""
        return self._running().loop

    def status(self) -> dict[str, Any]:
        """The daemon's status now (``trollpush status``, ``GET /status``)."""
        return status_.snapshot(self)

    def input(self, name: str) -> Any:
        """The running input called ``name``, or None (for tools and tests)."""
        return next((i for i in self.inputs if i.name == name), None)

    # --- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the daemon to shut down; safe from any thread, before or after run()."""
        self._stop_requested.set()
        on = self._on
        if on is not None and not on.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile: nothing to stop
                on.loop.call_soon_threadsafe(on.stopping.set)

    def abandon(self, request: Request, detail: str) -> None:
        """The requester hung up (see ``Intake.abandon``)."""
        self.pipeline.abandon(request, detail)

    def fatal(self, what: str, err: BaseException) -> None:
        """An input died: stop the daemon loudly rather than run on deaf."""
        logger.error("%s stopped working, shutting down: %s", what, err, exc_info=err)
        self._fatal = err
        self.stop()

    async def run(self) -> None:
        self._on = on = _Bound(asyncio.get_running_loop(), asyncio.Event(),
                               asyncio.Queue(self.config.daemon.queue_size),
                               asyncio.Semaphore(self.config.daemon.max_in_flight))
        if self._stop_requested.is_set():  # a stop during start-up: nothing started or lost
            logger.info("stopped before starting (a stop was asked for during start-up)")
            return
        self._install_signals(on)
        try:
            self._tell(lambda o: o.starting(self))
            await self._start()
            dispatcher = asyncio.create_task(self._dispatch(on), name="dispatch")
            self._recover(on)
            logger.info("trollpush ready: %s",
                        ", ".join(i.describe() for i in self.inputs) or "no inputs")
            self.reloader.start()  # before ready: a change right after it is seen
            self.ready.set()
            self._tell(lambda o: o.started(self))
            await on.stopping.wait()
            self._tell(lambda o: o.stopping(self))
            await self.reloader.close()
            logger.info("shutting down: intake stopped, %d request(s) queued, %d in flight",
                        on.queue.qsize(), len(self._tasks))
            await self._stop_intake()
            await self._drain(on, dispatcher)
        finally:
            await self._close()
            self.ready.clear()
            self._tell(lambda o: o.stopped(self))
            t = self.transfer
            logger.info("stopped: %s; uploads: %d completed, %d failed, %d retried",
                        stats.listed(self.counts) or "no requests", t.completed, t.failed,
                        t.retried)
        if self._fatal is not None:
            raise SetupError(f"intake failed: {self._fatal}") from self._fatal

    def tell(self, event: str) -> None:
        """An optional lifecycle event (``reloading``, ``reloaded``): observers that
        have no method of that name are skipped."""
        self._tell(lambda o: getattr(o, event, lambda service: None)(self))

    def _tell(self, event: Callable[[Observer], None]) -> None:
        for each in self._observers:
            try:
                event(each)
            except Exception:
                logger.exception("lifecycle observer %r failed", each)

    def _running(self) -> _Bound:
        if self._on is None:
            raise RuntimeError("the service is not running")
        return self._on

    def _install_signals(self, on: _Bound) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            on.loop.add_signal_handler(sig, on.stopping.set)
        on.loop.add_signal_handler(signal.SIGHUP, self.reloader.request, "SIGHUP")

    async def _start(self) -> None:
        try:
            await self.journal.open()
        except Exception as err:
            raise SetupError(f"journal: {err}") from err
        await self.transfer.start()
        await asyncio.to_thread(self.announcer.start)
        # what an earlier run left, read before any input takes a request: an input
        # may adopt some of it (see inputs.offer), _recover queues the rest
        self._pending = self.journal.unfinished()
        for each in build_inputs(self.config, self, self._factories):
            self._pending = offer(each, self._pending)
            self.add_input(each, carry=False)
            await each.start()
        self.activity.start()

    # --- a reload's seams (the steps: reload.py) -------------------------------------------

    async def reload(self) -> bool:
        """Re-read the config file and apply it, as SIGHUP does (on the service's loop);
        whether it was applied (False: refused, the running config kept)."""
        return await self.reloader.reload("requested")

    def swap(self, config: Config) -> set[asyncio.Task[None]]:
        """Make ``config`` the one requests run under from now on: routing, limits (of
        inputs started from now on), what completions say of each endpoint, and the
        engine's endpoints as they are now.  Synchronous: between two requests.  The
        requests running now keep what they started with; they are returned."""
        self.config = config
        self.limits = _limits(config)
        self.pipeline.routing = Routing.from_config(config)
        self.pipeline.access = accesses(config.endpoints)
        self.pipeline.engine = self.transfer.view()
        return set(self._tasks)

    async def build_inputs(self, config: Config, names: Collection[str]) -> list[Input]:
        """The inputs called ``names`` that ``config`` has, not started."""
        built = build_inputs(config, self, self._factories)
        for each in built:
            if each.name not in names:  # never started: closing costs nothing
                await each.close()
        return [each for each in built if each.name in names]

    def add_input(self, each: Input, *, carry: bool = True) -> None:
        """A started input joins those the service runs (``carry``: it replaces one
        whose count of messages received its own goes on from)."""
        # (labelled as its requests are: by their origin, the input's name but for one)
        self.stats.follow(stats.RECEIVED, _received(each), carry=carry,
                          input=getattr(each, "origin", each.name))
        self.inputs.append(each)

    async def requeue(self, items: Iterable[Request | Rejection]) -> None:
        """What an input stopped by a reload took but never handed over: queued as it
        is (a Request was journaled when it was taken, a Rejection is answered)."""
        for item in items:
            await self._running().queue.put(item)

    async def _stop_intake(self) -> None:
        for each in self.inputs:
            await each.stop()

    async def _drain(self, on: _Bound, dispatcher: asyncio.Task[None]) -> None:
        """Finish queued and running work within the grace period; the rest is kept for
        the next start (durable journal) or failed loudly."""
        grace = self.config.daemon.shutdown_grace
        try:
            async with asyncio.timeout(grace):
                await on.queue.join()
                while self._tasks:
                    # wait() always yields, so that the done callbacks of tasks that just
                    # finished (_ended takes them out of the set) run; gather() of tasks
                    # already done completes without yielding (Python >= 3.12): it spun
                    await asyncio.wait(set(self._tasks))
        except TimeoutError:
            logger.warning("grace period of %g s over: cancelling %d running and %d waiting "
                           "request(s)", grace, len(self._tasks), on.queue.qsize())
        for feeder in list(self._feeders):  # recovered requests not yet queued stay journaled
            feeder.cancel()
        dispatcher.cancel()
        await asyncio.gather(dispatcher, *self._feeders, return_exceptions=True)
        left = [item for each in self.inputs for item in each.undelivered()]
        while not on.queue.empty():
            left.append(on.queue.get_nowait())
        for item in left:
            if isinstance(item, Request):
                self.stats.inc(stats.REQUESTS, input=item.origin, outcome="abandoned")
                if self.pipeline.durable:  # journaled on receipt: the next start does it
                    await self.pipeline.defer(item)
                    continue
                item = shutdown(item, "the daemon stopped before starting this request")
            await self.pipeline.refuse(item)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _close(self) -> None:
        """Release everything; one failing step must not skip the others."""
        steps: list[tuple[str, Callable[[], Awaitable[None] | None]]] = [
            ("reloader", self.reloader.close), ("intake", self._stop_intake),
            ("transfer", self.transfer.close), ("publisher", self.announcer.stop),
            ("activity", self.activity.stop)]
        steps += [(f"{each.name} input", each.close) for each in self.inputs]
        steps.append(("journal", self.journal.close))
        for name, step in steps:
            try:
                result = step()
                if result is not None:
                    await result
            except Exception:
                logger.exception("shutdown: closing the %s failed", name)

    def _recover(self, on: _Bound) -> None:
        """Queue what the journal holds from an earlier run (crash or stop): each request
        continues from its recorded state instead of starting over."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        logger.info("resuming %d request(s) from the journal", len(pending))
        for request in pending:
            self._resuming(request)

        async def feed() -> None:
            if self.config.publish is not None:
                await asyncio.sleep(RECOVERY_SETTLE)
            for request in pending:
                await on.queue.put(request)

        task = asyncio.create_task(feed(), name="recover")
        self._feeders.add(task)
        task.add_done_callback(self._feeders.discard)

    # --- intake and dispatch --------------------------------------------------------------

    async def resume(self, request: Request) -> None:
        """Queue a request the journal holds already (see ``Intake.resume``)."""
        self._resuming(request)
        await self._running().queue.put(request)

    def _resuming(self, request: Request) -> None:
        """A journaled request goes on from its record (counted ``resumed``)."""
        self.pipeline.resuming.add(request.id)
        self.stats.inc(stats.REQUESTS, input=request.origin, outcome="resumed")

    async def hand_over(self, request: Request, detail: str) -> None:
        """Another instance did a recovered request (see ``Intake.hand_over``)."""
        await hand_over(self.pipeline, request, detail)

    async def submit(self, item: Request | Rejection) -> bool:
        """Record a request in the journal (it is accepted from here on: on receipt for
        pub-sub, before any reply for REQ/REP), then queue it; waits while the queue is
        full.  Whether it was accepted (a Rejection, or a request the journal could not
        take, is queued to be answered as refused)."""
        if isinstance(item, Request):
            try:
                await self.journal.accepted(item)
                self.stats.inc(stats.REQUESTS, input=item.origin, outcome="accepted")
                self.pipeline.record.ok()
            except UnrecordableError as err:
                item = Rejection(Reason.BAD_MESSAGE, str(err), item.origin,
                                 subject=item.subject, uri=item.files[0].uri,
                                 reply=item.reply)
            except Exception as err:  # a full disk, an I/O error: refused, nothing kept
                self.pipeline.record.failed(err, item.describe())
                item = Rejection(Reason.JOURNAL_UNAVAILABLE,
                                 f"the journal cannot be written, the request is not "
                                 f"accepted ({err})", item.origin, subject=item.subject,
                                 uri=item.files[0].uri, metadata=item.metadata,
                                 reply=item.reply)
        await self._running().queue.put(item)
        return isinstance(item, Request)

    async def _dispatch(self, on: _Bound) -> None:
        while True:
            await on.slots.acquire()  # before taking an item: nothing is held here
            try:
                item = await on.queue.get()
            except BaseException:
                on.slots.release()
                raise
            try:
                if isinstance(item, Rejection):
                    on.slots.release()
                    await self.pipeline.refuse(item)
                    continue
                task = asyncio.create_task(self.pipeline.run(item), name=f"request-{item.id}")
                self._tasks.add(task)
                task.add_done_callback(functools.partial(self._ended, on.slots))
            except Exception:
                logger.exception("dispatch failed for %r", item)
            finally:
                on.queue.task_done()

    def _ended(self, slots: asyncio.Semaphore, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        slots.release()
        if not task.cancelled() and task.exception() is not None:
            logger.error("request task crashed", exc_info=task.exception())


def _follow(service: Service) -> None:
    """What the service and its collaborators keep themselves, read when the
    registry is (nothing per request); the series of what comes later, at 0."""
    s, journal, announcer = service.stats, service.journal, service.announcer
    s.set(stats.QUEUED, lambda: service._on.queue.qsize() if service._on else 0)
    s.set(stats.IN_FLIGHT, lambda: len(service._tasks))
    s.set(stats.JOURNAL_BACKLOG, lambda: journal.backlog)
    s.set(stats.JOURNAL_SIZE, lambda: journal.size_bytes)
    s.follow(stats.ANNOUNCEMENTS, lambda: announcer.published, outcome="published")
    s.follow(stats.ANNOUNCEMENTS, lambda: announcer.failed, outcome="failed")
    for outcome in ("applied", "refused"):  # see reload.py
        s.inc(stats.RELOADS, 0, outcome=outcome)
    s.set(stats.BUILD_INFO, 1, **_versions())


def _limits(config: Config) -> Limits:
    d = config.daemon
    return Limits(d.max_request_bytes, d.allowed_roots, d.file_timeout)


def _received(each: Input) -> Callable[[], float]:
    return lambda: each.received


def _versions() -> dict[str, str]:
    """What runs: trollpush, Python and aiobotocore (for the build_info series)."""
    found = status_.versions()
    return {k: found[k] for k in ("version", "python", "aiobotocore")}


def build_service(config: Config, *, journal: Journal | None = None,
                  inputs: Sequence[InputFactory] = REGISTRY,
                  registry: Stats | None = None, observers: Sequence[Observer] = ()
                  ) -> Service:
    """The service with its real collaborators (``journal``: one to use instead of the
    configured one; ``inputs``: other input factories; ``observers``: of its lifecycle;
    for tests and tools)."""
    from .journal import make_journal
    from .transfer import TransferEngine

    registry = registry if registry is not None else Stats()
    engine = TransferEngine(config.endpoints, warm_buckets=config.warm_buckets(),
                            roots=config.daemon.allowed_roots,
                            file_timeout=config.daemon.file_timeout, stats=registry)
    return Service(config, journal=journal if journal is not None else make_journal(config.journal),
                   engine=engine, announcer=Announcer(config.publish),
                   inputs=inputs, registry=registry, observers=observers)


async def run_daemon(config: Config, *, startup: StartupSignals | None = None) -> None:
    """Run a daemon for ``config`` until SIGINT/SIGTERM (``startup``: the signal handlers
    that stood in while it started).  systemd is notified when it runs the daemon
    (``$NOTIFY_SOCKET``; :mod:`trollpush.sdnotify`)."""
    service = build_service(config, observers=(SystemdNotify.from_environment(),))
    if startup is not None:
        startup.attach(service.stop)
    await service.run()


def serve(config: Config, *, startup: StartupSignals | None = None) -> None:
    """Run a daemon for ``config`` on the event loop it asks for (``daemon.event_loop``)."""
    logsafe.install()  # one record, one line, whoever set up logging
    if config.daemon.event_loop == "uvloop":
        import uvloop

        uvloop.run(run_daemon(config, startup=startup))
    else:
        asyncio.run(run_daemon(config, startup=startup))
