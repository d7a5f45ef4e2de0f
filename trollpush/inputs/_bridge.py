"""The bridge (``jetstream.bridge: true``): what this instance's other inputs take goes
into the JetStream stream instead of its journal, and the jetstream input of any
instance sharing the consumer does it.

Each input but jetstream is given a :class:`BridgedIntake` (the service's intake for all
but ``submit``) and runs wrapped in a :class:`BridgedInput`.  A Rejection stays here, as
before (refused, announced, answered).  A Request is published with a ``Nats-Msg-Id``
(``_bridge_wire.identity``) and counts as accepted once JetStream confirmed it.  A
publish that fails is tried again with the same id for ``Bridge.PUBLISH_RETRY`` seconds;
then the request is done here instead (journaled, as without the bridge): nothing is
lost.  One nobody waits for (pub-sub, a watched file) is published in the background,
at most ``daemon.queue_size`` at once per input, so a burst does not wait for each
PubAck in turn.  A caller that waits (REQ/REP, HTTP, s3daemon) is answered through a
core NATS subject of this instance's own (``Trollpush-Reply``), which the jetstream
input that took the request publishes the outcome on; it is acknowledged
(``reply: accepted|both``) once JetStream has the request.

One :class:`Bridge` serves a service (its inputs, their reloads), and publishes through
the connection of whichever of its jetstream inputs runs: inputs start before the
jetstream one, and a reload may replace it, so a publish waits for one (within the
retry bound) rather than binding to one at build time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..errors import Reason
from ..messages import ack, decode_message, failure, not_accepted
from ..models import Rejection, Request, ResultReader
from ..stats import JS_BRIDGED, Stats
from . import _bridge_wire as wire
from .jetstream import JetStreamInput

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext
    from posttroll.message import Message

    from ..messages import Limits
    from . import Input, Intake

logger = logging.getLogger("trollpush.receive")  # the name users' log configs know

#: the bridge of each service (its intake), shared by its inputs and their reloads
_BRIDGES: weakref.WeakKeyDictionary[Any, Bridge] = weakref.WeakKeyDictionary()


def bridge_for(intake: Intake) -> Bridge | None:
    """The bridge of a service, if it bridges (for its counters)."""
    return _BRIDGES.get(intake)


@dataclass
class _Waiting:
    """A caller waiting for the outcome of a request that went into the stream."""

    request: Request
    owner: BridgedIntake
    timer: asyncio.TimerHandle | None = None
    armed: bool = False  # acknowledged, its timer set: an outcome may be handed over
    early: Msg | None = None  # an outcome that came before that


class Bridge:
    """Publishes requests into the stream and hands their outcomes back to their callers."""

    PUBLISH_RETRY = 30.0  # seconds a publish is tried before the request is done here
    CALL_TIMEOUT = 5.0  # one publish, waiting for its PubAck
    BACKOFF = (0.05, 2.0)  # seconds between tries: the first, the longest
    KEEP = 1.0  # seconds between looks at the connection while callers wait

    def __init__(self, config: Config) -> None:
        self.instance = uuid.uuid4().hex[:12]
        #: replies to this instance's callers come on PREFIX.<request id>
        self.prefix = f"_INBOX.trollpush.{self.instance}"
        self._inputs: weakref.WeakSet[JetStreamInput] = weakref.WeakSet()
        self._waiting: dict[str, _Waiting] = {}
        self._nc: Client | None = None  # the connection the replies come on
        self._js: JetStreamContext | None = None
        self._answers: set[asyncio.Task[None]] = set()
        self._keeper: asyncio.Task[None] | None = None
        #: the last publish found no way into the stream: the next ones try once (a
        #: REQ/REP input hands over one request at a time), until one gets through
        self.down = False
        self.configure(config)
        #: requests that entered the stream, publishes it had already (another
        #: instance's, or a retry's), requests done here instead, outcomes handed back
        self.published = self.duplicates = self.fallbacks = self.replies = 0

    def __repr__(self) -> str:
        return (f"<Bridge {self.instance} published={self.published} duplicates="
                f"{self.duplicates} fallbacks={self.fallbacks} replies={self.replies} "
                f"waiting={len(self._waiting)}>")

    @property
    def waiting(self) -> int:
        """Callers waiting for the outcome of a request in the stream."""
        return len(self._waiting)

    def configure(self, config: Config) -> None:
        """The bounds, as the config being built has them."""
        d, js = config.daemon, config.jetstream
        assert js is not None  # a bridge is made for (and kept with) a jetstream section
        self.room = d.queue_size  # callers waiting at once; publishes in the background
        #: seconds a caller waits for an outcome at most: the request's own max_age,
        #: each delivery's ack_wait (and a file-missing delay), a stop's grace
        self.reply_timeout = d.max_age + d.shutdown_grace + js.max_deliver * (
            js.ack_wait + JetStreamInput.MISSING_DELAY)

    def offer(self, found: JetStreamInput) -> None:
        """A jetstream input of the service: published through once it runs."""
        self._inputs.add(found)

    # --- publishing ---------------------------------------------------------------------

    async def submit(self, request: Request, owner: BridgedIntake) -> bool:
        """Into the stream (or done here if it cannot go); True: accepted."""
        reply = request.reply
        if reply is None:
            await owner.slots.acquire()
            task = asyncio.get_running_loop().create_task(
                self._later(request, owner), name=f"bridge-{request.id}")
            owner.pending.add(task)
            task.add_done_callback(owner.published)
            return True
        waiting = None
        if reply.wants_final:
            if len(self._waiting) >= self.room:
                logger.warning("bridge: %d callers wait for outcomes already; %s is done "
                               "here", len(self._waiting), request.describe())
                self.fallbacks += 1
                return await owner.real.submit(request)
            waiting = self._waiting[request.id] = _Waiting(request, owner)
        stream = await self._try(request, owner, answer=waiting is not None)
        if stream is None:
            self._waiting.pop(request.id, None)
            self.fallbacks += 1
            return await owner.real.submit(request)
        if reply.wants_ack:
            message = ack(request, [request.destination] if request.destination else [])
            message.data["stream"] = stream
            await _send(request, message)
        if waiting is not None and self._waiting.get(request.id) is waiting:
            await self._arm(waiting)
        return True

    async def _later(self, request: Request, owner: BridgedIntake) -> None:
        """A request nobody waits for: published, else done here."""
        handed = False  # to the service: journaled, or being journaled
        try:
            if await self._try(request, owner, answer=False) is None:
                self.fallbacks += 1
                handed = True
                await owner.real.submit(request)
        except asyncio.CancelledError:  # a stop that could not wait: the service answers
            owner.undelivered.append(request if handed else not_accepted(request))
            raise

    async def _try(self, request: Request, owner: BridgedIntake, *, answer: bool
                   ) -> str | None:
        try:
            return await self._publish(request, owner, answer=answer)
        except Exception:  # a bug (or a message posttroll cannot encode): done here
            logger.exception("bridge: publishing %s failed", request.describe())
            return None

    async def _publish(self, request: Request, owner: BridgedIntake, *, answer: bool
                       ) -> str | None:
        """The stream that took ``request``; None if none did within PUBLISH_RETRY (or
        before a stop).  Every try carries the same Nats-Msg-Id: a try that reached the
        stream but whose PubAck was lost is not stored twice."""
        import nats.errors

        data = wire.payload(request)
        headers = {wire.MSG_ID: wire.identity(request, self.instance),
                   wire.ORIGIN_HEADER: request.origin}
        if answer:
            headers[wire.REPLY_HEADER] = f"{self.prefix}.{request.id}"
        deadline = time.monotonic() + (0.0 if self.down else self.PUBLISH_RETRY)
        delay, why = self.BACKOFF[0], "no connection to NATS"
        while True:
            target = await self._target()
            if target is not None:
                js, subject, stream = target
                try:
                    puback = await js.publish(subject, data, timeout=self.CALL_TIMEOUT,
                                              stream=stream, headers=headers)
                except (nats.errors.Error, OSError) as err:
                    why = f"{type(err).__name__}: {err}"
                else:
                    if puback.duplicate:
                        self.duplicates += 1
                    else:
                        self.published += 1
                    if self.down:
                        logger.info("bridge: requests go into the JetStream stream again")
                    self.down = False
                    return puback.stream
            left = deadline - time.monotonic()
            if owner.stopping or left <= 0:
                logger.warning("bridge: %s could not go into the JetStream stream (%s); it "
                               "is done here%s", request.describe(), why,
                               "" if self.down else " (the next requests try once, until "
                               "one gets through)")
                self.down = True
                return None
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, self.BACKOFF[1])

    async def _target(self) -> tuple[JetStreamContext, str, str] | None:
        """The JetStream context, subject and stream of a running jetstream input, its
        connection subscribed to this instance's replies; None while there is none (a
        publish while reconnecting would wait in the client's buffer, and go out later
        even after the request was done here)."""
        import nats.errors

        for each in list(self._inputs):
            nc = each.connection()
            if nc is not None and nc.is_connected:
                break
        else:
            return None
        if self._nc is not nc:  # set first: a publish meanwhile queues after the SUB
            self._nc, self._js = nc, nc.jetstream(timeout=self.CALL_TIMEOUT)
            try:
                await nc.subscribe(f"{self.prefix}.*", cb=self._reply)
            except (nats.errors.Error, OSError) as err:
                self._nc = None
                logger.warning("bridge: cannot subscribe to the replies: %s", err)
                return None
        assert self._js is not None
        return self._js, each.config.subject, each.config.stream

    # --- outcomes -----------------------------------------------------------------------

    async def _arm(self, waiting: _Waiting) -> None:
        """The caller has its acknowledgement: its outcome may come, or its time run out."""
        waiting.armed = True
        if waiting.early is not None:
            del self._waiting[waiting.request.id]
            await self._deliver(waiting, waiting.early)
            return
        loop = asyncio.get_running_loop()
        waiting.timer = loop.call_later(self.reply_timeout, self._expire, waiting.request.id)
        if self._keeper is None or self._keeper.done():
            self._keeper = loop.create_task(self._keep(), name="bridge-replies")

    async def _keep(self) -> None:
        """While callers wait, the replies stay subscribed on the running jetstream
        input's connection (a reload may have replaced it, and no publish since)."""
        while self._waiting:
            await asyncio.sleep(self.KEEP)
            try:
                await self._target()
            except Exception:  # a bug: the next publish tries again
                logger.exception("bridge: looking at the NATS connection failed")

    async def _reply(self, msg: Msg) -> None:
        """An outcome, from the instance that did the request."""
        token = msg.subject.rsplit(".", 1)[-1]
        waiting = self._waiting.get(token)
        if waiting is None:  # answered already (timed out, a stop), or done twice
            logger.debug("bridge: an outcome for %s, whose caller no longer waits", token)
            return
        if not waiting.armed:
            waiting.early = msg
            return
        del self._waiting[token]
        await self._deliver(waiting, msg)

    async def _deliver(self, waiting: _Waiting, msg: Msg) -> None:
        if waiting.timer is not None:
            waiting.timer.cancel()
        request = waiting.request
        try:
            message = decode_message(msg.data.decode("utf-8"))
        except Exception as err:  # posttroll raises several kinds
            logger.warning("bridge: the outcome of %s is unreadable (%s)", request.describe(),
                           err)
            message = _failure(request, Reason.INTERNAL, "the outcome sent by the instance "
                               "that did it is not a posttroll message")
        results = (msg.headers or {}).get(wire.RESULTS_HEADER)
        if results and isinstance(request.reply, ResultReader):
            for job, done in wire.read_results(results, request):
                request.reply.results(job, done)
        self.replies += 1
        await _send(request, message)

    def _expire(self, token: str) -> None:
        waiting = self._waiting.pop(token, None)
        if waiting is None:
            return
        detail = (f"no outcome within {self.reply_timeout:g} s from the instance that took "
                  "it from the JetStream stream; it may still be done")
        logger.warning("bridge: %s: %s", waiting.request.describe(), detail)
        task = asyncio.get_running_loop().create_task(
            _send(waiting.request, _failure(waiting.request, Reason.TIMEOUT, detail)))
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    def abandoned(self, request: Request) -> bool:
        """The caller of ``request`` hung up: nothing to stop if it is in the stream
        (True); False if it is not (done here)."""
        waiting = self._waiting.pop(request.id, None)
        if waiting is None:
            return False
        if waiting.timer is not None:
            waiting.timer.cancel()
        logger.info("bridge: the caller of %s went away; the request is in the JetStream "
                    "stream and is done anyway", request.describe())
        return True

    async def release(self, owner: BridgedIntake) -> None:
        """``owner`` closes: its callers still waiting are told the daemon stopped."""
        for token, waiting in list(self._waiting.items()):
            if waiting.owner is not owner:
                continue
            del self._waiting[token]
            if waiting.timer is not None:
                waiting.timer.cancel()
            await _send(waiting.request, _failure(
                waiting.request, Reason.SHUTDOWN, "the daemon stopped before the outcome "
                "came; the request stays in the JetStream stream and is done there"))


def _failure(request: Request, reason: str, detail: str) -> Message:
    return failure(request.subject, uri=request.files[0].uri, destination=request.destination,
                   error=detail, reason=reason, metadata=request.metadata,
                   request_type=request.type)


async def _send(request: Request, message: Message) -> None:
    assert request.reply is not None
    try:
        await request.reply.send(message)
    except Exception:  # one caller's answer must not stop the others'
        logger.exception("bridge: answering the caller of %s failed", request.describe())


class BridgedIntake:
    """What a bridged input is given: the service's intake, but for ``submit``."""

    def __init__(self, bridge: Bridge, real: Intake) -> None:
        self.bridge = bridge
        self.real = real
        self.slots = asyncio.Semaphore(bridge.room)  # publishes in the background
        self.pending: set[asyncio.Task[None]] = set()
        self.undelivered: list[Request | Rejection] = []
        self.stopping = False  # no more retries: what cannot go is done here at once

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.real.loop

    @property
    def limits(self) -> Limits:
        return self.real.limits

    @property
    def stats(self) -> Stats:
        return self.real.stats

    async def submit(self, item: Request | Rejection) -> bool:
        """A request goes into the stream; a refusal stays with the service (the
        jetstream input is given the service's own intake, never this one)."""
        if isinstance(item, Rejection):
            return await self.real.submit(item)
        return await self.bridge.submit(item, self)

    def published(self, task: asyncio.Task[None]) -> None:
        self.slots.release()
        self.pending.discard(task)

    def fatal(self, what: str, err: BaseException) -> None:
        self.real.fatal(what, err)

    def status(self) -> dict[str, Any]:
        return self.real.status()

    async def resume(self, request: Request) -> None:
        """Recovered from this instance's journal: goes on here, as without the bridge."""
        await self.real.resume(request)

    async def hand_over(self, request: Request, detail: str) -> None:
        await self.real.hand_over(request, detail)

    def abandon(self, request: Request, detail: str) -> None:
        """A request in the stream is done anyway (another instance may be doing it);
        one done here is abandoned as without the bridge."""
        if not self.bridge.abandoned(request):
            self.real.abandon(request, detail)

    async def settle(self, limit: float) -> None:
        """At stop: publishes in flight end (what cannot go now is done here), within
        ``limit`` seconds; what is left then is handed to the service."""
        self.stopping = True
        if self.pending:
            await asyncio.wait(set(self.pending), timeout=limit)
        for task in list(self.pending):
            task.cancel()
        await asyncio.gather(*self.pending, return_exceptions=True)


class BridgedInput:
    """An input whose requests go into the stream: itself, with the bridge's stop and
    close around its own (its other attributes are its own)."""

    def __init__(self, inner: Input, intake: BridgedIntake) -> None:
        self.inner = inner
        self.intake = intake
        self.name = inner.name

    def __repr__(self) -> str:
        return f"<BridgedInput {self.inner!r}>"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def describe(self) -> str:
        return f"{self.inner.describe()} (bridged into JetStream)"

    @property
    def received(self) -> int:
        return self.inner.received

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()
        await self.intake.settle(Bridge.CALL_TIMEOUT * 2)

    def undelivered(self) -> list[Request | Rejection]:
        return [*self.inner.undelivered(), *self.intake.undelivered]

    async def close(self) -> None:
        await self.intake.settle(Bridge.CALL_TIMEOUT * 2)
        await self.intake.bridge.release(self.intake)
        await self.inner.close()


def bridged(config: Config, intake: Intake) -> Bridge:
    """The service's bridge, made at its first build and kept across reloads."""
    found = _BRIDGES.get(intake)
    if found is None:
        found = _BRIDGES[intake] = Bridge(config)
        for outcome, count in (("published", "published"), ("duplicate", "duplicates"),
                               ("fallback", "fallbacks"), ("reply", "replies")):
            intake.stats.follow(JS_BRIDGED, functools.partial(getattr, found, count),
                                outcome=outcome)
    else:
        found.configure(config)
    return found
