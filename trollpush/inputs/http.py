"""The HTTP input: an s3nd-compatible submission API, served by aiohttp on the loop.

``POST /upload`` takes ``file`` (and ``uri``, ``slug``, ``wait``, ``subject``, metadata)
as a form or a JSON object, checks the file as every input does (``messages``), journals
the request (``Intake.submit``) before any answer, and holds the connection until the
outcome (``wait=false``: 202 once journaled).  A client that hangs up first abandons its
request (``Intake.abandon``): aiohttp cancels the handler when the connection is lost
(``handler_cancellation``).  ``GET /version`` and ``GET /openapi.json`` describe it;
``GET /metrics`` is the stats registry in Prometheus' text format (:mod:`..metrics`);
``GET /status`` what ``trollpush status`` shows (:mod:`..status`).  With ``upload: false``
only the read-only views are served (``/metrics``, ``/status``, ``/version``).
Every error reply is JSON with an ``X-Error`` header; nothing a client sends stops the
server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .. import __version__, metrics
from ..config import Config, HttpConfig
from ..config.defaults import DAEMON
from ..errors import MessageError, SetupError
from ..messages import build_request, new_message
from ..models import Rejection, Request
from . import _http_form as form
from ._checks import CheckThreads, checked
from ._http_api import openapi
from ._http_reply import HttpReply, Task, accepted, answer, body, header_text, settings
from ._ipc import LOOPBACK

if TYPE_CHECKING:
    from . import Intake

logger = logging.getLogger("trollpush.receive")  # the name users' log configs know

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: seconds the server waits for handlers at close (the service drained them already)
CLOSE_GRACE = 2.0


def reply(code: int, msg: str, task: dict[str, Any] | None = None, *,
          headers: dict[str, str] | None = None) -> web.Response:
    """A JSON reply; an error one carries its message in ``X-Error`` too."""
    out = dict(headers or {})
    if code >= 400:
        out["X-Error"] = header_text(msg)
    return web.json_response(body(code, msg, task), status=code, headers=out)


class HttpServer:
    """The aiohttp application, its routes and its listening socket."""

    def __init__(self, config: HttpConfig, intake: Intake, *, settings_: dict[str, Any]
                 ) -> None:
        self.config = config
        self.address = config.address
        self._intake = intake
        self._settings = settings_
        self._max_bytes = intake.limits.max_bytes or DAEMON["max_request_bytes"].default
        self._token: bytes | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._scrape: metrics.CollectorRegistry | None = None
        self._checks = CheckThreads("trollpush-http-check")
        self.stopping = False
        self.received = 0

    def __repr__(self) -> str:
        return f"<HttpServer {self.address} received={self.received}>"

    async def start(self) -> None:
        self._token = _read_token(self.config.token_file)
        app = web.Application(client_max_size=self._max_bytes, middlewares=[self._errors])
        if self.config.upload:
            app.router.add_post("/upload", self._upload)
            app.router.add_get("/openapi.json", self._openapi)
        # the read-only views, served with or without the upload API
        app.router.add_get("/version", self._version)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/status", self._status)
        self._scrape = metrics.collector_registry(self._intake.stats)
        # handler_cancellation: a client that hangs up cancels its handler (measured: the
        # cancellation arrives within milliseconds of the close, without polling);
        # keepalive_timeout also bounds how long a connection may take to send its head
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                                     keepalive_timeout=self.config.read_timeout,
                                     shutdown_timeout=CLOSE_GRACE)
        await self._runner.setup()
        sock = _listen(self.config.host, self.config.port, self.config.address)
        host, port = sock.getsockname()[:2]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self._site = web.SockSite(self._runner, sock)
            await self._site.start()
        except BaseException:
            sock.close()
            raise
        if self.config.host not in LOOPBACK and self._token is None and self.config.upload:
            logger.warning("http.address %s is reachable beyond this host and has no "
                           "token_file: anyone who reaches it may submit files", self.address)

    def routes(self) -> list[web.AbstractRoute]:
        """The routes served (for the document's test)."""
        assert self._runner is not None
        return list(self._runner.app.router.routes())

    async def stop(self) -> None:
        """No new connections, and no new requests on open ones; those waiting for their
        outcome still get it (the service drains them)."""
        self.stopping = True
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def close(self) -> None:
        self.stopping = True
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._checks.close()

    # --- routes -------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every error as JSON with X-Error: aiohttp's own (404, 405, 413) and bugs."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            keep = {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate")}
            return reply(exc.status, exc.reason, headers=keep)
        except Exception:
            logger.exception("http: %s %s failed", request.method, request.path)
            return reply(500, "internal error (see the daemon's log)")

    def _denied(self, request: web.Request) -> web.Response | None:
        """The 401 reply, unless the request carries the token (or none is needed)."""
        if self._token is None:
            return None
        given = request.headers.get("Authorization", "").encode("utf-8", "replace")
        if hmac.compare_digest(given, b"Bearer " + self._token):
            return None
        return reply(401, "a valid 'Authorization: Bearer TOKEN' header is required",
                     headers={"WWW-Authenticate": "Bearer"})

    async def _version(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._denied(request)) is not None:
            return denied
        return web.json_response({"version": __version__, "config": self._settings})

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        """The registry now, read on the loop (a few milliseconds; the counters are
        read consistently with what the loop does)."""
        if (denied := self._denied(request)) is not None:
            return denied
        assert self._scrape is not None
        return web.Response(body=metrics.scrape(self._scrape),
                            headers={"Content-Type": metrics.CONTENT_TYPE})

    async def _status(self, request: web.Request) -> web.StreamResponse:
        """``trollpush status`` over HTTP: the snapshot the REQ/REP socket answers too."""
        if (denied := self._denied(request)) is not None:
            return denied
        return web.json_response(self._intake.status())

    async def _openapi(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(openapi())

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._denied(request)) is not None:
            return denied
        if self.stopping:
            return reply(503, "the daemon is stopping", headers={"Connection": "close"})
        self.received += 1
        task = Task(uuid.uuid4().hex[:12])
        try:
            async with asyncio.timeout(self.config.read_timeout):
                fields = await form.read(request, self._max_bytes)
        except TimeoutError:
            logger.warning("http: a client took longer than http.read_timeout (%g s) to "
                           "send its request; disconnected", self.config.read_timeout)
            response = reply(408, f"the request did not arrive within http.read_timeout "
                             f"({self.config.read_timeout:g} s)", headers={"Connection": "close"})
            response.force_close()
            return response
        except MessageError as err:
            return await self._refuse(Rejection(err.reason, err.detail, "http"), task)
        return await self._request(fields, task)

    # --- one upload -----------------------------------------------------------------------

    async def _request(self, fields: dict[str, Any], task: Task) -> web.StreamResponse:
        task.file, task.uri, task.slug = (v if isinstance(v := fields.get(k), str) else None
                                          for k in ("file", "uri", "slug"))
        try:
            parsed = form.Fields.parse(fields)
        except MessageError as err:
            return await self._refuse(form.rejection(fields, err), task)
        task.wait = parsed.wait
        http_reply = HttpReply(wait=parsed.wait)
        item = await self._checked(parsed, http_reply)
        if isinstance(item, Rejection):
            return await self._answer(item, task, http_reply)
        if item.files[0].stat is not None:
            task.size = item.files[0].stat[0]
        if parsed.uri is not None:  # a direct request, like a REQ/REP destination
            item = dataclasses.replace(item, destination=parsed.uri,
                                       endpoint=self.config.endpoint)
        return await self._answer(item, task, http_reply)

    async def _checked(self, parsed: form.Fields, http_reply: HttpReply
                       ) -> Request | Rejection:
        """The request, its file checked off the loop for at most ``file_timeout``."""
        limits = self._intake.limits
        message = new_message(parsed.subject, "file", parsed.data())

        def build(check: bool) -> Request | Rejection:
            try:
                return build_request(message, origin="http", reply=http_reply, limits=limits,
                                     check=check)
            except MessageError as err:
                return parsed.rejection(err, http_reply)

        # (a client that hangs up cancels this: nothing was journaled, nothing to answer)
        return await checked(self._checks, build, limits.file_timeout, [], "http")

    async def _refuse(self, item: Rejection, task: Task) -> web.StreamResponse:
        http_reply = HttpReply(wait=True)
        return await self._answer(dataclasses.replace(item, reply=http_reply), task,
                                  http_reply)

    async def _answer(self, item: Request | Rejection, task: Task, http_reply: HttpReply
                      ) -> web.StreamResponse:
        """Journal (submit), then answer: at once (``wait=false``), or with the outcome.
        A Rejection is submitted too: it is announced, counted and answered like any."""
        if self.stopping:
            return reply(503, "the daemon is stopping", headers={"Connection": "close"})
        journaled = await self._submit(item, task)
        if journaled and not task.wait:
            return web.json_response(accepted(task), status=202)
        try:
            message = await http_reply.final
        except asyncio.CancelledError:
            if journaled and isinstance(item, Request):
                self._abandon(item)
            raise
        code, out = answer(task, message, http_reply)
        logger.info("http %s%s: %d %s", item.describe() if isinstance(item, Request)
                    else task.file, f" ({task.slug})" if task.slug else "", code, out["msg"])
        headers = {"X-Error": header_text(out["msg"])} if code >= 400 else None
        return web.json_response(out, status=code, headers=headers)

    async def _submit(self, item: Request | Rejection, task: Task) -> bool:
        """``Intake.submit``, shielded: a client that hangs up meanwhile cannot cut the
        journal step short; its request, once journaled, is abandoned instead."""
        step = asyncio.ensure_future(self._intake.submit(item))
        try:
            return await asyncio.shield(step)
        except asyncio.CancelledError:
            if isinstance(item, Request) and task.wait:
                step.add_done_callback(lambda done: self._abandoned(done, item))
            raise

    def _abandoned(self, step: asyncio.Future[bool], item: Request) -> None:
        if not step.cancelled() and step.exception() is None and step.result():
            self._abandon(item)

    def _abandon(self, item: Request) -> None:
        if not self.stopping:
            self._intake.abandon(item, "the HTTP client disconnected before its answer")


def _read_token(path: str | None) -> bytes | None:
    """The bearer token: the first line of ``token_file``, read once (never logged)."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            token = f.readline(4096).strip()
    except OSError as err:
        raise SetupError(f"http.token_file: cannot read it ({err.strerror})") from err
    if not token:
        raise SetupError("http.token_file: its first line is empty (no token)")
    return token


def _listen(host: str, port: int, address: str) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one)."""
    try:
        family, _, _, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                    flags=socket.AI_PASSIVE)[0]
        sock = socket.create_server(where[:2], family=family, backlog=128)
    except OSError as err:
        raise SetupError(f"http.address {address}: cannot listen ({err})") from err
    sock.setblocking(False)
    return sock


class HttpInput:
    """The ``http`` input: an HttpServer on the seam."""

    name = "http"

    def __init__(self, config: Config, intake: Intake) -> None:
        assert config.http is not None
        self.server = HttpServer(config.http, intake, settings_=settings(config))

    def __repr__(self) -> str:
        return f"<HttpInput {self.server!r}>"

    def describe(self) -> str:
        views = "" if self.server.config.upload else " (metrics, status and version only)"
        return f"http on http://{self.server.address}{views}"

    @property
    def received(self) -> int:
        return self.server.received

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    def undelivered(self) -> list[Request | Rejection]:
        return []  # the journal step is shielded: whatever was taken was handed over

    async def close(self) -> None:
        await self.server.close()


def create(config: Config, intake: Intake) -> HttpInput | None:
    """The HTTP input, if ``http`` is configured."""
    return None if config.http is None else HttpInput(config, intake)


__all__ = ["HttpInput", "HttpServer", "create"]
