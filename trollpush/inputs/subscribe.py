"""The pub-sub input: posttroll messages in, Requests (or Rejections) out.

A subscriber thread reads the frames; decoding (``trollpush.messages.decode``) never
raises into it, so one bad publisher cannot stop the daemon.  Each frame's file checks
run on check threads, bounded by ``daemon.file_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import zmq
from posttroll.message import Message

from ..config import RECEIVE_HWM, Config, SubscribeConfig
from ..messages import NO_LIMITS, Limits, decode, decode_message, not_accepted, overdue
from ..models import Rejection, Request
from ._checks import CheckThreads
from ._discovery import Discovery
from ._handover import Batch, Handover

if TYPE_CHECKING:
    from . import Intake, OnFatal, Sink

logger = logging.getLogger("trollpush.receive")  # the name users' log configs know


class SubscribeReceiver:
    """posttroll subscriber run in a thread, bridged to the event loop with backpressure.

    posttroll builds the sockets; frames are read raw here so that a malformed one is
    logged with its reason instead of ending the loop.  A burst is absorbed by each SUB
    socket's receive high-water mark (``receive_hwm``, set here: posttroll has no
    setting) while the reader drains it in batches; file checks run on check threads
    bounded by ``limits.file_timeout``.  In nameserver mode the producers are looked up in
    the background, so a missing nameserver never stops the daemon from starting.
    """

    POLL_MS = 200
    WINDOW = 1000  # items read and handed over but not yet accepted
    BATCH = 256  # frames decoded and handed over together
    STALL_WARNING = 5.0  # seconds the window may stay full before it is logged

    def __init__(self, settings: Mapping[str, Any], sink: Sink,
                 loop: asyncio.AbstractEventLoop, *, on_fatal: OnFatal | None = None,
                 limits: Limits = NO_LIMITS) -> None:
        self._limits = limits
        self._settings = dict(settings)
        self._hwm = int(self._settings.get("receive_hwm", RECEIVE_HWM))
        self._loop = loop
        self._on_fatal = on_fatal
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._subscriber: Any = None
        self._discovery: Discovery | None = None
        self._handover: Handover[Request | Rejection] = Handover(loop, sink, self.WINDOW)
        self._checks = CheckThreads("trollpush-subscribe-check")
        self.received = 0
        #: times the window stayed full longer than STALL_WARNING (the queue was full)
        self.stalls = 0
        self._turn = 0  # which ready socket is read first, in turn
        #: items read but not handed over when intake stopped (answered by the daemon)
        self.undelivered: list[Request | Rejection] = []

    def __repr__(self) -> str:
        return f"<SubscribeReceiver topics={self._settings.get('topics')} received={self.received}>"

    @property
    def nameserver_mode(self) -> bool:
        s = self._settings
        return not (s.get("addresses") and s.get("nameserver") is False)

    def start(self) -> None:
        """Create the sockets and start the reading thread; never waits for a nameserver."""
        from posttroll.subscriber import Subscriber

        s = self._settings
        self._subscriber = Subscriber(list(s.get("addresses") or []), list(s["topics"]))
        if self.nameserver_mode:
            nameserver = s.get("nameserver") or "localhost"
            self._discovery = Discovery(nameserver, s.get("services", ""),
                                        float(s.get("timeout", 10)), self._stop)
            if s.get("addr_listener"):
                self._listen_for_addresses(nameserver)
            self._discovery.start()
        self._thread = threading.Thread(target=self._supervised, name="trollpush-subscribe",
                                        daemon=True)
        self._thread.start()

    def _listen_for_addresses(self, nameserver: str) -> None:
        """posttroll's address listener: producers that the nameserver announces later
        are added (and removed when they go), in the reader thread."""
        from posttroll.address_receiver import get_configured_address_port

        assert self._discovery is not None
        services = self._discovery.services

        def handle(msg: Message) -> None:
            data = msg.data if isinstance(msg.data, Mapping) else {}
            uri = data.get("URI")
            if not isinstance(uri, str):
                return
            if not data.get("status", True):
                self._subscriber.remove(uri)
                return
            offered = data.get("service") or []
            if any(not name or name in offered for name in services):
                self._subscriber.add(dict(data))

        host = nameserver.split("://", 1)[-1].rsplit(":", 1)[0] if "://" in nameserver \
            else nameserver
        self._subscriber.add_hook_sub(f"tcp://{host}:{get_configured_address_port()}",
                                      ["pytroll://address"], handle)

    def stop(self) -> None:
        """Stop reading and close the subscriber; safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            if self._thread.is_alive():  # never close sockets under a live reader
                logger.error("the subscriber thread did not stop; leaving its sockets open")
                return
            self._thread = None
        if self._discovery is not None:
            self._discovery.join(timeout=Discovery.ASK + 1)
        self._checks.close()
        if self._subscriber is not None:
            self._subscriber.close()
            self._subscriber = None

    def _supervised(self) -> None:
        try:
            self._run()
        except Exception as err:
            if self._on_fatal is not None and not self._stop.is_set():
                with contextlib.suppress(RuntimeError):  # the loop is gone already
                    self._loop.call_soon_threadsafe(self._on_fatal, "the subscriber", err)
            else:
                logger.exception("the subscriber stopped")
        finally:
            for item, entered in self._handover.settle():
                self.undelivered.append(item if entered else not_accepted(item))

    def _hooks(self) -> dict[Any, Callable[[Message], None]]:
        """posttroll's hook sockets (the nameserver address listener).

        posttroll serves them inside its own receive loop and has no public accessor, so
        they are read from its backend here; without them only static addresses work.
        """
        backend = getattr(self._subscriber, "_subscriber", None)
        return dict(getattr(backend, "_hooks_cb", {}) or {})

    def _adopt_found(self) -> None:
        """Connect to what the nameserver look-up found (sockets belong to this thread)."""
        if self._discovery is None:
            return
        while True:
            try:
                address = self._discovery.found.get_nowait()
            except queue.Empty:
                return
            self._subscriber.add(address)

    def _run(self) -> None:
        poller: zmq.Poller | None = None
        sockets: list[Any] = []
        hooks: dict[Any, Callable[[Message], None]] = {}
        stalled_since: float | None = None
        while not self._stop.is_set():
            self._adopt_found()
            hooks = self._hooks()
            current = list(self._subscriber.subscribers) + list(hooks)
            if poller is None or current != sockets:
                for sock in current:
                    if sock not in hooks and sock not in sockets:
                        # takes effect on connected pipes too (libzmq >= 4.2)
                        sock.setsockopt(zmq.RCVHWM, self._hwm)
                poller, sockets = zmq.Poller(), current
                for sock in sockets:
                    poller.register(sock, zmq.POLLIN)
            room = self._handover.room(self._stop, self.POLL_MS / 1000)
            if not room:  # the daemon's queue is full: frames wait in the sockets
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > self.STALL_WARNING:
                    self._stalled(stalled_since)
                    stalled_since = float("inf")  # once per stall
                continue
            if stalled_since == float("inf"):
                logger.info("subscribe: reading again")
            stalled_since = None
            try:
                ready = dict(poller.poll(self.POLL_MS))
            except zmq.ZMQError as err:
                if self._stop.is_set():
                    return
                logger.warning("subscribe poll failed: %s", err)
                continue
            frames = self._read(sockets, ready, hooks, min(room, self.BATCH))
            if frames:
                self.received += len(frames)
                if not self._handover.put(self._decode_all(frames)):
                    return

    def _stalled(self, since: float) -> None:
        self.stalls += 1
        logger.warning("subscribe: intake paused for %.0f s: the daemon's queue is full "
                       "(daemon.queue_size); messages wait in ZeroMQ's buffers "
                       "(subscribe.receive_hwm = %d per publisher) and beyond them the "
                       "publisher drops what it sends, unseen", time.monotonic() - since,
                       self._hwm)

    def _read(self, sockets: list[Any], ready: dict[Any, int],
              hooks: dict[Any, Callable[[Message], None]], limit: int) -> list[bytes]:
        """Up to ``limit`` frames, shared among the ready sockets (a busy publisher must
        not starve a quiet one), starting with a different socket each time."""
        frames: list[bytes] = []
        ready_socks = [sock for sock in sockets if ready.get(sock) == zmq.POLLIN]
        if not ready_socks:
            return frames
        self._turn = (self._turn + 1) % len(ready_socks)
        ready_socks = ready_socks[self._turn:] + ready_socks[:self._turn]
        share = max(1, limit // len(ready_socks))
        for sock in ready_socks:
            mine = 0
            while mine < share and len(frames) < limit and not self._stop.is_set():
                try:
                    raw = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                except zmq.ZMQError as err:
                    logger.warning("subscribe receive failed: %s", err)
                    break
                mine += 1
                if sock in hooks:
                    self._hook(hooks[sock], raw)
                else:
                    frames.append(raw)
        return frames

    def _decode_one(self, raw: bytes) -> Request | Rejection:
        return decode(raw, origin="subscribe", limits=self._limits)

    def _decode_all(self, frames: list[bytes]) -> list[Request | Rejection]:
        """Decode on a check thread: a check that outlives ``file_timeout`` answers its
        message (``file_unreadable``) and the rest go on without it; at stop, what is
        not decoded yet becomes a ``shutdown`` failure."""
        out: list[Request | Rejection] = []
        timeout = self._limits.file_timeout
        while frames:
            if self._checks.full:  # every check thread is stuck: refused at once
                stuck = self._checks.busy
                return out + [overdue(self._unchecked(raw), timeout, stuck=stuck)
                              for raw in frames]
            batch = Batch(frames, self._decode_one)
            try:
                self._checks.submit(batch.run)
            except RuntimeError:  # closed: stopping
                return out + [self._unchecked(raw, stop=True) for raw in frames]
            queued = time.monotonic()
            while not batch.done.wait(0.1):
                if self._stop.is_set() or time.monotonic() - (batch.started or queued) > timeout:
                    break
            done = batch.abandon()
            out += done
            rest = frames[len(done):]
            if not rest:
                break
            if self._stop.is_set():
                return out + [self._unchecked(raw, stop=True) for raw in rest]
            if batch.started is None:  # never began: every check thread is stuck
                stuck = self._checks.busy
                return out + [overdue(self._unchecked(raw), timeout, stuck=stuck)
                              for raw in rest]
            logger.warning("subscribe: a file check took longer than daemon.file_timeout "
                           "(%g s); its message is refused", timeout)
            out.append(overdue(self._unchecked(rest[0]), timeout))
            frames = rest[1:]
        return out

    def _unchecked(self, raw: bytes, *, stop: bool = False) -> Request | Rejection:
        """The frame decoded without touching the file system (to answer it)."""
        item = decode(raw, origin="subscribe", limits=self._limits, check=False)
        return not_accepted(item) if stop else item

    @staticmethod
    def _hook(callback: Callable[[Message], None], raw: bytes) -> None:
        try:
            callback(decode_message(raw.decode("utf-8")))
        except Exception as err:  # a bad address announcement must not stop the reader
            logger.warning("nameserver address message ignored: %s", err)


class SubscribeInput:
    """The ``subscribe`` input: a SubscribeReceiver (a thread of its own) on the seam."""

    name = "subscribe"

    def __init__(self, config: SubscribeConfig, intake: Intake) -> None:
        self.topics = list(config.topics)
        self.receiver = SubscribeReceiver(config.settings, intake.submit, intake.loop,
                                          on_fatal=intake.fatal, limits=intake.limits)
        self._stopped = False

    def __repr__(self) -> str:
        return f"<SubscribeInput {self.receiver!r}>"

    def describe(self) -> str:
        return f"subscribed to {self.topics}"

    @property
    def received(self) -> int:
        return self.receiver.received

    async def start(self) -> None:
        await asyncio.to_thread(self.receiver.start)  # builds posttroll's sockets: may block

    async def stop(self) -> None:
        await asyncio.to_thread(self.receiver.stop)  # joins the reader thread
        self._stopped = True

    def undelivered(self) -> list[Request | Rejection]:
        return list(self.receiver.undelivered)

    async def close(self) -> None:
        if not self._stopped:  # stopping the reader closed its sockets already
            await self.stop()


def create(config: Config, intake: Intake) -> SubscribeInput | None:
    """The pub-sub input, if ``subscribe`` is configured."""
    return None if config.subscribe is None else SubscribeInput(config.subscribe, intake)
