"""The s3daemon input: lsst-dm/s3daemon's line protocol over TCP, for its unchanged clients.

A client connects, sends one UTF-8 line ``<file> <alias>/<bucket>/<key>\\n`` (the alias
is ignored and may be empty; the second field may also be ``s3://bucket/key``) and reads
until the server closes: the bare bytes ``Success`` once the object has landed, else an
error text ``<reason>: <message>``.  The line becomes a direct request, built and checked
like a REQ/REP one by :mod:`trollpush.messages` and journaled by the intake before
anything else happens.  A client that hangs up before its answer abandons its request.

Bounded: a line of at most ``daemon.max_request_bytes`` that must arrive within
``s3daemon.line_timeout``; at most ``s3daemon.max_connections`` clients served at once,
the next ones waiting in the kernel's listen queue (as s3daemon's own server lets them
wait).  A connection that brings no line is answered with an error text and logged; it
is not a request, so nothing of it is journaled or announced.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import logging
import posixpath
import socket
from typing import TYPE_CHECKING, Any

from posttroll.message import Message

from ..config import Config, S3DaemonConfig
from ..config.defaults import DAEMON
from ..errors import Reason, RouteError, SetupError
from ..messages import Limits, failures_of, interpret, new_message, parse_destination
from ..models import Rejection, Replier, Request
from ._checks import CheckThreads, checked

if TYPE_CHECKING:
    from . import Intake

logger = logging.getLogger("trollpush.receive")  # the name users' log configs know

ORIGIN = "s3daemon"
#: the subject of the requests it makes (logs, a combined reply)
SUBJECT = "/trollpush/s3daemon/"
#: the answer when the object landed: what s3daemon's client looks for
SUCCESS = b"Success"
#: s3daemon's client reads its answer with one recv(4096): an error text stays shorter
MAX_ANSWER = 4000
#: seconds a client gets, once answered, to close its end (see _Connection.linger)
LINGER = 2.0
#: clients the kernel may hold, connected, while every slot is taken
BACKLOG = 1024
#: accept() errors that mean "not now" (out of descriptors or memory), not "broken"
_TRANSIENT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                        errno.ECONNABORTED})

Item = Request | Rejection


def answer(message: Message) -> bytes:
    """What the client reads for the final message of its request."""
    failures = failures_of(message)
    if not failures:
        return SUCCESS
    text = "; ".join(f"{f.get('reason')}: {f.get('error')}" for f in failures)
    return text.encode()[:MAX_ANSWER].decode("utf-8", "ignore").encode()


def parse_line(line: bytes, check: bool, *, endpoint: str | None, limits: Limits,
               reply: Replier | None = None) -> Item:
    """One line (its newline taken off) as a direct request, or a Rejection that says why
    not; never raises.  ``check=False``: no file-system access at all."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        return Rejection(Reason.BAD_MESSAGE, f"the line is not UTF-8 ({err.reason} at byte "
                         f"{err.start})", ORIGIN, subject=SUBJECT, reply=reply)
    fields = text.rstrip().split(" ")
    if len(fields) != 2 or not all(fields):
        return Rejection(Reason.BAD_MESSAGE, "expected '<file> <alias>/<bucket>/<key>', got "
                         f"{text[:200]!r}", ORIGIN, subject=SUBJECT, reply=reply)
    path, dest = fields
    try:
        bucket, key = parse_destination(dest, posixpath.basename(path), empty_alias=True)
    except RouteError as err:
        return Rejection(err.reason, err.detail, ORIGIN, subject=SUBJECT, uri=path,
                         destination=dest, reply=reply, message_type="file")
    data = {"uri": path, "destination": f"s3://{bucket}/{key}", "endpoint": endpoint}
    return interpret(new_message(SUBJECT, "file", data), origin=ORIGIN, reply=reply,
                     limits=limits, check=check)


async def _hangup(reader: asyncio.StreamReader) -> str:
    """Read (and drop) what comes after the line until the client goes: how it went."""
    try:
        while await reader.read(65536):
            pass
    except OSError as err:
        return f"reset its connection ({err.strerror or err})"
    return "closed its connection"


class _Connection:
    """One client: its streams, where it stands, and its one answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 registry: set[_Connection]) -> None:
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "a client"
        self.task = asyncio.current_task()
        self.answered = asyncio.Event()
        #: the service answers it now (its item went to the intake, or to undelivered)
        self.handed = False
        #: the intake took it: a stop leaves it to its answer instead of cutting it off
        self.submitted = False
        #: its task ended before the answer: the answer closes the connection
        self.orphaned = False
        #: reads while the request runs, to see a hang-up
        self.watch: asyncio.Task[str] | None = None
        self._registry = registry
        registry.add(self)

    def answer(self, data: bytes) -> None:
        """Write the answer, then our end of the stream (the client reads until then)."""
        if self.answered.is_set():
            return
        self.answered.set()
        if self.watch is not None:
            self.watch.cancel()  # the lingering read takes over
        if not self.writer.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                self.writer.write(data)
                if self.writer.can_write_eof():
                    self.writer.write_eof()
        if self.orphaned:
            self.close()

    async def linger(self) -> None:
        """Wait a little for the client to close its end: closing ours with its bytes
        unread would send a reset, which can destroy the answer still in flight."""
        if self.watch is not None:
            await asyncio.gather(self.watch, return_exceptions=True)
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(LINGER):
                while await self.reader.read(65536):
                    pass

    def close(self) -> None:
        """Close (what is written still goes out first); idempotent."""
        self._registry.discard(self)
        self.writer.close()


class _LineReply:
    """Gives the client its one answer: the pipeline's final message, or a refusal."""

    #: the client reads one answer, the outcome: no early acknowledgement
    wants_ack = False
    wants_final = True

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn

    async def send(self, message: Any) -> None:
        self._conn.answer(answer(message))


class S3DaemonInput:
    """The ``s3daemon`` input: a listening socket on the loop, and a task per client."""

    name = "s3daemon"

    def __init__(self, config: S3DaemonConfig, intake: Intake) -> None:
        self.config = config
        self.address = config.address
        self._intake = intake
        self._limits = intake.limits
        self._max_bytes = intake.limits.max_bytes or DAEMON["max_request_bytes"].default
        self._slots = asyncio.Semaphore(config.max_connections)
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._open: set[_Connection] = set()
        self._checks = CheckThreads("trollpush-s3daemon-check")
        self._stopping = False
        self.received = 0
        #: items read but not handed over when intake stopped (answered by the service)
        self._undelivered: list[Item] = []

    def __repr__(self) -> str:
        return (f"<S3DaemonInput {self.address} received={self.received} "
                f"open={len(self._open)}>")

    def describe(self) -> str:
        return f"s3daemon on {self.address}"

    async def start(self) -> None:
        host, port = self.config.host, self.config.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
        except OSError as err:
            raise SetupError(f"s3daemon.address {self.config.address}: cannot listen "
                             f"({err.strerror or err})") from err
        sock.setblocking(False)
        bound = sock.getsockname()[1]
        self.address = f"[{host}]:{bound}" if family == socket.AF_INET6 else f"{host}:{bound}"
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:  # another host name
            loopback = False
        if not loopback:
            logger.warning("s3daemon.address %s is reachable beyond this host and has no "
                           "authentication: anyone who reaches it may submit files",
                           self.address)
        self._sock = sock
        self._task = asyncio.get_running_loop().create_task(self._accept(sock),
                                                            name="s3daemon")
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The accept loop ended without stop(): the listening socket broke."""
        if self._stopping:
            return
        err = None if task.cancelled() else task.exception()
        self._intake.fatal("the s3daemon input", err or SetupError(
            f"s3daemon.address {self.address}: the listening socket closed"))

    async def stop(self) -> None:
        """Take no more clients.  Those not yet in the intake's hands are cut off (what
        they sent goes to ``undelivered``, which the service answers); the others keep
        their connection until their answer."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        waiting = {c.task for c in self._open if c.submitted}
        early = [t for t in self._tasks if t not in waiting]
        for task in early:
            task.cancel()
        await asyncio.gather(*early, return_exceptions=True)

    def undelivered(self) -> list[Item]:
        return list(self._undelivered)

    async def close(self) -> None:
        """Cut every client off and release the socket and threads; idempotent."""
        await self.stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn in list(self._open):
            conn.close()
        self._checks.close()

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()  # a free slot first: the rest wait in the kernel
            try:
                client, _ = await loop.sock_accept(sock)
            except OSError as err:
                self._slots.release()
                if err.errno not in _TRANSIENT:
                    raise
                logger.warning("s3daemon: cannot take a client now (%s); trying again",
                               err.strerror)
                await asyncio.sleep(0.1)
                continue
            except BaseException:
                self._slots.release()
                raise
            self.received += 1
            task = loop.create_task(self._client(client), name="s3daemon-client")
            self._tasks.add(task)
            task.add_done_callback(self._client_ended)

    def _client_ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and (err := task.exception()) is not None:
            logger.error("s3daemon: a client's task failed", exc_info=err)

    async def _client(self, sock: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=sock, limit=self._max_bytes)
        except OSError:
            sock.close()
            return
        conn = _Connection(reader, writer, self._open)
        try:
            await self._serve(conn)
            await conn.linger()
        except asyncio.CancelledError:
            if not conn.handed:  # still reading its line
                conn.answer(f"{Reason.SHUTDOWN}: the daemon stopped before reading this "
                            "request".encode())
            raise
        except Exception as err:  # a bug: this client gets an answer, the others go on
            logger.exception("s3daemon: serving %s failed", conn.peer)
            conn.answer(f"{Reason.INTERNAL}: {type(err).__name__}".encode())
        finally:
            if conn.handed and not conn.answered.is_set():
                conn.orphaned = True  # the service answers it (undelivered, or a stop)
            else:
                conn.close()

    async def _serve(self, conn: _Connection) -> None:
        line = await self._line(conn)
        if line is None:
            return
        reply = _LineReply(conn)
        decode = functools.partial(parse_line, line, endpoint=self.config.endpoint,
                                   limits=self._limits, reply=reply)
        conn.handed = True  # from here on, a stop hands what it has to the service
        item = await checked(self._checks, decode, self._limits.file_timeout,
                             self._undelivered, ORIGIN)
        try:
            await self._intake.submit(item)
        except asyncio.CancelledError:
            self._undelivered.append(item)
            raise
        conn.submitted = True
        if isinstance(item, Request):
            logger.debug("s3daemon: %s from %s", item.describe(), conn.peer)
            await self._outcome(conn, item)
        else:
            await conn.answered.wait()

    async def _line(self, conn: _Connection) -> bytes | None:
        """The client's line without its newline; None when it brought none (then it has
        been answered, if it is still there)."""
        seconds = self.config.line_timeout
        try:
            async with asyncio.timeout(seconds):
                return (await conn.reader.readuntil(b"\n"))[:-1]
        except TimeoutError:
            why = (Reason.BAD_MESSAGE, f"no whole line within s3daemon.line_timeout "
                   f"({seconds:g} s)")
        except asyncio.LimitOverrunError:
            why = (Reason.TOO_LARGE, f"a line longer than daemon.max_request_bytes "
                   f"({self._max_bytes} bytes)")
        except asyncio.IncompleteReadError as err:
            if not err.partial:
                logger.info("s3daemon: %s closed its connection without a line", conn.peer)
                return None
            why = (Reason.BAD_MESSAGE, f"the connection ended before the newline that ends "
                   f"the line (got {err.partial[:100]!r})")
        except OSError as err:
            logger.warning("s3daemon: %s: reading its line failed (%s)", conn.peer, err)
            return None
        reason, detail = why
        logger.warning("s3daemon: refused %s: %s (%s)", conn.peer, detail, reason)
        conn.answer(f"{reason}: {detail}".encode())
        return None

    async def _outcome(self, conn: _Connection, request: Request) -> None:
        """Wait for the answer, reading meanwhile: a client that hangs up first abandons
        its request (an upload in progress is aborted, see ``Intake.abandon``)."""
        watch = conn.watch = asyncio.create_task(_hangup(conn.reader))
        answered = asyncio.create_task(conn.answered.wait())
        try:
            await asyncio.wait((watch, answered), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            watch.cancel()
            raise
        finally:
            answered.cancel()
        if conn.answered.is_set() or watch.cancelled():
            return
        why = watch.result()
        logger.warning("s3daemon: %s %s before its answer: abandoning %s", conn.peer, why,
                       request.describe())
        self._intake.abandon(request, f"the s3daemon client {why}")
        conn.answered.set()  # nobody is left to read it: the connection closes now


def create(config: Config, intake: Intake) -> S3DaemonInput | None:
    """The s3daemon input, if ``s3daemon`` is configured."""
    return None if config.s3daemon is None else S3DaemonInput(config.s3daemon, intake)
