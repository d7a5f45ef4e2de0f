"""Requests recovered from the journal that the JetStream input adopts (``_parked``), on a
real ``nats-server -js`` with a stand-in for the service: continued when their message
comes back, handed over once it is gone, resumed here (and their message deleted) when
it stays in the stream past the bound; and the hand-over itself: multipart uploads
aborted, the journal record closed, nothing announced."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from posttroll.message import Message

from trollpush import stats
from trollpush.config import JetStreamConfig, parse_config
from trollpush.inputs._jetstream_setup import consumer as _consumer
from trollpush.inputs._jetstream_setup import stream as _stream
from trollpush.inputs.jetstream import JetStreamInput
from trollpush.journal import MemoryJournal
from trollpush.messages import Limits, build_request
from trollpush.models import Rejection, Request
from trollpush.recovered import hand_over
from trollpush.stats import Stats

from .helpers import wait_until_async
from .test_flow import FakeEngine, config, pipeline

nats = pytest.importorskip("nats", reason="nats-py is not installed (trollpush[jetstream])")


class Intake:
    """The service as the input sees it: what it is handed, in lists."""

    def __init__(self) -> None:
        self.limits = Limits()
        self.stats = Stats()
        self.submitted: list[Request | Rejection] = []
        self.resumed: list[Request] = []
        self.handed: list[tuple[Request, str]] = []
        self.errors: list[BaseException] = []

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    async def submit(self, item: Request | Rejection) -> bool:
        self.submitted.append(item)
        return isinstance(item, Request)

    def fatal(self, what: str, err: BaseException) -> None:
        self.errors.append(err)

    def abandon(self, request: Request, detail: str) -> None:
        raise AssertionError("nothing is abandoned here")

    def status(self) -> dict[str, Any]:
        raise AssertionError("no status here")

    async def resume(self, request: Request) -> None:
        self.resumed.append(request)

    async def hand_over(self, request: Request, detail: str) -> None:
        self.handed.append((request, detail))


def _config(url: str, ack_wait: float = 30) -> JetStreamConfig:
    tag = uuid.uuid4().hex[:8]
    cfg = parse_config({"jetstream": {"servers": [url], "stream": f"TP{tag}",
                                      "subject": f"trollpush.test.{tag}",
                                      "ack_wait": ack_wait, "max_deliver": 3},
                        "endpoints": {"a": {"url": "http://127.0.0.1:9"}},
                        "targets": [{"destination": "s3://b/"}]}).jetstream
    assert cfg is not None
    return cfg


def _request(name: str, ref: str | None) -> Request:
    r = build_request(Message("/new/x", "file", {"uri": f"/data/{name}"}),
                      origin="jetstream", check=False)
    return replace(r, ref=ref)


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[Any]:
    nc = await nats.connect(nats_url, connect_timeout=2, allow_reconnect=False)
    try:
        yield nc.jetstream(timeout=5)
    finally:
        await nc.close()


async def _queued(js: Any, cfg: JetStreamConfig, *payloads: bytes) -> list[int]:
    """The stream and consumer as the input makes them, with these messages: their
    stream sequences."""
    await _stream(js, cfg)
    await _consumer(js, cfg)
    return [(await js.publish(cfg.subject, p)).seq for p in payloads]


def _payload(uri: str) -> bytes:
    text: str = Message("/new/x", "file", {"uri": uri}).encode()
    return text.encode()


async def _messages(js: Any, cfg: JetStreamConfig) -> int:
    return int((await js.stream_info(cfg.stream)).state.messages)


async def test_a_parked_request_continues_when_its_message_comes_back(
        js: Any, nats_url: str) -> None:
    cfg = _config(nats_url)
    (seq,) = await _queued(js, cfg, _payload("/data/g.h5"))
    intake = Intake()
    taken = JetStreamInput(cfg, intake, window=8)
    mine = _request("g.h5", f"jetstream:{cfg.stream}:{seq}")
    others = [_request("local.h5", None), _request("other.h5", f"jetstream:ELSEWHERE:{seq}")]
    assert taken.adopt([others[0], mine, others[1]]) == others  # the rest: resumed as ever
    await taken.start()
    try:
        await wait_until_async(lambda: bool(intake.resumed), 10, "the parked one continued")
        (again,) = intake.resumed
        assert again.id == mine.id and again.redelivered  # the journal's, looked first
        assert intake.submitted == [] and intake.handed == []
        assert again.reply is not None
        await again.reply.send(Message("/uploaded/", "file", {"uri": "s3://b/g.h5"}))
        assert taken.sent["ack"] == 1 and await _messages(js, cfg) == 0
        assert taken.parked.counts["continued"] == 1 and len(taken.parked) == 0
    finally:
        await taken.close()


async def test_a_new_message_carries_its_ref_and_whether_it_came_before(
        js: Any, nats_url: str, tmp_path: Path) -> None:
    cfg = _config(nats_url)
    path = tmp_path / "g.h5"
    path.write_bytes(b"x")
    seq, *_ = await _queued(js, cfg, _payload(str(path)))
    first = await js.pull_subscribe_bind(consumer=cfg.consumer, stream=cfg.stream)
    (msg,) = await first.fetch(1, timeout=5)
    await msg.nak()  # an instance gave it back: the next delivery is the second
    intake = Intake()
    taken = JetStreamInput(cfg, intake, window=8)
    await taken.start()
    try:
        await wait_until_async(lambda: bool(intake.submitted), 10, "the request")
        (item,) = intake.submitted
        assert isinstance(item, Request)
        assert item.ref == f"jetstream:{cfg.stream}:{seq}" and item.redelivered
        assert item.reply is not None
        await item.reply.send(Message("/uploaded/", "file", {"uri": "s3://b/g.h5"}))
    finally:
        await taken.close()


async def test_a_parked_request_whose_message_is_gone_is_handed_over(
        js: Any, nats_url: str) -> None:
    cfg = _config(nats_url)
    (seq,) = await _queued(js, cfg, _payload("/data/g.h5"))
    await js.delete_msg(cfg.stream, seq)  # acknowledged by another instance
    intake = Intake()
    taken = JetStreamInput(cfg, intake, window=8)
    mine = _request("g.h5", f"jetstream:{cfg.stream}:{seq}")
    assert taken.adopt([mine]) == []
    await taken.start()
    try:
        await wait_until_async(lambda: bool(intake.handed), 10, "the hand-over")
        ((request, detail),) = intake.handed
        assert request is mine and "gone" in detail
        assert intake.resumed == [] and len(taken.parked) == 0
    finally:
        await taken.close()


async def test_a_parked_request_whose_message_stays_away_is_resumed_here(
        js: Any, nats_url: str) -> None:
    """Its message is held elsewhere past the bound (it ran out of deliveries, say): the
    request is done here, at least once, and its message deleted once it is."""
    cfg = _config(nats_url)
    (seq,) = await _queued(js, cfg, _payload("/data/g.h5"))
    holder = await js.pull_subscribe_bind(consumer=cfg.consumer, stream=cfg.stream)
    await holder.fetch(1, timeout=5)  # held, never acknowledged (ack_wait 30 s)
    intake = Intake()
    taken = JetStreamInput(cfg, intake, window=8)
    taken.parked.bound, taken.parked.interval = 0.5, 0.2
    mine = _request("g.h5", f"jetstream:{cfg.stream}:{seq}")
    taken.adopt([mine])
    await taken.start()
    try:
        await wait_until_async(lambda: bool(intake.resumed), 10, "resumed past the bound")
        (again,) = intake.resumed
        assert again.id == mine.id and again.redelivered and again.reply is not None
        assert intake.handed == []
        await again.reply.send(Message("/uploaded/", "file", {"uri": "s3://b/g.h5"}))
        assert await _messages(js, cfg) == 0  # done here: not left in the stream
    finally:
        await taken.close()


async def test_the_hand_over_aborts_the_recorded_multipart_upload_and_closes_the_record(
        ) -> None:
    engine, journal = FakeEngine(), MemoryJournal()
    p, announcer = pipeline(config(), engine, journal)
    r = _request("granule.h5", "jetstream:S:7")
    await journal.accepted(r)
    job = p.routing.router.route(r).jobs[0]
    await journal.begin(job, False)
    await journal.multipart_started(job, job.uploads[0], "upload-1", part_size=5,
                                    source_stat=(10, 1, 1))
    await hand_over(p, r, "its message is gone")
    assert engine.aborted == [(job.uploads[0].url, "upload-1")]
    assert journal.unfinished() == [] and announcer.out == [] and engine.calls == []
    assert p.stats.count(stats.REQUESTS, outcome="handed_over") == 1


class _Replier:
    """A delivery's stand-in: what the request's end tells it."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    @property
    def wants_ack(self) -> bool:
        return False

    @property
    def wants_final(self) -> bool:
        return True

    async def send(self, message: Any) -> None:
        self.sent.append(message)


async def test_a_continued_request_whose_jobs_were_all_announced_still_ends_its_delivery(
        ) -> None:
    """Killed after announcing every job and before finishing the request: continued
    with its message, nothing is done or announced again, and the delivery is told the
    request is done (its message acknowledged, not held until redelivered)."""
    engine, journal = FakeEngine(), MemoryJournal()
    p, announcer = pipeline(config(second="two"), engine, journal)
    r = _request("granule.h5", "jetstream:S:7")
    await journal.accepted(r)
    for job in p.routing.router.route(r).jobs:
        await journal.begin(job, False)
        await journal.concluded(job, ())
    replier = _Replier()
    p.resuming.add(r.id)
    await p.run(replace(r, reply=replier, redelivered=True))
    assert engine.calls == [] and announcer.out == []
    assert [m.type for m in replier.sent] == ["ack"]
    assert journal.unfinished() == []
