"""What ``trollpush status`` and ``GET /metrics`` show of the shared JetStream consumer,
against a real ``nats-server -js``, moto and the real command: the messages waiting in
the consumer while this instance holds all it may, a message handed back (its file
missing here) counted as redelivered until it lands, and stale counts, with their age,
while the server is away."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trollpush.inputs._jetstream_info import ConsumerWatch, follow_counts
from trollpush.inputs.jetstream import JetStreamInput
from trollpush.service import Service
from trollpush.stats import JS_ACKS, Stats
from trollpush.status import fetch_http, render

from .helpers import Listener, free_port, running_daemon, wait_until
from .natsd import NatsServer, publish
from .test_jetstream import NAME, file_message, linked
from .test_metrics import Samples, scraped, value
from .test_status import cli

pytest.importorskip("nats", reason="nats-py is not installed (trollpush[jetstream])")

CONSUMER = "trollpush"


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """The consumer read every 0.1 s (5 s in service): the tests wait on conditions."""
    monkeypatch.setattr(ConsumerWatch, "EVERY", 0.1)


@pytest.fixture
def config(base_config: dict[str, Any], nats_url: str) -> dict[str, Any]:
    """jetstream on a stream of its own, and the HTTP input's views (status, metrics)."""
    out = {k: v for k, v in base_config.items() if k not in ("subscribe", "requests")}
    tag = uuid.uuid4().hex[:8]
    out["jetstream"] = {"servers": [nats_url], "stream": f"TS{tag}",
                        "subject": f"trollpush.status.{tag}", "ack_wait": 5,
                        "max_deliver": 3}
    out["http"] = {"address": f"127.0.0.1:{free_port()}", "upload": False}
    return out


@pytest.fixture
def listener(ports: dict[str, int]) -> Iterator[Listener]:
    sub = Listener(f"tcp://127.0.0.1:{ports['pub']}")
    yield sub
    sub.close()


def url(daemon: Service) -> str:
    return f"http://{daemon.input('http').server.address}"


def consumer(snap: dict[str, Any]) -> dict[str, Any]:
    """The jetstream input's details in a status snapshot."""
    found = [each for each in snap["inputs"] if each["name"] == "jetstream"]
    assert len(found) == 1, snap["inputs"]
    details: dict[str, Any] = found[0]["details"]
    return details


def shows(daemon: Service, what: str, **want: Any) -> dict[str, Any]:
    """Wait until ``GET /status`` shows the consumer with ``want``; that status."""
    seen: list[dict[str, Any]] = []

    def now() -> bool:
        seen[:] = [consumer(fetch_http(url(daemon), timeout=5))]
        return all(seen[0].get(k) == v for k, v in want.items())

    try:
        wait_until(now, 15, what)
    except AssertionError as err:
        raise AssertionError(f"{err}; last seen: {seen}") from None
    return seen[0]


def gauges(daemon: Service, what: str, stream: str, **want: float) -> Samples:
    """Wait until the scrape's jetstream gauges have the values ``want`` (by the
    series' name without its prefix); that scrape."""
    seen: list[Samples] = []

    def now() -> bool:
        seen[:] = [scraped(daemon)]
        return all(value(seen[0], f"trollpush_jetstream_{k}", stream=stream,
                         consumer=CONSUMER) == v for k, v in want.items())

    wait_until(now, 15, what)
    return seen[0]


def taken(daemon: Service) -> JetStreamInput:
    each = daemon.input("jetstream")
    assert isinstance(each, JetStreamInput)
    return each


def test_the_status_and_metrics_show_what_waits_in_the_shared_consumer(
        config: dict[str, Any], nats_url: str, listener: Listener, s3: Any, bucket: str,
        tmp_path: Path) -> None:
    """One request at a time (the input holds one message): while a slow upload runs,
    K messages published after it wait in the consumer, as the command and the scrape
    both say; once all landed, nothing waits and the acks are counted."""
    k = 5
    config["daemon"].update(max_in_flight=1, queue_size=1)  # the input holds one message
    config["jetstream"]["ack_wait"] = 2  # (in-progress acks keep the slow one)
    config["endpoints"]["default"].update(bandwidth_limit="4Mbit")
    js = config["jetstream"]
    slow = tmp_path / NAME.format(orbit=10)
    slow.write_bytes(os.urandom(3_500_000))  # ~7 s at 4 Mbit/s: the window to look in
    quick = [tmp_path / NAME.format(orbit=11 + i) for i in range(k)]
    for path in quick:
        path.write_bytes(os.urandom(1000))
    with running_daemon(config) as daemon:
        before = linked(daemon, nats_url, js["subject"], listener)
        publish(nats_url, js["subject"], file_message(slow))
        shows(daemon, "the slow one held", ack_pending=1, held=1, pending=0)
        publish(nats_url, js["subject"], *(file_message(p) for p in quick))
        shows(daemon, f"{k} pending", pending=k, ack_pending=1)
        # the real command, in a process of its own, as JSON and as text
        details = consumer(json.loads(cli("status", "--json", "--http", url(daemon)).stdout))
        assert details["stream"] == js["stream"] and details["consumer"] == CONSUMER
        assert (details["pending"], details["ack_pending"], details["held"]) == (k, 1, 1)
        assert details["messages"] == k + 1 and details["stale"] is False
        assert 0 <= details["age_seconds"] < 5 and details["error"] is None
        assert details["sent"] == {"ack": before["ack"], "term": before["term"], "nak": 0,
                                   "missing": 0, "progress": details["sent"]["progress"]}
        text = cli("status", "--http", url(daemon))
        assert text.returncode == 0, text.stderr
        assert f"pending {k}, ack pending 1, redelivered 0" in text.stdout, text.stdout
        # the scrape: the same numbers
        gauges(daemon, "the gauges", js["stream"], pending_messages=k,
               ack_pending_messages=1, redelivered_messages=0)
        reading = taken(daemon).info.reading
        assert reading is not None and reading.pending == k, "the slow upload ended too soon"
        done = listener.wait_for(lambda ms: len([m for m in ms if m.type == "file"]) == k + 1,
                                 60, what="every completion")
        assert {m.data["uid"] for m in done if m.type == "file"} == \
            {p.name for p in (slow, *quick)}
        shows(daemon, "nothing waits", pending=0, ack_pending=0, messages=0)
        samples = gauges(daemon, "the gauges at 0", js["stream"], pending_messages=0,
                         ack_pending_messages=0)
        sent = taken(daemon).sent
        assert sent["ack"] == before["ack"] + k + 1
        for kind in ("ack", "term", "progress"):
            assert value(samples, "trollpush_jetstream_acks_total", stream=js["stream"],
                         consumer=CONSUMER, kind=kind) == sent[kind], kind
        assert value(samples, "trollpush_jetstream_stream_messages",
                     stream=js["stream"]) == 0


def test_a_message_handed_back_shows_as_redelivered_until_it_lands(
        config: dict[str, Any], nats_url: str, listener: Listener, s3: Any, bucket: str,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A file missing here (not yet on the shared file system) is handed back with a
    delay; from its second delivery on it is redelivered, in the status and the
    scrape, until the file appears and the request lands."""
    monkeypatch.setattr(JetStreamInput, "MISSING_DELAY", 0.5)
    config["jetstream"]["max_deliver"] = 40  # ~20 s to look in
    js = config["jetstream"]
    path = tmp_path / NAME.format(orbit=20)  # written later
    with running_daemon(config) as daemon:
        before = linked(daemon, nats_url, js["subject"], listener)
        publish(nats_url, js["subject"], file_message(path))
        shows(daemon, "a redelivery", redelivered=1, pending=0)
        details = consumer(json.loads(cli("status", "--json", "--http", url(daemon)).stdout))
        assert details["redelivered"] == 1 and details["sent"]["missing"] >= 1
        assert details["sent"]["ack"] == before["ack"]
        gauges(daemon, "the redelivered gauge", js["stream"], redelivered_messages=1)
        path.write_bytes(os.urandom(10_000))  # the file arrives
        listener.wait_for(lambda ms: any(m.type == "file" for m in ms), 30,
                          what="the completion")
        after = shows(daemon, "landed and acknowledged", redelivered=0, ack_pending=0,
                      messages=0)
        assert after["sent"]["ack"] == before["ack"] + 1
        samples = gauges(daemon, "the gauge back at 0", js["stream"],
                         redelivered_messages=0)
        assert value(samples, "trollpush_jetstream_acks_total", stream=js["stream"],
                     consumer=CONSUMER, kind="missing") == taken(daemon).sent["missing"] >= 2


def test_while_the_server_is_away_the_last_counts_stay_marked_stale(
        config: dict[str, Any], natsd: NatsServer, nats_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """nats-server stopped: the status keeps the last counts, stale, with the error and
    a growing age (so does the age gauge); back, they are fresh again."""
    monkeypatch.setattr(JetStreamInput, "CALL_TIMEOUT", 1.0)  # a reading fails sooner
    js = config["jetstream"]
    with running_daemon(config) as daemon:
        first = shows(daemon, "a first reading", pending=0, stale=False)
        assert first["age_seconds"] is not None
        natsd.stop()
        try:
            stale = shows(daemon, "stale", stale=True)
            assert stale["pending"] == 0 and stale["error"]
            watch = taken(daemon).info
            age = watch.age
            assert age is not None
            wait_until(lambda: (watch.age or 0) > age + 0.3, 5, "the age grows")
            samples = scraped(daemon)
            assert value(samples, "trollpush_jetstream_info_age_seconds",
                         stream=js["stream"], consumer=CONSUMER) > age
            assert value(samples, "trollpush_jetstream_pending_messages",
                         stream=js["stream"], consumer=CONSUMER) == 0
            assert "stale" in render(fetch_http(url(daemon), timeout=5))
        finally:
            natsd.start()
        fresh = shows(daemon, "fresh again", stale=False, error=None)
        assert fresh["age_seconds"] < 5


def test_render_shows_any_inputs_details_generically() -> None:
    """The table shows what an input's details() gave, whatever it is: no input is
    special in status.py."""
    snap = {"version": "0", "pid": 1, "time": 100.0, "uptime_seconds": 5.0,
            "inputs": [{"name": "jetstream", "description": "jetstream consumer c",
                        "received": 7,
                        "details": {"stream": "S", "pending": 3, "ack_pending": 1,
                                    "messages": None, "age_seconds": 2.4, "stale": True,
                                    "ok": False, "sent": {"ack": 2, "nak": 0}}},
                       {"name": "watch", "description": "watch /x", "received": 0}],
            "requests": {"accepted": 0, "completed": 0, "failed": 0, "rejected": 0,
                         "queued": 0, "in_flight": 0},
            "journal": {"backlog": 0}, "endpoints": {}}
    lines = render(snap).splitlines()
    at = next(i for i, line in enumerate(lines) if "jetstream consumer c" in line)
    assert lines[at + 1] == (" " * 13 + "stream S, pending 3, ack pending 1, age 2 s, "
                             "stale, sent ack=2 nak=0")
    assert "watch /x (0 received)" in lines[at + 2]


def test_counts_followed_again_after_a_reload_go_on_from_the_old_ones() -> None:
    """A reload's new jetstream input follows its own ``sent``: the counter keeps what
    the old one had counted (it never goes back)."""
    registry = Stats()
    old = {"ack": 3, "nak": 1}
    follow_counts(registry, JS_ACKS, old, "kind", stream="S", consumer="c")
    new = {"ack": 0, "nak": 0}
    follow_counts(registry, JS_ACKS, new, "kind", stream="S", consumer="c")
    new["ack"] += 2
    assert registry.total(JS_ACKS, kind="ack") == 5
    assert registry.total(JS_ACKS, kind="nak") == 1
