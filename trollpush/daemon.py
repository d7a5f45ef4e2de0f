"""The daemon: wires receive -> journal -> route -> transfer -> announce.

Bounded everywhere: a queue between the receivers and the dispatcher, a limit on
requests in flight, and per-endpoint upload slots.  SIGINT/SIGTERM stop intake and
let work in progress finish for ``daemon.shutdown_grace`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections import Counter
from typing import Any

from posttroll.message import Message

from . import announce
from .announce import Announcer
from .config import Config
from .errors import Reason
from .journal import Journal, MemoryJournal
from .models import Job, Rejection, Request, UploadResult
from .receive import RequestServer, SubscribeReceiver
from .route import Router
from .transfer import TransferEngine

logger = logging.getLogger(__name__)

#: pub-sub message types that are never requests, dropped with a debug line: heartbeats,
#: and trollpush's own announcements (refusing those loudly would feed a loop when a
#: daemon hears its own publisher)
QUIET_TYPES = frozenset({"beat", announce.FAILURE_TYPE, announce.ACK_TYPE,
                         announce.MULTIPLE_TYPE})


class Daemon:
    """One trollpush daemon; ``await run()`` until ``stop()`` or a signal."""

    def __init__(self, config: Config, *, journal: Journal | None = None) -> None:
        self.config = config
        self.journal: Journal = journal if journal is not None else MemoryJournal()
        self.router = Router(config)
        self.transfer = TransferEngine(config.endpoints, warm_buckets=config.warm_buckets())
        self.announcer = Announcer(config.publish)
        self.requests: RequestServer | None = None
        self.subscriber: SubscribeReceiver | None = None
        self.counts: Counter[str] = Counter()
        self.ready = threading.Event()
        self._queue: asyncio.Queue[Request | Rejection] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        queued = self._queue.qsize() if self._queue else 0
        return (f"<Daemon queued={queued} in_flight={len(self._tasks)} {dict(self.counts)} "
                f"{self.transfer!r}>")

    def stop(self) -> None:
        """Ask the daemon to shut down; safe from any thread."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._queue = asyncio.Queue(self.config.daemon.queue_size)
        self._slots = asyncio.Semaphore(self.config.daemon.max_in_flight)
        self._install_signals()
        try:
            await self._start()
            dispatcher = asyncio.create_task(self._dispatch(), name="dispatch")
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
            logger.info("stopped: %s", ", ".join(f"{v} {k}" for k, v in sorted(
                self.counts.items())) or "nothing done")

    def _inputs(self) -> list[str]:
        out = []
        if self.requests:
            out.append(f"requests on {self.requests.address}")
        if self.subscriber:
            out.append(f"subscribed to {list(self.config.subscribe.topics)}"  # type: ignore[union-attr]
                       )
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
        await self.transfer.start()
        await asyncio.to_thread(self.announcer.start)
        if self.config.requests is not None:
            self.requests = RequestServer(self.config.requests.address, self.submit)
            self.requests.start()
        if self.config.subscribe is not None:
            assert self._loop is not None
            self.subscriber = SubscribeReceiver(self.config.subscribe.settings, self.submit,
                                                self._loop)
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
            logger.warning("grace period of %g s over: cancelling %d request(s)", grace,
                           len(self._tasks) + self._queue.qsize())
        dispatcher.cancel()
        await asyncio.gather(dispatcher, return_exceptions=True)
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, Request):
                item = Rejection(Reason.SHUTDOWN, "the daemon stopped before starting this "
                                 "request", item.origin, subject=item.subject,
                                 uri=item.files[0].uri, metadata=item.metadata, reply=item.reply)
            await self._refuse(item)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _close(self) -> None:
        await self._stop_intake()
        await self.transfer.close()
        self.announcer.stop()
        if self.requests is not None:
            self.requests.close()

    # --- intake -------------------------------------------------------------------------

    async def submit(self, item: Request | Rejection) -> None:
        """Hand one received item to the pipeline; waits while the queue is full."""
        assert self._queue is not None
        await self._queue.put(item)

    async def _dispatch(self) -> None:
        assert self._queue is not None and self._slots is not None
        while True:
            item = await self._queue.get()
            try:
                if isinstance(item, Rejection):
                    await self._refuse(item)
                    continue
                await self._slots.acquire()
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
        self.counts["rejected"] += 1
        logger.warning("rejected %s message%s: %s (%s)", item.origin,
                       f" {item.subject}" if item.subject else "", item.detail, item.reason)
        message = self.announcer.rejection(item)
        self.announcer.publish(message)
        if item.reply is not None:
            await item.reply.send(message)

    # --- one request ----------------------------------------------------------------------

    async def _process(self, request: Request) -> None:
        await self.journal.accepted(request)
        self.counts["accepted"] += 1
        result = self.router.route(request)
        reply = request.reply
        if reply is not None and reply.wants_ack and result.jobs:
            dests = [u.url for job in result.jobs for u in job.uploads]
            await reply.send(announce.ack(request, dests))
        messages: list[Message] = []
        for fail in result.failures:
            self.counts["failed"] += 1
            logger.warning("route failed for %s: %s (%s)", request.describe(), fail.detail,
                           fail.reason)
            messages.append(self.announcer.route_failure(request, fail))
            self.announcer.publish(messages[-1])
            await self.journal.failed(request, None, fail.reason)
        try:
            outcomes = await asyncio.gather(*(self._run_job(job) for job in result.jobs))
        except asyncio.CancelledError:
            await self._abandon(request, result.jobs)
            raise
        messages.extend(m for out in outcomes for m in out)
        await self.journal.finished(request)
        # a request that could not start gets its failure even if it asked only for the ack
        if reply is not None and (reply.wants_final or not result.jobs) and messages:
            await reply.send(announce.combine(messages, request.subject))

    async def _run_job(self, job: Job) -> list[Message]:
        await self.journal.transferring(job)
        results: tuple[UploadResult, ...] = tuple(await asyncio.gather(
            *(self.transfer.upload(u, job.endpoint) for u in job.uploads)))
        failed = [r for r in results if not r.ok]
        if failed:
            self.counts["failed"] += 1
            await self.journal.failed(job.request, job, failed[0].reason or "upload_failed")
            messages = [self.announcer.upload_failure(job, r) for r in failed]
            for m in messages:
                self.announcer.publish(m)
            return messages
        await self.journal.uploaded(job, results)
        message = announce.completion(job, results)
        self.announcer.publish(message)
        await self.journal.announced(job)
        self.counts["completed"] += 1
        logger.info("announced %s on %s", job.describe(), job.publish_topic)
        return [message]

    async def _abandon(self, request: Request, jobs: Any) -> None:
        """Announce (and answer) that a request was cut off by shutdown."""
        message = self.announcer.rejection(Rejection(
            Reason.SHUTDOWN, "the daemon stopped before this request finished", request.origin,
            subject=request.subject, uri=request.files[0].uri, metadata=request.metadata))
        self.announcer.publish(message)
        for job in jobs:
            await self.journal.failed(request, job, Reason.SHUTDOWN)
        if request.reply is not None and request.reply.wants_final:
            await request.reply.send(message)


async def run_daemon(config: Config) -> None:
    """Run a daemon for ``config`` until SIGINT/SIGTERM."""
    await Daemon(config).run()
