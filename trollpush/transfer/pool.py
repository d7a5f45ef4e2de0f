"""One warm connection pool per endpoint: the aiobotocore client and its sockets.

The first upload of a burst after minutes of silence should cost one round trip, not a
TCP (and TLS) handshake.  So the pool opens ``prewarm`` connections at start, keeps them
open through idle gaps (aiohttp keep-alive, TCP keep-alive, a cheap request when idle
longer than ``keepalive_interval``), and never sends ``Expect: 100-continue``.
An aggregate ``bandwidth_limit`` is enforced with SO_MAX_PACING_RATE on the pool's
sockets, shared by the uploads in progress and recomputed as they start and end.
``max_parallel`` slots bound the requests in flight: a single PUT takes one, a multipart
upload one per part in flight; a request waits for one at most ``queue_timeout``.
What the pool's sockets say (``TCP_INFO``: RTT, retransmissions) is read every
:data:`TCP_INFO_INTERVAL` seconds into ``tcp``, for the stats registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.session import AioSession
from botocore.handlers import add_expect_header

from ..config import EndpointConfig
from ..errors import Reason, TransferError
from .tcpinfo import TCP_INFO, TcpStats

logger = logging.getLogger(__name__)

SO_MAX_PACING_RATE = getattr(socket, "SO_MAX_PACING_RATE", 47)  # Linux; missing in Python
TCP_KEEPALIVE = ((socket.TCP_KEEPIDLE, 15), (socket.TCP_KEEPINTVL, 5), (socket.TCP_KEEPCNT, 4))
#: seconds between readings of the sockets' TCP_INFO
TCP_INFO_INTERVAL = 5.0


class NoResendSession(AIOHTTPSession):  # type: ignore[misc]
    """aiobotocore's HTTP session, with aiohttp's silent second send of a request turned
    off: on a reused connection that the server reset, aiohttp sends a PUT (idempotent)
    once more on its own, so a body went twice while trollpush counted one attempt.
    Each attempt is trollpush's, and counted (``attempts``)."""

    async def _get_session(self, proxy_url: Any) -> Any:
        session = await super()._get_session(proxy_url)
        if getattr(session, "_retry_connection", False):
            # aiohttp has no public switch for it (3.14): the private flag it reads
            session._retry_connection = False
        return session


def client_config(ep: EndpointConfig, socket_factory: Any) -> AioConfig:
    """aiobotocore settings for a long-lived pool whose retries trollpush owns."""
    return AioConfig(
        max_pool_connections=ep.max_connections,
        connect_timeout=ep.connect_timeout,
        # the per-attempt budget (asyncio.timeout) is the real limit; this only catches
        # a socket that stalls for longer than any attempt could take
        read_timeout=max(ep.attempt_budget(ep.multipart_chunksize, ep.tries), 60.0),
        retries={"total_max_attempts": 1},
        # unsigned payload even over http: botocore would otherwise SHA-256 every body on
        # the event loop; integrity comes from the checksum the store verifies instead
        s3={"addressing_style": ep.addressing_style, "payload_signing_enabled": False},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connector_args={"keepalive_timeout": ep.keepalive_timeout,
                        "socket_factory": socket_factory},
        http_session_cls=NoResendSession,
    )


class EndpointPool:
    """The client of one endpoint, its sockets, and the work that keeps them warm."""

    def __init__(self, config: EndpointConfig, warm_bucket: str | None = None) -> None:
        self.config = config
        self.warm_bucket = warm_bucket
        self.client: Any = None
        self.active = 0  # requests (PUTs, parts) in progress
        self.uploading = 0  # files being uploaded (the engine counts them)
        self.last_used = time.monotonic()
        self.last_success = 0.0  # Unix time an upload last landed (the engine sets it)
        self.warm_requests = 0  # cheap requests sent to open or keep connections
        self._warming = 0  # of which in progress
        self.tcp = TcpStats()
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._stack = contextlib.AsyncExitStack()
        self._keeper: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None  # of TCP_INFO
        self._warmed = asyncio.Event()
        self.opened = 0  # sockets ever created: a warm pool stops creating them
        self._slots = asyncio.Semaphore(config.max_parallel)

    def __repr__(self) -> str:
        return (f"<EndpointPool {self.config.name} active={self.active} "
                f"sockets={len(self._sockets)} opened={self.opened}>")

    async def start(self) -> None:
        ep = self.config
        session = AioSession(profile=ep.profile) if ep.profile else AioSession()
        self.client = await self._stack.enter_async_context(session.create_client(
            "s3", endpoint_url=ep.url, region_name=ep.region,
            # true means botocore's own choice: AWS_CA_BUNDLE, the profile's ca_bundle,
            # else the default CAs (an explicit True would skip the first two)
            verify=None if ep.verify is True else ep.verify,
            aws_access_key_id=ep.access_key_id, aws_secret_access_key=ep.secret_access_key,
            aws_session_token=ep.session_token, config=client_config(ep, self._socket)))
        self.client.meta.events.unregister("before-call.s3", add_expect_header)
        if TCP_INFO is not None:
            self._reader = asyncio.create_task(self._read_tcp(), name=f"tcpinfo-{ep.name}")
        if ep.prewarm:
            # a slow or dead store must not hold up the daemon: wait for warmth at most
            # connect_timeout, then let it finish in the background
            self._keeper = asyncio.create_task(self._keep_warm(), name=f"keepwarm-{ep.name}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ep.connect_timeout):
                    await self._warmed.wait()

    async def close(self) -> None:
        for task in (self._keeper, self._reader):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._keeper = self._reader = None
        await self._stack.aclose()
        self.client = None

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One of ``max_parallel`` slots, waiting at most ``queue_timeout``."""
        ep = self.config
        try:
            async with asyncio.timeout(ep.queue_timeout):
                await self._slots.acquire()
        except TimeoutError as err:
            raise TransferError(f"no upload slot free within queue_timeout "
                                f"{ep.queue_timeout:g} s", reason=Reason.QUEUE_TIMEOUT
                                ) from err
        try:
            yield
        finally:
            self._slots.release()

    # --- sockets ------------------------------------------------------------------------

    def _socket(self, addr_info: Any) -> socket.socket:
        """Called by aiohttp for every new connection: set keep-alive and pacing."""
        family, kind, proto = addr_info[0], addr_info[1], addr_info[2]
        sock = socket.socket(family, kind, proto)
        if self.config.tcp_keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in TCP_KEEPALIVE:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
        self._sockets.add(sock)
        self.opened += 1
        self._pace(sock)
        return sock

    @property
    def connections_open(self) -> int:
        """Sockets of the pool that are open (a closed one has no descriptor)."""
        return sum(1 for sock in list(self._sockets) if sock.fileno() >= 0)

    @property
    def connections_idle(self) -> int:
        """Open sockets not carrying a request now (open minus requests in progress)."""
        return max(self.connections_open - self.active - self._warming, 0)

    def read_tcp(self) -> None:
        """Read TCP_INFO of the open sockets into ``tcp`` (see ``tcpinfo``)."""
        self.tcp.sample(list(self._sockets))

    async def _read_tcp(self) -> None:
        while True:
            await asyncio.sleep(TCP_INFO_INTERVAL)
            try:
                self.read_tcp()
            except Exception:  # a metric must never cost an upload: stop reading, loudly
                logger.exception("endpoint %s: reading TCP_INFO failed; no more TCP "
                                 "figures until a restart", self.config.name)
                return

    def _pace(self, sock: socket.socket) -> None:
        if not self.config.bandwidth_limit:
            return
        rate = int(self.config.bandwidth_limit / 8 / max(1, self.active))
        with contextlib.suppress(OSError):  # the socket may be closing
            sock.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, rate)

    def begin(self) -> None:
        """A request starts: it shares the bandwidth limit with the others."""
        self.active += 1
        self._repace()

    def end(self) -> None:
        self.active -= 1
        self.last_used = time.monotonic()
        self._repace()

    def _repace(self) -> None:
        if self.config.bandwidth_limit:
            for sock in list(self._sockets):
                if sock.fileno() >= 0:
                    self._pace(sock)

    # --- warmth -------------------------------------------------------------------------

    async def warm(self) -> None:
        """Touch ``prewarm`` connections at once (each a cheap request), opening any missing.

        Any answer, even an error status, leaves a connection open in the pool.
        """
        start = time.monotonic()
        results = await asyncio.gather(*(self._cheap_request()
                                         for _ in range(self.config.prewarm)),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if len(errors) == len(results) and errors:
            logger.warning("endpoint %s: warming failed: %s", self.config.name, errors[0])
        else:
            logger.debug("endpoint %s: %d connection(s) warm in %.3f s", self.config.name,
                         self.config.prewarm, time.monotonic() - start)
        self.last_used = time.monotonic()

    async def _cheap_request(self) -> None:
        ep = self.config
        self.warm_requests += 1
        self._warming += 1
        try:
            async with asyncio.timeout(ep.connect_timeout + ep.attempt_timeout):
                if self.warm_bucket:
                    await self.client.head_bucket(Bucket=self.warm_bucket)
                else:
                    await self.client.list_buckets()
        except Exception as err:
            # an HTTP error still proves (and keeps) a connection; a network one does not
            if getattr(err, "response", None) is None:
                raise
        finally:
            self._warming -= 1

    async def _keep_warm(self) -> None:
        await self.warm()
        self._warmed.set()
        interval = self.config.keepalive_interval
        if interval <= 0:
            return
        while True:
            idle = time.monotonic() - self.last_used
            if idle >= interval and self.active == 0:
                await self.warm()
                continue
            await asyncio.sleep(interval if self.active else max(interval - idle, 0.05))
