"""One request's flow through the pipeline, with fakes: no sockets, no store, no threads.

The engine is a scripted fake, the journal the memory journal, the announcer the real
one with its publisher replaced by a list.  These pin the flow that the end-to-end tests
check against real servers: routing to jobs, one outcome per request, failures
announced with their reason, a swapped routing snapshot, journal faults.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from collections.abc import Mapping, Sequence
from typing import Any, cast

import pytest
from posttroll.message import Message

from trollpush import stats
from trollpush.announce import Announcer
from trollpush.config import Config, parse_config
from trollpush.errors import Reason
from trollpush.journal import MemoryJournal, State
from trollpush.messages import build_request
from trollpush.models import Request, Upload, UploadResult
from trollpush.pipeline import Pipeline, RequestRun
from trollpush.route import Routing
from trollpush.service import Service, _Bound
from trollpush.stats import Stats

from .helpers import wait_until_async


class FakeEngine:
    """Lands every upload, except those whose key is in ``fail`` (with that reason)."""

    completed = failed = retried = 0

    def __init__(self, fail: dict[str, Reason] | None = None) -> None:
        self.fail = fail or {}
        self.calls: list[tuple[str, list[str], float]] = []
        self.gate: asyncio.Event | None = None  # set: uploads wait for it
        self.called = asyncio.Event()
        self.looked: list[bool] = []  # look_first, per call
        self.aborted: list[tuple[str, str]] = []  # (url, upload id)

    def view(self) -> FakeEngine:
        return self

    async def upload_all(self, uploads: Sequence[Upload], endpoint: str, *, deadline: float,
                         what: str, progress: Any = None,
                         landed: Mapping[int, UploadResult] | None = None,
                         meter: Any = None, look_first: bool = False
                         ) -> tuple[UploadResult, ...]:
        self.calls.append((endpoint, [u.url for u in uploads], deadline))
        self.looked.append(look_first)
        self.called.set()
        if self.gate is not None:
            await self.gate.wait()
        return tuple(
            UploadResult(u, 10, 1, 0.01, error=f"{self.fail[u.key]}: scripted",
                         reason=self.fail[u.key]) if u.key in self.fail
            else UploadResult(u, 10, 1, 0.01, etag='"e"', checksum="c", checksum_algorithm="crc32c")
            for u in uploads)

    async def abort(self, upload: Upload, endpoint: str, upload_id: str) -> None:
        self.aborted.append((upload.url, upload_id))

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


class RecordingAnnouncer(Announcer):
    """The real message builders; what is published goes to a list."""

    def __init__(self) -> None:
        super().__init__(None)
        self.out: list[Message] = []

    def publish(self, message: Message) -> None:
        self.out.append(message)

    async def sent(self, message: Message) -> None:
        self.out.append(message)


def config(bucket: str = "one", *, second: str | None = None) -> Config:
    targets = [{"name": "a", "topics": ["/new/"], "destination": f"s3://{bucket}/{{uid}}"}]
    if second is not None:
        targets.append({"name": "b", "topics": ["/new/"],
                        "destination": f"s3://{second}/{{uid}}"})
    return parse_config({"requests": None, "endpoints": {"main": {}}, "targets": targets,
                         "daemon": {"max_age": 600}})


def request(name: str = "granule.h5", subject: str = "/new/x") -> Request:
    return build_request(Message(subject, "file", {"uri": f"/data/{name}", "sensor": "viirs"}),
                         origin="subscribe", check=False)


def pipeline(cfg: Config, engine: FakeEngine | None = None,
             journal: MemoryJournal | None = None) -> tuple[Pipeline, RecordingAnnouncer]:
    announcer = RecordingAnnouncer()
    p = Pipeline(journal=journal or MemoryJournal(), engine=engine or FakeEngine(),
                 announcer=announcer, routing=Routing.from_config(cfg), registry=Stats(),
                 durable=False)
    return p, announcer


async def accepted(p: Pipeline, r: Request) -> Request:
    await p.journal.accepted(r)
    return r


async def test_a_request_fanned_out_to_two_targets_lands_and_is_announced_per_job() -> None:
    engine, journal = FakeEngine(), MemoryJournal()
    p, announcer = pipeline(config(second="two"), engine, journal)
    r = await accepted(p, request())
    await p.run(r)
    assert sorted(u for _, urls, _ in engine.calls for u in urls) == [
        "s3://one/granule.h5", "s3://two/granule.h5"]
    assert [m.type for m in announcer.out] == ["file", "file"]
    assert sorted(m.data["uri"] for m in announcer.out) == [
        "s3://one/granule.h5", "s3://two/granule.h5"]
    assert p.stats.count(stats.REQUESTS, outcome="completed") == 1
    landed = p.stats.histogram(stats.TOTAL_SECONDS, endpoint="main")
    queued = p.stats.histogram(stats.QUEUED_SECONDS, input="subscribe")
    assert landed is not None and landed.count == 2 and queued is not None and queued.count == 1
    assert set(journal.state(r.id).values()) <= {State.ANNOUNCED}
    assert p.journal.unfinished() == []
    # the deadline the engine retries until is acceptance + max_age
    assert {deadline for *_, deadline in engine.calls} == {r.accepted_at + 600}


async def test_a_failed_upload_is_announced_with_its_reason_and_fails_the_request() -> None:
    p, announcer = pipeline(config(second="two"), FakeEngine({"granule.h5": Reason.TIMEOUT}))
    r = await accepted(p, request())
    await p.run(r)
    failures = [m for m in announcer.out if m.type == "failure"]
    assert len(failures) == 2 and {m.data["reason"] for m in failures} == {"timeout"}
    assert p.stats.count(stats.REQUESTS, outcome="failed") == 1
    assert p.journal.unfinished() == []


async def test_no_route_is_a_failure_announced_once() -> None:
    p, announcer = pipeline(config())
    r = await accepted(p, request(subject="/elsewhere/"))
    await p.run(r)
    assert [(m.type, m.data["reason"]) for m in announcer.out] == [("failure", "no_route")]
    assert p.stats.count(stats.REQUESTS, outcome="failed") == 1


async def test_the_routing_snapshot_can_be_swapped_between_requests() -> None:
    """A request keeps the snapshot it started with; the next one takes the new one."""
    engine = FakeEngine()
    engine.gate = asyncio.Event()
    p, _ = pipeline(config("old"), engine)
    first = asyncio.create_task(p.run(await accepted(p, request("a.h5"))))
    await asyncio.wait_for(engine.called.wait(), 10)
    p.routing = Routing.from_config(config("new"))
    second = asyncio.create_task(p.run(await accepted(p, request("b.h5"))))
    engine.gate.set()
    await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert [urls for _, urls, _ in engine.calls] == [["s3://old/a.h5"], ["s3://new/b.h5"]]
    # a run built before the swap reads the snapshot it was given
    run = RequestRun(p, request("c.h5"))
    p.routing = Routing.from_config(config("newer"))
    assert run.routing.router is not p.routing.router


async def test_a_crash_in_the_engine_is_an_internal_error_not_silence() -> None:
    class Broken(FakeEngine):
        async def upload_all(self, *args: Any, **kw: Any) -> tuple[UploadResult, ...]:
            raise RuntimeError("a bug")

    p, announcer = pipeline(config(), Broken())
    r = await accepted(p, request())
    await p.run(r)
    assert [(m.type, m.data["reason"]) for m in announcer.out] == [("failure", "internal_error")]
    assert p.journal.unfinished() == []


async def test_a_journal_that_fails_after_acceptance_does_not_change_the_outcome() -> None:
    class Failing(MemoryJournal):
        async def concluded(self, *args: Any, **kw: Any) -> None:
            raise OSError(28, "No space left on device")

    p, announcer = pipeline(config(), journal=Failing())
    r = await accepted(p, request())
    await p.run(r)
    assert [m.type for m in announcer.out] == ["file"]  # one outcome: the completion
    assert p.stats.count(stats.REQUESTS, outcome="completed") == 1
    assert p.stats.count(stats.JOURNAL_ERRORS) == 1 and p.record.down


async def test_a_cancelled_request_is_announced_as_shutdown() -> None:
    engine = FakeEngine()
    engine.gate = asyncio.Event()  # never set
    p, announcer = pipeline(config(), engine)
    task = asyncio.create_task(p.run(await accepted(p, request())))
    await asyncio.wait_for(engine.called.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [(m.type, m.data["reason"]) for m in announcer.out] == [("failure", "shutdown")]
    assert p.stats.count(stats.REQUESTS, outcome="abandoned") == 1


async def test_a_request_whose_requester_hung_up_ends_failed_and_is_not_resumed() -> None:
    engine = FakeEngine()
    engine.gate = asyncio.Event()  # never set: the upload hangs until abandoned
    journal = MemoryJournal()
    p, announcer = pipeline(config(second="two"), engine, journal)
    r = await accepted(p, request())
    task = asyncio.create_task(p.run(r))
    await asyncio.wait_for(engine.called.wait(), 10)
    p.abandon(r, "the HTTP client disconnected")
    await asyncio.wait_for(task, 10)  # ends by itself, not cancelled
    assert not task.cancelled()
    assert sorted((m.type, m.data["reason"]) for m in announcer.out) == [
        ("failure", "client_gone"), ("failure", "client_gone")]
    assert journal.unfinished() == []  # a restart does not resume it
    assert p.stats.count(stats.REQUESTS, outcome="failed", reason="client_gone") == 1
    assert p.running == {}


async def test_a_queued_request_whose_requester_hung_up_is_never_started() -> None:
    engine = FakeEngine()
    p, announcer = pipeline(config(), engine)
    r = await accepted(p, request())
    p.abandon(r, "the client closed its connection")
    await p.run(r)
    assert engine.calls == []
    assert [(m.type, m.data["reason"]) for m in announcer.out] == [("failure", "client_gone")]
    assert p.journal.unfinished() == [] and p.gone == {}


def test_a_service_stopped_by_a_signal_can_run_again() -> None:
    """What a run binds to its event loop is made anew by the next run."""
    service = Service(config(), journal=MemoryJournal(), engine=cast(Any, FakeEngine()),
                      announcer=RecordingAnnouncer(), inputs=())

    async def run_until_signalled(number: int) -> None:
        task = asyncio.create_task(service.run())
        await asyncio.wait_for(asyncio.to_thread(service.ready.wait, 10), 15)
        await service.submit(request(f"{number}.h5"))  # queued and run on this loop
        await wait_until_async(lambda: service.counts["completed"] == number, 15, "landed")
        assert not task.done()
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the service's loop
        await asyncio.wait_for(task, 15)

    for number in (1, 2):
        asyncio.run(run_until_signalled(number))
        assert not service.ready.is_set()


@pytest.mark.timeout(20)
async def test_the_drain_waits_for_a_request_that_just_finished() -> None:
    """A request task that is done, but whose done callback (which takes it out of the
    running set) has not run yet, when the drain begins: the drain lets the callback run.
    (``gather`` of tasks already done completes without yielding, so it spun for ever.)"""
    service = Service(config(), journal=MemoryJournal(), engine=cast(Any, FakeEngine()),
                      announcer=RecordingAnnouncer(), inputs=())
    on = _Bound(asyncio.get_running_loop(), asyncio.Event(), asyncio.Queue(),
                asyncio.Semaphore(0))

    async def finished() -> None:
        return None

    task = asyncio.create_task(finished())
    service._tasks.add(task)
    task.add_done_callback(functools.partial(service._ended, on.slots))
    await asyncio.sleep(0)  # the task ran; its done callback waits in the loop's queue
    assert task.done() and task in service._tasks
    dispatcher = asyncio.create_task(asyncio.sleep(3600))
    await service._drain(on, dispatcher)
    assert not service._tasks and dispatcher.cancelled()
