"""JetStream requests recovered from this instance's journal, held ("parked") until it is
known who does them.

A request this instance took from the stream and did not finish (kill -9, or a stop that
cut it off and handed its message back) is both in its journal and, unacknowledged, in
the stream, which gives it again: to this instance or to another.  At the next start the
journal's copy is not queued at once (that would do it twice): the JetStream input adopts
it, by the stream sequence its ``ref`` names, and a parked request is then

* **continued** here when its message comes back to this instance: the journal's record
  goes on (a multipart upload resumes, the parts already there are not sent again), with
  the new delivery as its Replier, acknowledged once the outcome is announced;
* **handed over** once its message is gone from the stream (work-queue retention deletes
  a message when it is acknowledged: another instance did it): its journal record is
  closed without an announcement, and a multipart upload it had recorded is aborted, so
  no parts are left at the store;
* **resumed** here, at least once, when its message is still in the stream ``bound``
  seconds after the start and never came back here (it ran out of deliveries, or the
  stream keeps acknowledged messages): the message is deleted from the stream once the
  request is done, so that it is not left there undone.

Gone or not is asked of the server (``STREAM.MSG.GET``) for every parked request, right
after the start and then every ``interval`` seconds while any is parked, a bounded number
of calls per round; an answer that is not "no message found" keeps a request parked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..models import Request

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from . import Intake

logger = logging.getLogger("trollpush.receive")  # the name users' log configs know

#: JetStream's error code for "no message found" (a stream that is gone is another one:
#: its requests are not handed over to nobody)
NO_MESSAGE = 10037


def ref(stream: str, sequence: int) -> str:
    """What a request from the stream's message ``sequence`` is known by (journaled)."""
    return f"jetstream:{stream}:{sequence}"


class Parked:
    """The parked requests of one stream, by stream sequence."""

    PER_ROUND = 100  # messages looked up per round at most (one API call each)
    CALL_TIMEOUT = 5.0

    def __init__(self, stream: str, *, bound: float, interval: float) -> None:
        self.stream = stream
        self.bound = bound
        self.interval = interval
        self._prefix = ref(stream, 0)[:-1]
        self._by_seq: dict[int, Request] = {}
        self._since = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._js: JetStreamContext | None = None
        self._after = 0  # the last sequence looked up: the next round goes on from it
        #: what became of the parked requests so far
        self.counts = {"adopted": 0, "continued": 0, "handed_over": 0, "resumed": 0}

    def __repr__(self) -> str:
        return f"<Parked {self.stream} {len(self._by_seq)} {self.counts}>"

    def __len__(self) -> int:
        return len(self._by_seq)

    def adopt(self, requests: list[Request]) -> list[Request]:
        """Park the requests that came from this stream; the others, returned, are not
        this input's (the service resumes them)."""
        rest = []
        for request in requests:
            seq = self._sequence(request)
            if seq is None:
                rest.append(request)
            else:
                self._by_seq[seq] = request
        if self._by_seq:
            self.counts["adopted"] += len(self._by_seq)
            self._since = time.monotonic()
            logger.info("jetstream: %d request(s) from the journal wait for their messages "
                        "(continued here when given again, ended when another instance "
                        "did them)", len(self._by_seq))
        return rest

    def take(self, seq: int) -> Request | None:
        """The parked request of the message ``seq``, delivered here again: no longer
        parked (the caller continues it)."""
        request = self._by_seq.pop(seq, None)
        if request is not None:
            self.counts["continued"] += 1
            logger.info("jetstream: message %d came back: continuing %s", seq,
                        request.describe())
        return request

    def start(self, js: JetStreamContext, intake: Intake) -> None:
        """Look after the parked requests (nothing to do when there are none)."""
        self._js = js
        if self._by_seq:
            self._task = asyncio.get_running_loop().create_task(
                self._watch(js, intake), name="jetstream-parked")

    async def stop(self) -> None:
        """Stop looking: what is still parked stays in the journal for the next start."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _watch(self, js: JetStreamContext, intake: Intake) -> None:
        while self._by_seq:
            try:
                await self.sweep(js, intake)
            except Exception:  # a bug: logged, the requests stay in the journal
                logger.exception("jetstream: looking after the parked requests failed")
                return
            if self._by_seq:
                await asyncio.sleep(self.interval)

    async def sweep(self, js: JetStreamContext, intake: Intake) -> None:
        """One round: each parked request whose message is gone is handed over; past
        ``bound``, one whose message is still there is resumed here."""
        import nats.errors
        from nats.js.errors import NotFoundError

        overdue = time.monotonic() - self._since > self.bound
        waiting = sorted(self._by_seq)  # (in turn: none waits for the first ones)
        batch = ([s for s in waiting if s > self._after]
                 + [s for s in waiting if s <= self._after])[:self.PER_ROUND]
        for seq in batch:
            self._after = seq
            try:
                async with asyncio.timeout(self.CALL_TIMEOUT):
                    await js.get_msg(self.stream, seq)
            except NotFoundError as err:
                if err.err_code != NO_MESSAGE:  # the stream itself is gone: keep them
                    logger.warning("jetstream: stream %s: %s; parked requests wait",
                                   self.stream, err.description)
                    return
                request = self._by_seq.pop(seq, None)
                if request is not None:  # (not taken meanwhile)
                    self.counts["handed_over"] += 1
                    await intake.hand_over(request, f"its message {seq} is gone from "
                                                    f"stream {self.stream}: another "
                                                    "instance did it")
                continue
            except (nats.errors.Error, OSError, TimeoutError) as err:
                logger.debug("jetstream: cannot look up message %d: %s", seq, err)
                return  # the server is away: the next round asks again
            if overdue and (request := self._by_seq.pop(seq, None)) is not None:
                self.counts["resumed"] += 1
                logger.warning("jetstream: message %d is still in stream %s after %.0f s "
                               "and was not given here again: %s is resumed here",
                               seq, self.stream, self.bound, request.describe())
                await intake.resume(replace(request, redelivered=True,
                                            reply=_Resumed(self, seq)))

    async def delete(self, seq: int) -> None:
        """Delete the message of a parked request done here (bounded; best effort)."""
        import nats.errors

        if self._js is None:
            return
        try:
            async with asyncio.timeout(self.CALL_TIMEOUT):
                await self._js.delete_msg(self.stream, seq)
        except (nats.errors.Error, OSError, TimeoutError) as err:
            logger.warning("jetstream: could not delete message %d, done here: %s", seq, err)
            return
        logger.info("jetstream: message %d deleted from stream %s: done here", seq,
                    self.stream)

    def _sequence(self, request: Request) -> int | None:
        found = request.ref
        if found is None or not found.startswith(self._prefix):
            return None
        tail = found[len(self._prefix):]
        return int(tail) if tail.isdigit() else None


class _Resumed:
    """The Replier of a parked request resumed here without a delivery: once its outcome
    is announced, its message is deleted from the stream (it is done)."""

    def __init__(self, parked: Parked, seq: int) -> None:
        self._parked = parked
        self._seq = seq

    @property
    def wants_ack(self) -> bool:
        return False

    @property
    def wants_final(self) -> bool:
        return True

    async def send(self, message: Any) -> None:
        from .jetstream import HANDED_BACK

        data = getattr(message, "data", None)
        if not (isinstance(data, dict) and data.get("reason") in HANDED_BACK):
            await self._parked.delete(self._seq)
