"""The jetstream input against a real ``nats-server -js`` and moto: a request pulled from
the shared consumer lands, is announced, and only then acknowledged; a bad message is
announced and terminated; a file missing here is handed back until its last delivery; a
long upload is kept from redelivery by in-progress acks."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from posttroll.message import Message

from trollpush.config import parse_config
from trollpush.inputs.jetstream import JetStreamInput

from .helpers import Listener, heard, running_daemon, wait_until
from .natsd import publish, state

nats = pytest.importorskip("nats", reason="nats-py is not installed (trollpush[jetstream])")

SUBJECT = "/new/file/viirs/"
NAME = "NOAA-20_20261121_1005_{orbit:05d}.h5"


def file_message(path: Path) -> bytes:
    text: str = Message(SUBJECT, "file", {"uri": str(path), "uid": path.name,
                                          "sensor": "viirs"}).encode()
    return text.encode()


@pytest.fixture
def js_config(base_config: dict[str, Any], nats_url: str) -> dict[str, Any]:
    """The test suite's config with jetstream as its only input, on a stream of its own."""
    config = dict(base_config)
    del config["subscribe"], config["requests"]
    tag = uuid.uuid4().hex[:8]
    config["jetstream"] = {"servers": [nats_url], "stream": f"TP{tag}",
                           "subject": f"trollpush.test.{tag}", "ack_wait": 5,
                           "max_deliver": 3}
    return config


@pytest.fixture
def listener(ports: dict[str, int]) -> Iterator[Listener]:
    sub = Listener(f"tcp://127.0.0.1:{ports['pub']}")
    time.sleep(0.3)  # the subscription propagates before anything is announced
    yield sub
    sub.close()


def linked(daemon: Any, url: str, subject: str, listener: Listener) -> dict[str, int]:
    """Make sure the listener hears the daemon: queue a probe the daemon refuses (a file
    on another host) until its failure arrives; then what the input counted so far
    (the probes: received, terminated), for the test to count from."""
    heard(lambda probe: publish(url, subject, Message(SUBJECT, "file", {"uri": probe})
                                .encode().encode()), listener, 15, wait=0.3)
    taken = _jetstream(daemon)
    wait_until(lambda: taken.received == taken.sent["term"], 5, "the probes terminated")
    return {"received": taken.received, **taken.sent}


def _jetstream(daemon: Any) -> JetStreamInput:
    found = [each for each in daemon.inputs if each.name == "jetstream"]
    assert len(found) == 1
    return found[0]  # type: ignore[no-any-return]


def test_a_queued_request_lands_is_announced_and_then_acknowledged(
        js_config: dict[str, Any], nats_url: str, listener: Listener, s3: Any, bucket: str,
        tmp_path: Path) -> None:
    path = tmp_path / NAME.format(orbit=1)
    path.write_bytes(os.urandom(50_000))
    js = js_config["jetstream"]
    with running_daemon(js_config) as daemon:
        before = linked(daemon, nats_url, js["subject"], listener)
        publish(nats_url, js["subject"], file_message(path))
        done = listener.wait_for(lambda ms: any(m.type == "file" for m in ms),
                                 what="the completion")
        key = f"j01/2026/11/21/{path.name}"
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == path.read_bytes()
        assert next(m for m in done if m.type == "file").data["uri"].endswith(key)
        wait_until(lambda: state(nats_url, js["stream"])["messages"] == 0, 5,
                   "the message acknowledged (gone from the work queue)")
        st = state(nats_url, js["stream"])
        assert st["ack_pending"] == 0 and st["redelivered"] == 0
        assert _jetstream(daemon).sent["ack"] == before["ack"] + 1
    # the stream and consumer were made as configured
    cfg = parse_config(js_config).jetstream
    assert cfg is not None and cfg.stream == js["stream"]


def test_a_bad_message_is_announced_as_failed_and_not_redelivered(
        js_config: dict[str, Any], nats_url: str, listener: Listener) -> None:
    js = js_config["jetstream"]
    with running_daemon(js_config) as daemon:
        before = linked(daemon, nats_url, js["subject"], listener)
        publish(nats_url, js["subject"], b"pytroll:/x file \x1b[31m nonsense")
        failed = listener.wait_for(lambda ms: any(m.type == "failure" for m in ms),
                                   what="the failure")
        assert next(m for m in failed if m.type == "failure").data["reason"] == "bad_message"
        wait_until(lambda: _jetstream(daemon).sent["term"] == before["term"] + 1, 5,
                   "the message terminated")
        st = state(nats_url, js["stream"])
        assert st["ack_pending"] == 0 and st["redelivered"] == 0 and st["messages"] == 0


def test_a_missing_file_is_handed_back_then_fails_at_the_last_delivery(
        js_config: dict[str, Any], nats_url: str, listener: Listener,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(JetStreamInput, "MISSING_DELAY", 0.5)
    js_config["jetstream"]["max_deliver"] = 2
    js = js_config["jetstream"]
    path = tmp_path / NAME.format(orbit=2)  # never written
    with running_daemon(js_config) as daemon:
        before = linked(daemon, nats_url, js["subject"], listener)
        publish(nats_url, js["subject"], file_message(path))
        failed = listener.wait_for(lambda ms: any(m.type == "failure" for m in ms),
                                   what="the failure")
        assert next(m for m in failed if m.type == "failure").data["reason"] == "file_missing"
        taken = _jetstream(daemon)
        assert taken.sent["missing"] == 1  # the first delivery was handed back
        wait_until(lambda: taken.sent["ack"] == before["ack"] + 1, 5, "the failure acked")
        assert taken.received == before["received"] + 2
        wait_until(lambda: state(nats_url, js["stream"])["messages"] == 0, 5,
                   "the message acknowledged after its failure")
        assert state(nats_url, js["stream"])["ack_pending"] == 0
    assert len([m for m in listener.messages if m.type == "failure"]) == 1


def test_a_long_upload_is_kept_from_redelivery_by_in_progress_acks(
        js_config: dict[str, Any], nats_url: str, listener: Listener, s3: Any, bucket: str,
        tmp_path: Path) -> None:
    js_config["jetstream"]["ack_wait"] = 2
    js_config["endpoints"]["default"].update(bandwidth_limit="5Mbit")
    js = js_config["jetstream"]
    path = tmp_path / NAME.format(orbit=3)
    path.write_bytes(os.urandom(3 * 1000 * 1000))  # ~5 s at 5 Mbit/s
    with running_daemon(js_config) as daemon:
        before = linked(daemon, nats_url, js["subject"], listener)
        started = time.monotonic()
        publish(nats_url, js["subject"], file_message(path))
        listener.wait_for(lambda ms: any(m.type == "file" for m in ms), 30,
                          what="the completion")
        took = time.monotonic() - started
        assert took > 2 * js["ack_wait"], f"the upload took only {took:.1f} s"
        wait_until(lambda: state(nats_url, js["stream"])["messages"] == 0, 5,
                   "the message acknowledged")
        st = state(nats_url, js["stream"])
        assert st["redelivered"] == 0 and st["ack_pending"] == 0
        taken = _jetstream(daemon)
        # delivered once (num_redelivered shows only what is pending now)
        assert taken.received == before["received"] + 1 and taken.sent["progress"] >= 2
    assert len([m for m in listener.messages if m.type == "file"]) == 1


def test_without_nats_py_the_start_says_what_to_install(
        js_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """nats-py is optional: a config with jetstream fails at start, naming the extra."""
    from trollpush.errors import SetupError
    from trollpush.inputs.jetstream import create

    monkeypatch.setitem(sys.modules, "nats", None)  # import nats raises ImportError
    config = parse_config(js_config)

    class Intake:
        limits = None

    found = create(config, Intake())  # type: ignore[arg-type]
    assert found is not None
    with pytest.raises(SetupError, match=r"pip install 'trollpush\[jetstream\]'"):
        asyncio.run(found.start())


def test_the_summary_shows_no_credentials() -> None:
    config = parse_config({"jetstream": {"servers": ["nats://me:hush@nats.example.org:4222"]},
                           "endpoints": {"a": {"url": "http://127.0.0.1:9000"}},
                           "targets": [{"destination": "s3://b/"}]})
    assert "nats://nats.example.org:4222" in config.summary()
    assert "hush" not in config.summary()
