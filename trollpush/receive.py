"""Receive: posttroll pub-sub and ZeroMQ REQ/REP in, Requests (or Rejections) out.

Decoding never raises into the loops: every frame becomes either a Request or a
Rejection that carries the reason, so one bad publisher cannot stop the daemon.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import zmq
import zmq.asyncio
from posttroll.message import Message
from posttroll.subscriber import create_subscriber_from_dict_config

from .errors import MessageError, Reason, SetupError
from .models import FILE_KEYS, RESERVED_KEYS, Rejection, Replier, Request, SourceFile

logger = logging.getLogger(__name__)

MESSAGE_TYPES = ("file", "dataset", "collection")
REPLY_MODES = ("final", "accepted", "both")
Sink = Callable[[Request | Rejection], Coroutine[Any, Any, None]]
OnFatal = Callable[[str, BaseException], None]


def _local_names() -> frozenset[str]:
    names = {"", "localhost", "127.0.0.1", "::1"}
    for fn in (socket.gethostname, socket.getfqdn):
        with contextlib.suppress(OSError):  # depends on the host's resolver
            names.add(fn().lower())
    return frozenset(names)


LOCAL_NAMES = _local_names()


def local_path(uri: str) -> Path:
    """The local path a uri names; MessageError if it is remote or not a path."""
    if not isinstance(uri, str) or not uri:
        raise MessageError(Reason.MISSING_URI, f"uri must be a non-empty string, got {uri!r}")
    if "\x00" in uri:
        raise MessageError(Reason.BAD_MESSAGE, f"{uri!r}: NUL in the uri")
    if "://" not in uri:
        path = uri
    else:
        try:
            parts = urlsplit(uri)
            host = (parts.hostname or "").lower()
        except ValueError as err:
            raise MessageError(Reason.BAD_MESSAGE, f"{uri!r}: not a valid URI ({err})") from err
        if parts.scheme not in ("file", "ssh", "scp", "sftp"):
            raise MessageError(Reason.REMOTE_FILE,
                               f"{uri}: scheme {parts.scheme!r} is not a local file")
        if host not in LOCAL_NAMES:
            raise MessageError(Reason.REMOTE_FILE,
                               f"{uri}: the file is on host {host!r}, not on this host")
        path = unquote(parts.path)
        if "\x00" in path:
            raise MessageError(Reason.BAD_MESSAGE, f"{uri!r}: NUL in the path")
    if not os.path.isabs(path):
        raise MessageError(Reason.BAD_MESSAGE, f"{uri}: the path must be absolute")
    return Path(os.path.normpath(path))


def check_file(path: Path, uri: str) -> tuple[int, int, int]:
    """Refuse what is not an existing, readable regular file; its (size, mtime, inode)."""
    try:
        st = os.stat(path)
    except FileNotFoundError as err:
        raise MessageError(Reason.FILE_MISSING, f"{uri}: no such file") from err
    except OSError as err:
        raise MessageError(Reason.FILE_UNREADABLE, f"{uri}: {err.strerror}") from err
    except ValueError as err:  # e.g. a lone surrogate the file system cannot encode
        raise MessageError(Reason.BAD_MESSAGE, f"{uri!r}: not a usable path ({err})") from err
    if not stat.S_ISREG(st.st_mode):
        raise MessageError(Reason.NOT_A_FILE, f"{uri}: not a regular file")
    if not os.access(path, os.R_OK):
        raise MessageError(Reason.FILE_UNREADABLE, f"{uri}: permission denied")
    return st.st_size, st.st_mtime_ns, st.st_ino


@dataclass(frozen=True)
class Limits:
    """What any message or request may ask for."""

    max_bytes: int | None = None  # a larger frame is refused (too_large)
    roots: tuple[str, ...] = ()  # real paths; files elsewhere are refused (not_allowed)

    def check_path(self, path: Path, uri: str) -> None:
        if not self.roots:
            return
        real = os.path.realpath(path)  # symlinks and .. resolved: no way out of a root
        if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep)
                   for root in self.roots):
            raise MessageError(Reason.NOT_ALLOWED, f"{uri}: outside the allowed roots")


NO_LIMITS = Limits()


def _source(item: Mapping[str, Any], *, check: bool, limits: Limits) -> SourceFile:
    uri = item.get("uri")
    if uri is None:
        raise MessageError(Reason.MISSING_URI, "the message has no 'uri'")
    path = local_path(uri)
    limits.check_path(path, uri)
    stat = check_file(path, uri) if check else None
    uid = item.get("uid")
    extras = {k: v for k, v in item.items() if k not in ("uri", "uid")}
    return SourceFile(uri=uri, path=path, uid=uid if isinstance(uid, str) and uid else path.name,
                      meta=extras, stat=stat)


def _items(kind: str, data: Mapping[str, Any], *, check: bool, limits: Limits
           ) -> list[SourceFile]:
    if kind == "file":
        return [_source({"uri": data.get("uri"), "uid": data.get("uid")}, check=check,
                        limits=limits)]
    key = "dataset" if kind == "dataset" else "collection"
    items = data.get(key)
    if not isinstance(items, list) or not items:
        raise MessageError(Reason.MISSING_URI, f"a {kind} message needs a non-empty {key!r} list")
    out: list[SourceFile] = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise MessageError(Reason.BAD_MESSAGE, f"{key}[{i}] is not a mapping")
        if kind == "collection" and "dataset" in item:
            out.extend(_items("dataset", item, check=check, limits=limits))
        else:
            out.append(_source(item, check=check, limits=limits))
    return out


def build_request(message: Message, *, origin: str, reply: Replier | None = None,
                  check: bool = True, limits: Limits = NO_LIMITS) -> Request:
    """A Request from a decoded posttroll message; MessageError says why not."""
    kind = message.type
    if kind not in MESSAGE_TYPES:
        raise MessageError(Reason.UNSUPPORTED_TYPE,
                           f"message type {kind!r} is not one of {', '.join(MESSAGE_TYPES)}")
    data = message.data
    if not isinstance(data, Mapping):
        raise MessageError(Reason.BAD_MESSAGE, "the message data is not a mapping")
    destination = endpoint = None
    overwrite = False
    if origin == "request":
        destination = data.get("destination")
        endpoint = data.get("endpoint")
        if destination is not None and not isinstance(destination, str):
            raise MessageError(Reason.BAD_DESTINATION,
                               f"destination {destination!r} is not a string")
        if endpoint is not None and not isinstance(endpoint, str):
            raise MessageError(Reason.BAD_DESTINATION, f"endpoint {endpoint!r} is not a string")
        overwrite = data.get("overwrite", False)
        if not isinstance(overwrite, bool):
            raise MessageError(Reason.BAD_MESSAGE, f"overwrite {overwrite!r} is not true or false")
    files = _items(kind, data, check=check, limits=limits)
    hidden = FILE_KEYS | (RESERVED_KEYS if origin == "request" else frozenset())
    metadata = {k: v for k, v in data.items() if k not in hidden}
    return Request(id=uuid.uuid4().hex[:12], subject=message.subject, type=kind, data=data,
                   metadata=metadata, files=tuple(files), origin=origin,
                   destination=destination, endpoint=endpoint, overwrite=overwrite,
                   reply=reply)


def decode_message(text: str) -> Message:
    """Parse one posttroll wire string.

    ``Message.decode`` of posttroll 1.16 emits a PendingDeprecationWarning on every call;
    the pickle protocol runs the same parser without it.
    """
    message: Message = Message.__new__(Message)
    message.__setstate__(text)
    return message


def decode(raw: bytes, *, origin: str, reply: Replier | None = None,
           limits: Limits = NO_LIMITS) -> Request | Rejection:
    """Turn one frame into a Request or a Rejection; never raises."""
    if limits.max_bytes is not None and len(raw) > limits.max_bytes:
        return Rejection(Reason.TOO_LARGE, f"{len(raw)} bytes, more than max_request_bytes "
                         f"({limits.max_bytes})", origin, reply=reply)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return Rejection(Reason.BAD_MESSAGE, f"frame is not UTF-8 ({err.reason} at byte "
                         f"{err.start})", origin, reply=reply)
    try:
        message = decode_message(text)
    except Exception as err:  # posttroll raises MessageError, ValueError, IndexError, ...
        return Rejection(Reason.BAD_MESSAGE, f"not a posttroll message ({type(err).__name__}: "
                         f"{str(err)[:200]})", origin, reply=reply)
    data = message.data if isinstance(message.data, Mapping) else {}
    try:
        return build_request(message, origin=origin, reply=reply, limits=limits)
    except MessageError as err:
        uri = data.get("uri") if isinstance(data.get("uri"), str) else None
        dest = data.get("destination") if isinstance(data.get("destination"), str) else None
        meta = {k: v for k, v in data.items() if k not in FILE_KEYS | RESERVED_KEYS}
        return Rejection(err.reason, err.detail, origin, subject=message.subject, uri=uri,
                         destination=dest, metadata=meta, reply=reply, message_type=message.type)
    except Exception as err:  # last line of defence: one frame must never stop a loop
        logger.exception("unexpected error decoding a %s message", origin)
        return Rejection(Reason.BAD_MESSAGE, f"cannot read the message ({type(err).__name__})",
                         origin, subject=message.subject, reply=reply,
                         message_type=message.type)


# --- posttroll pub-sub -----------------------------------------------------------------


class SubscribeReceiver:
    """posttroll subscriber run in a thread, bridged to the event loop with backpressure.

    posttroll builds the sockets (nameserver discovery, address updates); frames are read
    raw here so that a malformed one is logged with its reason instead of ending the loop.
    """

    POLL_MS = 200
    WINDOW = 1000

    def __init__(self, settings: Mapping[str, Any], sink: Sink,
                 loop: asyncio.AbstractEventLoop, *, on_fatal: OnFatal | None = None,
                 limits: Limits = NO_LIMITS) -> None:
        self._limits = limits
        self._settings = dict(settings)
        self._sink = sink
        self._loop = loop
        self._on_fatal = on_fatal
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._subscriber: Any = None
        self.received = 0
        #: items read but not handed over when intake stopped (answered by the daemon)
        self.undelivered: list[Request | Rejection] = []
        self._outstanding: collections.deque[tuple[Request | Rejection,
                                                   concurrent.futures.Future[None]]] = (
            collections.deque())

    def __repr__(self) -> str:
        return f"<SubscribeReceiver topics={self._settings.get('topics')} received={self.received}>"

    def start(self) -> None:
        """Create the subscriber (may wait for a nameserver) and start the reading thread."""
        self._subscriber = create_subscriber_from_dict_config(dict(self._settings))
        self._thread = threading.Thread(target=self._supervised, name="trollpush-subscribe",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop reading and close the subscriber; safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            if self._thread.is_alive():  # never close sockets under a live reader
                logger.error("the subscriber thread did not stop; leaving its sockets open")
                return
            self._thread = None
        if self._subscriber is not None:
            self._subscriber.close()
            self._subscriber = None

    def _supervised(self) -> None:
        try:
            self._run()
            self._settle()
        except Exception as err:
            if self._on_fatal is not None and not self._stop.is_set():
                self._loop.call_soon_threadsafe(self._on_fatal, "the subscriber", err)
            else:
                logger.exception("the subscriber stopped")

    def _hooks(self) -> dict[Any, Callable[[Message], None]]:
        """posttroll's hook sockets (the nameserver address listener, ``addr_listener``).

        posttroll serves them inside its own receive loop and has no public accessor, so
        they are read from its backend here; without them only static addresses work.
        """
        backend = getattr(self._subscriber, "_subscriber", None)
        return dict(getattr(backend, "_hooks_cb", {}) or {})

    def _run(self) -> None:
        poller: zmq.Poller | None = None
        sockets: list[Any] = []
        while not self._stop.is_set():
            hooks = self._hooks()
            current = list(self._subscriber.subscribers) + list(hooks)
            if poller is None or current != sockets:
                poller, sockets = zmq.Poller(), current
                for s in sockets:
                    poller.register(s, zmq.POLLIN)
            try:
                ready = dict(poller.poll(self.POLL_MS))
            except zmq.ZMQError as err:
                if self._stop.is_set():
                    return
                logger.warning("subscribe poll failed: %s", err)
                continue
            for sock in sockets:
                if ready.get(sock) != zmq.POLLIN:
                    continue
                while not self._stop.is_set():
                    try:
                        raw = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    except zmq.ZMQError as err:
                        logger.warning("subscribe receive failed: %s", err)
                        break
                    if sock in hooks:
                        self._hook(hooks[sock], raw)
                        continue
                    self.received += 1
                    self._deliver(decode(raw, origin="subscribe", limits=self._limits))

    @staticmethod
    def _hook(callback: Callable[[Message], None], raw: bytes) -> None:
        try:
            callback(decode_message(raw.decode("utf-8")))
        except Exception as err:  # a bad address announcement must not stop the reader
            logger.warning("nameserver address message ignored: %s", err)

    def _deliver(self, item: Request | Rejection) -> None:
        """Hand an item over without waiting for it to be journaled: up to WINDOW hand-overs
        run at once, so the journal commits them in groups and acceptance keeps pace with
        a burst (what is read but not yet journaled dies with the process)."""
        future = asyncio.run_coroutine_threadsafe(self._sink(item), self._loop)
        self._outstanding.append((item, future))
        while len(self._outstanding) >= self.WINDOW and not self._stop.is_set():
            oldest = self._outstanding[0][1]
            try:
                oldest.result(timeout=0.5)
            except TimeoutError:
                continue
            except Exception:  # the sink logs its own errors; keep the reader alive
                logger.exception("subscribe delivery failed")
            self._outstanding.popleft()
        while self._outstanding and self._outstanding[0][1].done():
            self._outstanding.popleft()

    def _settle(self) -> None:
        """At stop: let hand-overs finish briefly, then take back what did not get in."""
        deadline = time.monotonic() + 2
        for item, future in self._outstanding:
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
                continue
            except TimeoutError:
                future.cancel()
            except BaseException:  # cancelled or failed: not in the pipeline
                self.undelivered.append(item)
                continue
            try:
                future.result(timeout=5)
            except BaseException:  # cancelled (or never settled): it did not get in
                self.undelivered.append(item)
        self._outstanding.clear()


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


class RequestServer:
    """ROUTER socket serving REQ clients concurrently (a REP socket would serialise them)."""

    def __init__(self, address: str, sink: Sink, *, on_fatal: OnFatal | None = None,
                 limits: Limits = NO_LIMITS) -> None:
        self._limits = limits
        self.address = address
        self._sink = sink
        self._on_fatal = on_fatal
        self._ctx = zmq.asyncio.Context()
        self._sock: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        self.received = 0
        self._stopping = False
        #: items read but not handed over when intake stopped (answered by the daemon)
        self.undelivered: list[Request | Rejection] = []

    def __repr__(self) -> str:
        return f"<RequestServer {self.address} received={self.received}>"

    def start(self) -> None:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if self._limits.max_bytes is not None:  # a hard bound; the soft one answers
            sock.setsockopt(zmq.MAXMSGSIZE, max(self._limits.max_bytes * 16, 1 << 20))
        try:
            sock.bind(self.address)
        except zmq.ZMQError as err:
            sock.close(linger=0)
            raise SetupError(f"requests.address {self.address}: cannot listen ({err})") from err
        if self.address.endswith(":0"):
            self.address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._sock = sock
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="requests")
        self._task.add_done_callback(self._ended)

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
        """Close the socket (peers see the connection end); safe to call twice."""
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if not self._ctx.closed:
            self._ctx.destroy(linger=0)

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
            # off the loop: checking files may block (a stale NFS mount, a big dataset)
            decoding = asyncio.ensure_future(asyncio.to_thread(self._decode, body[0], envelope))
            try:
                item = await asyncio.shield(decoding)
            except asyncio.CancelledError:
                self.undelivered.append(await decoding)  # stopping: keep it to answer it
                raise
            try:
                await self._sink(item)
            except asyncio.CancelledError:
                self.undelivered.append(item)
                raise

    def _decode(self, raw: bytes, envelope: list[bytes]) -> Request | Rejection:
        assert self._sock is not None
        reply = _RouterReply(self._sock, envelope, "final")
        item = decode(raw, origin="request", reply=reply, limits=self._limits)
        data = item.data if isinstance(item, Request) else None
        mode = data.get("reply", "final") if data is not None else "final"
        if mode not in REPLY_MODES:
            assert isinstance(item, Request)
            return Rejection(Reason.BAD_MESSAGE,
                             f"reply {mode!r} is not one of {', '.join(REPLY_MODES)}",
                             "request", subject=item.subject, uri=item.files[0].uri,
                             destination=item.destination, metadata=item.metadata, reply=reply,
                             message_type=item.type)
        reply.mode = mode
        return item
