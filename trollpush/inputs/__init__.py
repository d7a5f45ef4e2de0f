"""Inputs: where requests come from, behind one seam.

An input takes frames from somewhere (a posttroll subscription, a ZeroMQ ROUTER socket),
decodes them with :mod:`trollpush.messages` and hands each Request or Rejection to the
service's ``Intake.submit``, which journals and queues it.  The service sees inputs only
through ``Input``: it starts them, stops them at shutdown, answers what they took but
never handed over, and closes them.

Adding an input is a module here with ``create(config, intake) -> Input | None`` and one
line in ``REGISTRY``; nothing in the service or the pipeline changes.

An input whose requests may come again after a restart (JetStream: an unacknowledged
message is given again) may also have ``adopt(requests) -> list[Request]``: before it
starts, it is offered the requests recovered from the journal (:func:`offer`) and keeps
those it knows, to take them up again with ``Intake.resume`` or end them with
``Intake.hand_over``; the service resumes the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from ..config import Config
from ..messages import Limits
from ..models import Rejection, Request
from ..stats import Stats
from . import _bridge, http, jetstream, requests, s3daemon, subscribe, watch

__all__ = ["REGISTRY", "Input", "InputFactory", "Intake", "OnFatal", "Sink", "build_inputs",
           "offer"]

#: where an input hands what it took (``Intake.submit``)
Sink = Callable[[Request | Rejection], Coroutine[Any, Any, object]]
#: how an input reports that it died (``Intake.fatal``)
OnFatal = Callable[[str, BaseException], None]


class Intake(Protocol):
    """What the service gives each input."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The service's event loop (inputs reading in threads hand over to it)."""

    @property
    def limits(self) -> Limits:
        """What a request may ask for, and how long its file checks may take."""

    @property
    def stats(self) -> Stats:
        """The registry every stage reports to (``GET /metrics`` shows it)."""

    async def submit(self, item: Request | Rejection) -> bool:
        """Journal and queue one item (from here on it is accepted); waits while full.
        True when a Request was journaled: accepted (False: it is answered as refused)."""

    def fatal(self, what: str, err: BaseException) -> None:
        """The input died: stop the daemon loudly rather than run on deaf."""

    def status(self) -> dict[str, Any]:
        """The daemon's status now (``trollpush status``; plain JSON), built on the
        loop; a status request is no request: nothing is journaled or counted."""

    def abandon(self, request: Request, detail: str) -> None:
        """The requester hung up before its answer: stop the request where it is (an
        upload in progress is aborted) and end it failed with ``client_gone``, so that
        a restart does not resume it.  Call it on the loop."""

    async def resume(self, request: Request) -> None:
        """Queue a request the journal holds already (recovered at the start and adopted
        by the input): it goes on from its recorded state, without being journaled
        again; waits while the queue is full."""

    async def hand_over(self, request: Request, detail: str) -> None:
        """A request recovered from the journal that another instance did (``detail``
        says how it is known): its record is closed without an announcement, and the
        multipart uploads it recorded are aborted."""


class Input(Protocol):
    """One source of requests, as the service runs it.  It may also have a
    ``details() -> dict`` (plain JSON, cheap, on the loop): ``trollpush status`` shows
    it under the input (the jetstream input: its consumer's counts)."""

    #: stable name: "requests", "subscribe"
    name: str

    def describe(self) -> str:
        """What it listens on, for the ``trollpush ready: ...`` line."""

    @property
    def received(self) -> int:
        """What it took in so far, before any check (messages, connections, files): a
        plain number the stats registry reads when it is read."""

    async def start(self) -> None:
        """Begin taking requests (a SetupError says why it cannot)."""

    async def stop(self) -> None:
        """Stop taking requests; idempotent."""

    def undelivered(self) -> list[Request | Rejection]:
        """After stop: what was taken but never handed over (the service answers it)."""

    async def close(self) -> None:
        """Release sockets and threads; idempotent, and safe if never started."""


#: builds an input from the config; None when it is not configured
InputFactory = Callable[[Config, Intake], Input | None]

#: every input, in start (and stop) order; one line each
REGISTRY: tuple[InputFactory, ...] = (
    requests.create,
    s3daemon.create,
    subscribe.create,
    http.create,
    watch.create,
    jetstream.create,
)


def offer(each: Input, requests: list[Request]) -> list[Request]:
    """Offer ``each`` (before it starts) the requests recovered from the journal; those
    it does not adopt."""
    adopt = getattr(each, "adopt", None)
    return requests if adopt is None or not requests else list(adopt(requests))


def build_inputs(config: Config, intake: Intake,
                 registry: Sequence[InputFactory] = REGISTRY) -> list[Input]:
    """The configured inputs, not started yet.  With ``jetstream.bridge``, every input
    but jetstream hands its requests to the service's bridge (``_bridge``), which
    publishes them through the jetstream input's connection."""
    if config.jetstream is None or not config.jetstream.bridge:
        return [found for factory in registry if (found := factory(config, intake)) is not None]
    bridge = _bridge.bridged(config, intake)
    out: list[Input] = []
    for factory in registry:
        if factory is jetstream.create:
            if (taker := jetstream.create(config, intake)) is not None:
                bridge.offer(taker)
                out.append(taker)
            continue
        shim = _bridge.BridgedIntake(bridge, intake)
        if (found := factory(config, shim)) is not None:
            out.append(_bridge.BridgedInput(found, shim))
    return out
