"""Receive: posttroll pub-sub and ZeroMQ REQ/REP in, Requests (or Rejections) out.

Decoding (``decode``) never raises into the loops: every frame becomes either a Request
or a Rejection that carries the reason, so one bad publisher cannot stop the daemon.
Every frame's file checks run on check threads, bounded by ``daemon.file_timeout``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import zmq
import zmq.asyncio
from posttroll.message import Message

from ._checks import CheckThreads
from ._intake import Batch, Discovery, Handover
from ._ipc import SocketFile, clear_stale, owner_only, restrict
from .config import RECEIVE_HWM
from .decode import (
    LOCAL_NAMES,
    MESSAGE_TYPES,
    NO_LIMITS,
    Limits,
    build_request,
    check_file,
    decode,
    decode_message,
    local_path,
    not_accepted,
    overdue,
    refused,
)
from .errors import Reason, SetupError
from .models import Rejection, Request

__all__ = ["LOCAL_NAMES", "MESSAGE_TYPES", "NO_LIMITS", "Limits", "RequestServer",
           "SubscribeReceiver", "build_request", "check_file", "decode", "decode_message",
           "local_path", "not_accepted"]

logger = logging.getLogger(__name__)

REPLY_MODES = ("final", "accepted", "both")
Sink = Callable[[Request | Rejection], Coroutine[Any, Any, None]]
OnFatal = Callable[[str, BaseException], None]


# --- posttroll pub-sub -----------------------------------------------------------------


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


# --- ZeroMQ REQ/REP ---------------------------------------------------------------------


class _RouterReply:
    """Replies to one REQ (or REQ-style DEALER) peer through the shared ROUTER socket."""

    def __init__(self, sock: zmq.asyncio.Socket, envelope: list[bytes], mode: str) -> None:
        self._sock = sock
        self._envelope = envelope
        self.mode = mode
        self.sent = 0

    @property
    def wants_ack(self) -> bool:
        return self.mode in ("accepted", "both")

    @property
    def wants_final(self) -> bool:
        return self.mode in ("final", "both")

    async def send(self, message: Any) -> None:
        limit = 2 if self.mode == "both" else 1
        if self.sent >= limit:
            return
        self.sent += 1
        try:
            await self._sock.send_multipart([*self._envelope, b"", message.encode().encode()])
        except zmq.ZMQError as err:
            logger.warning("reply to a request failed: %s", err)


def _on_loop[T](future: concurrent.futures.Future[T], loop: asyncio.AbstractEventLoop
             ) -> asyncio.Future[T]:
    """An asyncio future that follows a thread's future; unlike ``wrap_future`` it stays
    quiet when the thread finishes after the loop closed (a check stuck past shutdown)."""
    waiter: asyncio.Future[T] = loop.create_future()

    def settle(done: concurrent.futures.Future[T]) -> None:
        if waiter.done():
            return
        if done.cancelled():
            waiter.cancel()
        elif (err := done.exception()) is not None:
            waiter.set_exception(err)
        else:
            waiter.set_result(done.result())

    def copy(done: concurrent.futures.Future[T]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, done)

    future.add_done_callback(copy)
    return waiter


class RequestServer:
    """ROUTER socket serving REQ clients concurrently (a REP socket would serialise them).

    ZeroMQ authenticates nobody here: on ``tcp://`` anyone who reaches the port may submit,
    and libzmq holds whatever one peer sends while its message is incomplete.  On
    ``ipc://PATH`` the socket file's ``mode`` and ``group`` decide who may connect.
    """

    def __init__(self, address: str, sink: Sink, *, on_fatal: OnFatal | None = None,
                 limits: Limits = NO_LIMITS, mode: int | None = None,
                 group: int | None = None) -> None:
        self._limits = limits
        self.address = address
        self._sink = sink
        self._on_fatal = on_fatal
        self._mode = mode
        self._group = group
        self._ctx = zmq.asyncio.Context()
        self._sock: zmq.asyncio.Socket | None = None
        self._file: SocketFile | None = None
        self._task: asyncio.Task[None] | None = None
        self._checks = CheckThreads("trollpush-request-check")
        self.received = 0
        self._stopping = False
        #: items read but not handed over when intake stopped (answered by the daemon)
        self.undelivered: list[Request | Rejection] = []

    def __repr__(self) -> str:
        return f"<RequestServer {self.address} received={self.received}>"

    @property
    def ipc_path(self) -> str | None:
        """The socket file, for ``ipc://`` addresses (not abstract ones)."""
        if self.address.startswith("ipc://") and not self.address.startswith("ipc://@"):
            return self.address[len("ipc://"):]
        return None

    def start(self) -> None:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if self._limits.max_bytes is not None:  # a hard bound; the soft one answers
            sock.setsockopt(zmq.MAXMSGSIZE, max(self._limits.max_bytes * 16, 1 << 20))
        path = self.ipc_path
        try:
            if path is not None:
                clear_stale(path, self.address)
            with owner_only() if path is not None else contextlib.nullcontext():
                sock.bind(self.address)
            if path is not None:  # owner-only until here; now the configured access
                self._file = restrict(path, self.address, 0o600 if self._mode is None
                                      else self._mode, self._group)
        except zmq.ZMQError as err:
            sock.close(linger=0)
            raise SetupError(f"requests.address {self.address}: cannot listen ({err})") from err
        except SetupError:
            sock.close(linger=0)
            raise
        if self.address.endswith(":0"):
            self.address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._warn_if_open()
        self._sock = sock
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="requests")
        self._task.add_done_callback(self._ended)

    def _warn_if_open(self) -> None:
        if not self.address.startswith("tcp://"):
            return
        host = self.address[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
        if host not in ("127.0.0.1", "::1", "localhost"):
            logger.warning("requests.address %s is reachable beyond this host and has no "
                           "authentication: anyone who reaches it may submit files; prefer "
                           "ipc:// with requests.mode / requests.group, or loopback",
                           self.address)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The serving task ended without stop(): the socket died (zmq cancels pending
        receives when a socket closes) or an error escaped."""
        if self._stopping or self._on_fatal is None:
            return
        err = None if task.cancelled() else task.exception()
        self._on_fatal("the request server",
                       err or SetupError(f"requests.address {self.address}: the socket closed"))

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def close(self) -> None:
        """Close the socket (peers see the connection end) and remove its socket file;
        safe to call twice."""
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if not self._ctx.closed:
            self._ctx.destroy(linger=0)
        if self._file is not None:
            self._file.remove()
            self._file = None
        self._checks.close()

    async def _serve(self) -> None:
        assert self._sock is not None
        while True:
            frames = await self._sock.recv_multipart()
            self.received += 1
            try:
                split = frames.index(b"")
            except ValueError:
                split = len(frames) - 1
            envelope, body = frames[:split], frames[split + 1:]
            if not envelope:
                continue  # cannot be answered; ROUTER always gives an identity
            if len(body) != 1:
                reply = _RouterReply(self._sock, envelope, "final")
                await self._sink(Rejection(Reason.BAD_MESSAGE,
                                           f"expected one message frame, got {len(body)}",
                                           "request", reply=reply))
                continue
            item = await self._checked(body[0], envelope)
            try:
                await self._sink(item)
            except asyncio.CancelledError:
                self.undelivered.append(item)
                raise

    async def _checked(self, raw: bytes, envelope: list[bytes]) -> Request | Rejection:
        """Decode off the loop (checking files may block: a stale NFS mount, a big
        dataset), for at most ``file_timeout`` seconds."""
        timeout = self._limits.file_timeout
        if self._checks.full:  # every check thread is stuck: refused at once
            return overdue(self._decode(raw, envelope, False), timeout,
                           stuck=self._checks.busy)
        future = self._checks.submit(self._decode, raw, envelope, True)
        try:
            async with asyncio.timeout(timeout):
                return await _on_loop(future, asyncio.get_running_loop())
        except TimeoutError:
            future.cancel()  # if it has not begun
            logger.warning("request: a file check took longer than daemon.file_timeout "
                           "(%g s); the request is refused", timeout)
            return overdue(self._decode(raw, envelope, False), timeout)
        except asyncio.CancelledError:  # stopping: answer it, it never reached the journal
            future.cancel()
            done = future.done() and not future.cancelled() and future.exception() is None
            item = future.result() if done else self._decode(raw, envelope, False)
            self.undelivered.append(not_accepted(item))
            raise

    def _decode(self, raw: bytes, envelope: list[bytes], check: bool) -> Request | Rejection:
        assert self._sock is not None
        reply = _RouterReply(self._sock, envelope, "final")
        item = decode(raw, origin="request", reply=reply, limits=self._limits, check=check)
        data = item.data if isinstance(item, Request) else None
        mode = data.get("reply", "final") if data is not None else "final"
        if mode not in REPLY_MODES:
            assert isinstance(item, Request)
            return refused(item, Reason.BAD_MESSAGE,
                            f"reply {mode!r} is not one of {', '.join(REPLY_MODES)}")
        reply.mode = mode
        return item
