"""The REQ/REP input: ZeroMQ requests in on a ROUTER socket, each answered by its peer.

Decoding (``trollpush.messages.decode``) never raises into the serving task; each
request's file checks run on check threads, bounded by ``daemon.file_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio

from ..config import Config, RequestsConfig
from ..errors import Reason, SetupError
from ..messages import NO_LIMITS, Limits, decode, refused, reply_frame
from ..models import Rejection, Request
from ..status import is_status, status_reply
from ._checks import CheckThreads, checked
from ._ipc import LOOPBACK, SocketFile, clear_stale, owner_only, restrict

if TYPE_CHECKING:
    from . import Intake, OnFatal, Sink

logger = logging.getLogger("trollpush.receive")  # the name users' log configs know

REPLY_MODES = ("final", "accepted", "both")


class _RouterReply:
    """Replies to one REQ (or REQ-style DEALER) peer through the shared ROUTER socket."""

    def __init__(self, sock: zmq.asyncio.Socket, envelope: list[bytes], mode: str) -> None:
        self._sock = sock
        self._envelope = envelope
        self.mode = mode
        self.sent = 0
        #: the peer asked for progress frames (``progress: true``; a DEALER peer)
        self.wants_progress = False

    @property
    def wants_ack(self) -> bool:
        return self.mode in ("accepted", "both")

    @property
    def wants_final(self) -> bool:
        return self.mode in ("final", "both")

    @property
    def _done(self) -> bool:
        """Every reply the peer asked for has gone."""
        return self.sent >= (2 if self.mode == "both" else 1)

    async def send(self, message: Any) -> None:
        if self._done:
            return
        self.sent += 1
        await self._write(message, logging.WARNING, "reply")

    async def progress(self, message: Any) -> None:
        """A progress frame: only if asked for, and never after the final reply."""
        if self.wants_progress and not self._done:
            await self._write(message, logging.DEBUG, "progress frame")

    async def _write(self, message: Any, level: int, what: str) -> None:
        try:
            await self._sock.send_multipart([*self._envelope, b"", reply_frame(message)])
        except zmq.ZMQError as err:
            logger.log(level, "%s to a request failed: %s", what, err)


class RequestServer:
    """ROUTER socket serving REQ clients concurrently (a REP socket would serialise them).

    ZeroMQ authenticates nobody here: on ``tcp://`` anyone who reaches the port may submit,
    and libzmq holds whatever one peer sends while its message is incomplete.  On
    ``ipc://PATH`` the socket file's ``mode`` and ``group`` decide who may connect.
    """

    def __init__(self, address: str, sink: Sink, *, on_fatal: OnFatal | None = None,
                 limits: Limits = NO_LIMITS, mode: int | None = None,
                 group: int | None = None,
                 status: Callable[[], dict[str, Any]] | None = None) -> None:
        self._limits = limits
        self._status = status  # what a status request is answered with
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
        if host not in LOOPBACK:
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
            try:
                split = frames.index(b"")
            except ValueError:
                split = len(frames) - 1
            envelope, body = frames[:split], frames[split + 1:]
            if self._status is not None and envelope and len(body) == 1 \
                    and is_status(body[0]):  # answered now: no request, nothing counted
                await _RouterReply(self._sock, envelope, "final").send(
                    status_reply(self._status()))
                continue
            self.received += 1
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
        """Decode off the loop (checking files may block), for at most ``file_timeout``."""
        return await checked(self._checks, functools.partial(self._decode, raw, envelope),
                             self._limits.file_timeout, self.undelivered)

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
        reply.wants_progress = data is not None and data.get("progress") is True
        return item


class RequestsInput:
    """The ``requests`` input: a RequestServer (a task on the loop) on the seam."""

    name = "requests"
    #: what its requests carry as their origin (journaled with them): the ``input``
    #: label of their series, and of what it received
    origin = "request"

    def __init__(self, config: RequestsConfig, intake: Intake) -> None:
        self.server = RequestServer(config.address, intake.submit, on_fatal=intake.fatal,
                                    limits=intake.limits, mode=config.mode,
                                    group=config.group, status=intake.status)

    def __repr__(self) -> str:
        return f"<RequestsInput {self.server!r}>"

    def describe(self) -> str:
        return f"requests on {self.server.address}"

    @property
    def received(self) -> int:
        return self.server.received

    async def start(self) -> None:
        self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    def undelivered(self) -> list[Request | Rejection]:
        return list(self.server.undelivered)

    async def close(self) -> None:
        self.server.close()


def create(config: Config, intake: Intake) -> RequestsInput | None:
    """The REQ/REP input, if ``requests`` is configured."""
    return None if config.requests is None else RequestsInput(config.requests, intake)
