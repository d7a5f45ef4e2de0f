"""The JetStream input: requests shared by several instances through a NATS work queue.

Each message of the stream carries one posttroll message, as a subscriber would receive
it.  Every instance pulls from one durable consumer; a message is journaled here before
its request starts, and acknowledged only once its completion or failure has been
announced, so that an instance that dies leaves it to JetStream, which gives it to
another after ``ack_wait``.  While a request runs its message is told "in progress"
every third of ``ack_wait``.  A file missing here may be on another instance: the
message is handed back with a delay (``nak``) until its last delivery, which fails it
with ``file_missing``.

nats-py is optional (``pip install 'trollpush[jetstream]'``): it is imported when the
input starts, never before.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..config import Config, JetStreamConfig
from ..errors import Reason, SetupError
from ..messages import decode
from ..models import Job, Rejection, Request, UploadResult
from . import _bridge_wire as wire
from . import _jetstream_setup as setup
from ._checks import CheckThreads, checked
from ._jetstream_info import ConsumerWatch
from ._parked import Parked, ref

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from . import Intake

logger = logging.getLogger("trollpush.receive")  # the name users' log configs know

INSTALL = "pip install 'trollpush[jetstream]'"
#: reasons after which the message goes back to the stream at once: the request was
#: not done here, another instance (or this one's next start) may do it
HANDED_BACK = frozenset({Reason.SHUTDOWN, Reason.JOURNAL_UNAVAILABLE})


class _Delivery:
    """One JetStream message from its fetch to its acknowledgement: the request's
    Replier, told the final message once it has been announced.  A request bridged from
    another input (``inputs/_bridge.py``) may name where its caller waits: the outcome
    goes there too, once acknowledged, with what each upload did (a ResultReader)."""

    def __init__(self, owner: JetStreamInput, msg: Msg) -> None:
        self._owner = owner
        self.msg = msg
        self.rejected = False  # refused before it became a request: terminated
        self.settled = False
        self.taken = time.monotonic()
        headers = msg.headers or {}
        #: where the caller of a bridged request waits for its outcome
        self.reply_to = headers.get(wire.REPLY_HEADER)
        #: bridged from an input whose requests name their destination: decoded so
        self.direct = headers.get(wire.ORIGIN_HEADER) in wire.BRIDGED_DIRECT
        self._results: list[tuple[Job, Sequence[UploadResult]]] = []

    def __repr__(self) -> str:
        return f"<_Delivery {self.msg.reply} settled={self.settled}>"

    @property
    def wants_ack(self) -> bool:
        return False  # a bridged caller was acknowledged when JetStream took its request

    @property
    def wants_final(self) -> bool:
        return True

    def results(self, job: Job, results: Sequence[UploadResult]) -> None:
        if self.reply_to is not None:
            self._results.append((job, results))

    async def send(self, message: Any) -> None:
        """The outcome has been announced (the pipeline publishes first): acknowledge,
        then tell a waiting caller; one handed back is not its outcome (it comes again)."""
        data = getattr(message, "data", None)
        reason = data.get("reason") if isinstance(data, dict) else None
        if reason in HANDED_BACK:
            await self._owner.settle(self, "nak")
            return
        await self._owner.settle(self, "term" if self.rejected else "ack")
        nc = self._owner.connection() if self.reply_to is not None else None
        if self.reply_to is None or nc is None:
            return
        try:
            await nc.publish(self.reply_to, str(message.encode()).encode(),
                             headers=wire.results_header(self._results))
        except Exception as err:  # nats-py's errors, or an unencodable message
            logger.warning("jetstream: the outcome could not be sent to its caller "
                           "(%s: %s)", type(err).__name__, err)


class JetStreamInput:
    """The ``jetstream`` input: a pull consumer on the loop, on the seam."""

    name = "jetstream"
    #: what its requests carry as their origin (journaled with them)
    origin = "jetstream"

    BATCH = 64  # messages asked for at once, at most
    FETCH_TIMEOUT = 1.0  # a fetch waits this long for messages (a stop is seen after it)
    CALL_TIMEOUT = 5.0  # one JetStream API call or synchronous ack
    CONNECT_TIMEOUT = 5.0  # one connection attempt
    MISSING_DELAY = 5.0  # seconds before a message whose file is missing here comes back
    CLOSE_WAIT = 10.0  # seconds close waits for running requests' outcomes
    RETRY = 1.0  # seconds between fetches while the server cannot be reached

    def __init__(self, config: JetStreamConfig, intake: Intake, *, window: int,
                 max_hold: float = 7200.0) -> None:
        self.config = config
        #: seconds a message is kept from redelivery at most, should its outcome never
        #: come (a bug): then JetStream gives it again after ack_wait
        self._max_hold = max_hold
        self._intake = intake
        self._window = max(1, window)  # messages held (fetched, not acknowledged)
        self._held: dict[int, _Delivery] = {}
        self._room = asyncio.Event()  # set: a held message was let go
        self._nc: Client | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._beat: asyncio.Task[None] | None = None
        self._checks = CheckThreads("trollpush-jetstream-check")
        self._stopping = False
        self._closing = False
        self._acks_later: set[asyncio.Task[None]] = set()  # see _ack_later
        self._undelivered: list[Request | Rejection] = []
        self.received = 0
        #: outcomes sent back to JetStream, by kind (ack, term, nak, missing, progress)
        self.sent: dict[str, int] = {"ack": 0, "term": 0, "nak": 0, "missing": 0,
                                     "progress": 0}
        self.info = ConsumerWatch(config.stream, config.consumer, timeout=self.CALL_TIMEOUT)
        #: requests of this stream recovered from the journal (see _parked); one whose
        #: message stays away is resumed here after all its deliveries could have been
        #: held as long as an instance holds one (max_hold)
        self.parked = Parked(config.stream, interval=config.ack_wait / 2,
                             bound=max_hold + config.max_deliver * config.ack_wait)

    def __repr__(self) -> str:
        return (f"<JetStreamInput {self.config.stream}/{self.config.consumer} "
                f"received={self.received} held={len(self._held)}/{self._window}>")

    def describe(self) -> str:
        return (f"jetstream consumer {self.config.consumer} of stream {self.config.stream} "
                f"({self.config.subject})")

    def details(self) -> dict[str, Any]:
        """What ``trollpush status`` shows of it: the shared consumer as last read, the
        messages held here, and the outcomes sent back."""
        return {**self.info.details(), "held": len(self._held), "sent": dict(self.sent)}

    # --- start ----------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            import nats
        except ImportError as err:
            raise SetupError(f"jetstream: the NATS client is not installed ({err}); "
                             f"install it with: {INSTALL}") from err
        c = self.config
        try:
            async with asyncio.timeout(self.CONNECT_TIMEOUT * len(c.servers) + self.CALL_TIMEOUT):
                self._nc = await nats.connect(
                    servers=list(c.servers), name="trollpush",
                    connect_timeout=self.CONNECT_TIMEOUT, allow_reconnect=True,
                    max_reconnect_attempts=-1, reconnect_time_wait=1,
                    error_cb=self._error,
                    disconnected_cb=self._disconnected, reconnected_cb=self._reconnected)
        except (TimeoutError, OSError, nats.errors.Error) as err:
            await self._drop()
            raise SetupError(f"jetstream.servers {', '.join(setup.hosts(self.config))}: "
                             f"cannot connect ({type(err).__name__}: {err})") from err
        try:
            js = self._nc.jetstream(timeout=self.CALL_TIMEOUT)
            await setup.stream(js, self.config)
            await setup.consumer(js, self.config)
            self._sub = await js.pull_subscribe_bind(consumer=c.consumer, stream=c.stream)
        except SetupError:
            await self._drop()
            raise
        except (TimeoutError, nats.errors.Error) as err:
            await self._drop()
            raise SetupError(f"jetstream: cannot set up stream {c.stream} / consumer "
                             f"{c.consumer} ({type(err).__name__}: {err})") from err
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="jetstream")
        self._task.add_done_callback(self._ended)
        self._beat = loop.create_task(_heartbeat(self), name="jetstream-progress")
        self.info.start(js, self._intake.stats, sent=self.sent)
        self.parked.start(js, self._intake)

    async def _error(self, err: Exception) -> None:
        logger.warning("jetstream: %s: %s", type(err).__name__, err)

    async def _disconnected(self) -> None:
        if self._closing:
            return
        logger.warning("jetstream: disconnected from the NATS server; reconnecting")

    async def _reconnected(self) -> None:
        logger.info("jetstream: reconnected to %s", self._nc.connected_url.netloc
                    if self._nc is not None and self._nc.connected_url else "the server")

    # --- the fetch loop ---------------------------------------------------------------------

    def _ended(self, task: asyncio.Task[None]) -> None:
        if self._stopping or task.cancelled():
            return
        err = task.exception()
        if err is not None:
            self._intake.fatal("the jetstream input", err)

    async def _run(self) -> None:
        import nats.errors

        assert self._sub is not None
        while not self._stopping:
            free = self._window - len(self._held)
            if free <= 0:  # as many as the daemon takes on are held: wait for an outcome
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.FETCH_TIMEOUT):
                        await self._room.wait()
                continue
            try:
                msgs = await self._sub.fetch(min(free, self.BATCH), timeout=self.FETCH_TIMEOUT)
            except nats.errors.TimeoutError:
                continue
            except (nats.errors.Error, OSError) as err:
                if self._stopping:
                    return
                logger.warning("jetstream: fetch failed: %s: %s", type(err).__name__, err)
                await asyncio.sleep(self.RETRY)
                continue
            self.received += len(msgs)
            # each decoded in turn, on a check thread; handed over without waiting, as
            # the subscribe input's are: the journal commits a batch as one group (each
            # waited for its own commit: a quarter of the firehose's rate)
            handed: list[asyncio.Task[Any]] = []
            for i, msg in enumerate(msgs):
                if self._stopping:  # never journaled: back to the stream for another
                    for rest in msgs[i:]:
                        await self._answer(rest, "nak")
                    break
                step = await self._take(msg)
                if step is not None:
                    handed.append(asyncio.ensure_future(step))
            await asyncio.gather(*handed)

    async def _take(self, msg: Msg) -> Coroutine[Any, Any, object] | None:
        """Decode one message (its file checks on a check thread); then the step that
        hands it over, or None once it is handed back (its file is missing here and it
        may come again).  A message whose request is parked here (recovered from the
        journal) continues it."""
        delivery = _Delivery(self, msg)
        self._held[id(delivery)] = delivery
        seq = msg.metadata.sequence.stream
        if self.parked and (parked := self.parked.take(seq)) is not None:
            return self._intake.resume(replace(parked, reply=delivery, redelivered=True))
        limits = self._intake.limits
        item = await checked(self._checks, functools.partial(
            self._decode, msg.data, delivery), limits.file_timeout, self._undelivered,
            "jetstream")
        if isinstance(item, Rejection) and item.reason == Reason.FILE_MISSING:
            delivered = msg.metadata.num_delivered or 1
            if delivered < self.config.max_deliver:
                logger.info("jetstream: %s (delivery %d of %d): handed back for another "
                            "instance", item.detail, delivered, self.config.max_deliver)
                self.sent["missing"] += 1
                await self.settle(delivery, "nak", delay=self.MISSING_DELAY)
                return None
        # refused: terminated, never delivered again; a file missing at the last
        # delivery is a failure like any other (acknowledged)
        delivery.rejected = (isinstance(item, Rejection)
                             and item.reason != Reason.FILE_MISSING)
        if isinstance(item, Request):  # known again after a restart; delivered before?
            item = replace(item, ref=ref(self.config.stream, seq),
                           redelivered=(msg.metadata.num_delivered or 1) > 1)
        return self._submit(item)

    async def _submit(self, item: Request | Rejection) -> None:
        try:
            await self._intake.submit(item)
        except asyncio.CancelledError:
            self._undelivered.append(item)
            raise

    def _decode(self, raw: bytes, delivery: _Delivery, check: bool) -> Request | Rejection:
        return decode(raw, origin=self.origin, reply=delivery, limits=self._intake.limits,
                      check=check, direct=delivery.direct)

    def connection(self) -> Client | None:
        """The NATS connection while the input runs (connected or reconnecting), for
        the bridge and the outcomes of bridged requests; None before start and once
        it closes."""
        nc = self._nc
        return None if nc is None or self._closing or nc.is_closed else nc

    async def settle(self, delivery: _Delivery, how: str, *, delay: float | None = None) -> None:
        """Tell JetStream the message's outcome, once; it is no longer held."""
        if delivery.settled:
            return
        delivery.settled = True
        try:
            await self._answer(delivery.msg, how, delay=delay)
        finally:
            self._held.pop(id(delivery), None)
            self._room.set()

    async def _answer(self, msg: Msg, how: str, *, delay: float | None = None) -> None:
        import nats.errors

        try:
            if how == "ack":  # waits for the server: an ack lost here means a repeat
                await msg.ack_sync(timeout=self.CALL_TIMEOUT)
            elif how == "term":
                await msg.term()
            else:
                await msg.nak(delay=delay)
        except (nats.errors.Error, OSError, TimeoutError) as err:
            if how == "ack" and not self._closing and len(self._acks_later) < self._window:
                task = asyncio.get_running_loop().create_task(_ack_later(
                    self, msg, time.monotonic() + self.config.ack_wait, err))
                self._acks_later.add(task)
                task.add_done_callback(self._acks_later.discard)
                return
            logger.warning("jetstream: %s of a message failed (%s: %s); JetStream gives it "
                           "again after ack_wait", how, type(err).__name__, err)
            return
        if how != "nak" or delay is None:
            self.sent[how] += 1

    # --- stop -------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop fetching; requests taken go on (their outcomes are still acknowledged)."""
        self._stopping = True
        await self.parked.stop()
        if self._task is not None:
            try:
                async with asyncio.timeout(self.FETCH_TIMEOUT + self.CALL_TIMEOUT):
                    await asyncio.shield(self._task)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            except Exception:  # reported by _ended already
                pass
            self._task = None

    def adopt(self, requests: list[Request]) -> list[Request]:
        """Before the start: park the requests recovered from the journal that came
        from this stream (see _parked); the others are returned."""
        return self.parked.adopt(requests)

    def undelivered(self) -> list[Request | Rejection]:
        return list(self._undelivered)

    async def close(self) -> None:
        """Wait (a bounded time) for the outcomes of requests still running, hand back
        what never got one, then drain and close the connection; idempotent."""
        await self.stop()
        if self._held:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.CLOSE_WAIT):
                    while self._held:
                        self._room.clear()
                        await self._room.wait()
        for delivery in list(self._held.values()):
            await self.settle(delivery, "nak")
        for task in [*self._acks_later, *([self._beat] if self._beat else [])]:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._beat = None
        await self.info.stop()
        self._checks.close()
        await self._drop()

    async def _drop(self) -> None:
        """Send what is buffered (naks, terms), then close; bounded."""
        nc, self._nc, self._sub = self._nc, None, None
        self._closing = True
        if nc is None or nc.is_closed:
            return
        if nc.is_connected:
            try:
                await nc.flush(timeout=int(self.CALL_TIMEOUT))
            except Exception as err:  # closing anyway
                logger.warning("jetstream: could not send the last outcomes (%s: %s); "
                               "JetStream gives those messages again after ack_wait",
                               type(err).__name__, err)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.CALL_TIMEOUT):
                await nc.close()


async def _heartbeat(owner: JetStreamInput) -> None:
    """Every third of ack_wait, each message ``owner`` holds is said to be in progress;
    one held past its bound (no outcome came: a bug) is let go, to JetStream's
    redelivery."""
    import nats.errors

    held = owner._held
    while True:
        await asyncio.sleep(owner.config.ack_wait / 3)
        now = time.monotonic()
        for delivery in list(held.values()):
            if delivery.settled:
                continue
            if now - delivery.taken > owner._max_hold:
                logger.error("jetstream: no outcome for a message after %.0f s; it is "
                             "left to JetStream's redelivery", now - delivery.taken)
                held.pop(id(delivery), None)
                owner._room.set()
                continue
            try:
                await delivery.msg.in_progress()
                owner.sent["progress"] += 1
            except (nats.errors.Error, OSError) as err:
                logger.debug("jetstream: in-progress ack failed: %s", err)


async def _ack_later(owner: JetStreamInput, msg: Msg, until: float, err: BaseException) -> None:
    """An ack lost while the server was away (a restart, a partition) is tried again
    every second until ``ack_wait`` has passed, when JetStream gives the message again
    anyway: a request done during a short outage is then not done twice."""
    import nats.errors

    logger.info("jetstream: an ack failed (%s: %s); trying again for up to ack_wait",
                type(err).__name__, err)
    while time.monotonic() < until and not owner._closing:
        await asyncio.sleep(owner.RETRY)
        try:
            await msg.ack_sync(timeout=owner.CALL_TIMEOUT)
        except (nats.errors.Error, OSError, TimeoutError):
            continue
        owner.sent["ack"] += 1
        return
    logger.warning("jetstream: an ack could not be sent within ack_wait; JetStream gives "
                   "the message again (its object is found already there)")


def create(config: Config, intake: Intake) -> JetStreamInput | None:
    """The JetStream input, if ``jetstream`` is configured.  It holds (fetched, not yet
    acknowledged) what the daemon runs at once plus a batch, never more than its queue."""
    if config.jetstream is None:
        return None
    d = config.daemon
    return JetStreamInput(config.jetstream, intake,
                          window=min(d.queue_size, d.max_in_flight + JetStreamInput.BATCH),
                          max_hold=d.max_age + d.shutdown_grace + config.jetstream.ack_wait)
