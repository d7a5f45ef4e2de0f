"""The bridge (``jetstream.bridge: true``) against a real ``nats-server -js``, moto and
real posttroll, REQ/REP and HTTP clients: what the other inputs take goes into the stream
once (however many instances heard it), is done by whichever instance takes it, and a
caller that waits still gets its outcome; a stream that cannot be reached leaves the
request to this instance."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from trollpush import client
from trollpush.config import config_schema, parse_config
from trollpush.errors import ConfigError
from trollpush.inputs._bridge import Bridge, bridge_for
from trollpush.inputs.jetstream import JetStreamInput
from trollpush.reload import diff
from trollpush.service import Service
from trollpush.stats import JS_BRIDGED

from .helpers import Listener, Producer, free_port, link, running_daemon, wait_until
from .natsd import NatsServer, binary, state
from .test_http import post
from .test_s3daemon import s3daemon_send

nats = pytest.importorskip("nats", reason="nats-py is not installed (trollpush[jetstream])")

SUBJECT = "/new/file/viirs/"
NAME = "NOAA-20_20261121_1005_{orbit:05d}.h5"


@pytest.fixture
def stream(natsd: NatsServer) -> dict[str, Any]:
    """A stream of this test's own, shared by the instances it starts."""
    tag = uuid.uuid4().hex[:8]
    return {"servers": [natsd.url], "stream": f"TB{tag}", "subject": f"trollpush.bridge.{tag}",
            "ack_wait": 10, "max_deliver": 3}


def instance(base: dict[str, Any], js: dict[str, Any], tmp_path: Path, name: str, *,
             bridge: bool = True, **inputs: Any) -> dict[str, Any]:
    """One instance: its own publisher and journal, the shared stream, and ``inputs``."""
    config = {k: v for k, v in base.items() if k in ("endpoints", "targets", "daemon")}
    config["publish"] = {**base["publish"], "name": f"trollpush-{name}",
                         "address": f"tcp://127.0.0.1:{free_port()}"}
    config["journal"] = {"path": str(tmp_path / f"{name}.sqlite")}
    config["jetstream"] = {**js, "bridge": bridge}
    config.update(inputs)
    return config


def listener_of(config: dict[str, Any]) -> Listener:
    return Listener(config["publish"]["address"])


def granules(tmp_path: Path, count: int, first: int = 1) -> list[Path]:
    out = []
    for orbit in range(first, first + count):
        path = tmp_path / NAME.format(orbit=orbit)
        path.write_bytes(os.urandom(20_000))
        out.append(path)
    return out


def key_of(path: Path) -> str:
    return f"j01/2026/11/21/{path.name}"


def stop_fetching(daemon: Service) -> None:
    """This instance's jetstream input stops taking requests (its connection stays, for
    its bridge): what it bridges is done by the other instance."""
    taken: JetStreamInput = daemon.input("jetstream")
    asyncio.run_coroutine_threadsafe(taken.stop(), daemon.loop).result(15)


def bridge(daemon: Service) -> Bridge:
    found = bridge_for(daemon)
    assert found is not None
    return found


def landed(s3: Any, bucket: str, key: str) -> bool:
    return any(o["Key"] == key for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


# --- pub-sub heard by two instances ----------------------------------------------------------


def test_announcements_heard_by_two_instances_enter_the_stream_once(
        base_config: dict[str, Any], stream: dict[str, Any], natsd: NatsServer,
        producer: Producer, s3: Any, bucket: str, tmp_path: Path) -> None:
    count = 20
    a = instance(base_config, stream, tmp_path, "a", subscribe=base_config["subscribe"])
    b = instance(base_config, stream, tmp_path, "b", subscribe=base_config["subscribe"])
    heard_a, heard_b = listener_of(a), listener_of(b)
    try:
        with running_daemon(a) as da, running_daemon(b) as db:
            link(producer, heard_a, SUBJECT)  # probes are refused here: never bridged
            link(producer, heard_b, SUBJECT)
            heard_a.clear()
            heard_b.clear()
            paths = granules(tmp_path, count)
            start = time.monotonic()
            for path in paths:
                producer.send(SUBJECT, "file", {"uri": str(path), "uid": path.name,
                                                "sensor": "viirs"})
            def done() -> int:
                return len(heard_a.of_type("file")) + len(heard_b.of_type("file"))
            wait_until(lambda: done() >= count, 30, "every completion")
            seconds = time.monotonic() - start
            wait_until(lambda: state(natsd.url, stream["stream"])["messages"] == 0, 10,
                       "the stream emptied")
            time.sleep(0.5)  # a second completion of any file would show by now
            announced = [m.data["uid"] for m in heard_a.of_type("file") + heard_b.of_type("file")]
            assert sorted(announced) == sorted(p.name for p in paths)
            bridges = bridge(da), bridge(db)
            assert sum(x.published for x in bridges) == count
            assert sum(x.duplicates for x in bridges) == count
            assert sum(x.fallbacks for x in bridges) == 0
            for outcome, n in (("published", count), ("duplicate", count), ("fallback", 0)):
                assert sum(d.stats.count(JS_BRIDGED, outcome=outcome)
                           for d in (da, db)) == n, outcome  # the metrics say the same
            assert da.transfer.completed + db.transfer.completed == count
            for path in paths:
                body = s3.get_object(Bucket=bucket, Key=key_of(path))["Body"].read()
                assert body == path.read_bytes()
            print(f"{count} announcements heard twice: done in {seconds:.2f} s; "
                  f"a did {da.transfer.completed}, b did {db.transfer.completed}")
    finally:
        heard_a.close()
        heard_b.close()


def test_a_destination_in_an_announcement_gets_no_rights_over_the_bridge(
        base_config: dict[str, Any], stream: dict[str, Any], producer: Producer, s3: Any,
        bucket: str, tmp_path: Path) -> None:
    a = instance(base_config, stream, tmp_path, "a", subscribe=base_config["subscribe"])
    b = instance(base_config, stream, tmp_path, "b", bridge=False)
    heard = listener_of(a)
    try:
        with running_daemon(a) as da, running_daemon(b) as db:
            link(producer, heard, SUBJECT)
            stop_fetching(da)
            path = granules(tmp_path, 1, first=77)[0]
            producer.send(SUBJECT, "file", {"uri": str(path), "uid": path.name,
                                            "destination": f"s3://{bucket}/evil/{path.name}",
                                            "overwrite": True})
            wait_until(lambda: landed(s3, bucket, key_of(path)), 20, "the routed object")
            assert not landed(s3, bucket, f"evil/{path.name}")
            assert db.transfer.completed == 1 and da.transfer.completed == 0
    finally:
        heard.close()


def test_a_directory_watched_by_two_instances_gives_one_request_per_file(
        base_config: dict[str, Any], stream: dict[str, Any], natsd: NatsServer, s3: Any,
        bucket: str, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    watched = [{"path": str(inbox), "subject": SUBJECT}]
    a = instance(base_config, stream, tmp_path, "a", watch=watched)
    b = instance(base_config, stream, tmp_path, "b", watch=watched)
    count = 10
    with running_daemon(a) as da, running_daemon(b) as db:
        paths = granules(inbox, count, first=40)
        wait_until(lambda: da.transfer.completed + db.transfer.completed >= count, 30,
                   "every file uploaded")
        wait_until(lambda: state(natsd.url, stream["stream"])["messages"] == 0, 10,
                   "the stream emptied")
        time.sleep(0.5)  # a second upload of any file would show by now
        assert da.transfer.completed + db.transfer.completed == count
        bridges = bridge(da), bridge(db)
        assert sum(x.published for x in bridges) == count
        assert sum(x.duplicates for x in bridges) == count
        for path in paths:
            assert landed(s3, bucket, key_of(path))


# --- callers that wait ----------------------------------------------------------------------


@pytest.fixture
def pair(base_config: dict[str, Any], stream: dict[str, Any], tmp_path: Path
         ) -> Iterator[tuple[Service, Service]]:
    """Instance a bridges its REQ/REP and HTTP inputs and takes nothing from the stream;
    instance b does what a bridges."""
    a = instance(base_config, stream, tmp_path, "a",
                 requests={"address": f"tcp://127.0.0.1:{free_port()}"},
                 http={"address": f"127.0.0.1:{free_port()}"},
                 s3daemon={"address": "127.0.0.1:0"})
    b = instance(base_config, stream, tmp_path, "b", bridge=False)
    with running_daemon(a) as da, running_daemon(b) as db:
        stop_fetching(da)
        yield da, db


def test_a_request_sent_to_one_instance_is_done_by_another_and_answered(
        pair: tuple[Service, Service], s3: Any, bucket: str, tmp_path: Path) -> None:
    da, db = pair
    server = da.input("requests").server.address
    path = granules(tmp_path, 1, first=5)[0]
    key = f"direct/{uuid.uuid4().hex[:6]}/{path.name}"  # no target names it: direct rights
    result = client.send(str(path), f"s3://{bucket}/{key}", server=server,
                         meta={"sensor": "viirs"}, timeout=10, result_timeout=30)
    assert result.ok, result.error
    assert result.message.type == "file" and result.message.data["uri"] == f"s3://{bucket}/{key}"
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == path.read_bytes()
    assert db.transfer.completed == 1 and da.transfer.completed == 0
    assert bridge(da).published == 1 and bridge(da).replies == 1
    # --no-wait: acknowledged once JetStream has it, done afterwards
    other = granules(tmp_path, 1, first=6)[0]
    started = time.monotonic()
    quick = client.send(str(other), f"s3://{bucket}/{key}.2", server=server, wait=False,
                        timeout=10)
    assert quick.ok and quick.message.type == "ack"
    assert quick.message.data["stream"] and quick.message.data["destinations"] == [
        f"s3://{bucket}/{key}.2"]
    assert time.monotonic() - started < 5
    wait_until(lambda: landed(s3, bucket, f"{key}.2"), 20, "the no-wait object")
    assert bridge(da).fallbacks == 0


def test_an_s3daemon_client_through_the_bridge_gets_success(
        pair: tuple[Service, Service], s3: Any, bucket: str, tmp_path: Path) -> None:
    """s3daemon's one-line client, unchanged: `Success` once another instance landed it."""
    da, db = pair
    path = granules(tmp_path, 1, first=11)[0]
    got = s3daemon_send(str(da.input("s3daemon").address), str(path),
                        f"alias/{bucket}/s3d/{path.name}")
    assert got == b"Success"
    assert s3.get_object(Bucket=bucket, Key=f"s3d/{path.name}")["Body"].read() == \
        path.read_bytes()
    assert db.transfer.completed == 1 and da.transfer.completed == 0
    assert bridge(da).published == 1 and bridge(da).replies == 1


def test_an_http_upload_through_the_bridge_gets_its_outcome(
        pair: tuple[Service, Service], s3: Any, bucket: str, tmp_path: Path) -> None:
    da, db = pair
    url = f"http://{da.input('http').server.address}/upload"
    path = granules(tmp_path, 1, first=8)[0]
    code, reply, _ = post(url, {"file": str(path), "uri": f"s3://{bucket}/http/x.h5"})
    assert code == 200, reply
    task = reply["task"]
    assert reply["msg"] == "upload succeeded" and task["uri"] == f"s3://{bucket}/http/x.h5"
    # what the upload did came back with the outcome
    assert task["upload_attempts"] == 1 and task["upload_parts"] == 1
    assert task["upload_size_bytes"] == path.stat().st_size
    assert task["upload_total_seconds"] >= task["upload_transfer_seconds"] > 0
    assert task["checksum"].startswith("crc32c:")
    assert s3.get_object(Bucket=bucket, Key="http/x.h5")["Body"].read() == path.read_bytes()
    code, reply, _ = post(url, {"file": str(path), "uri": f"s3://{bucket}/http/y.h5",
                                "wait": "false"})
    assert code == 202 and reply["msg"] == "accepted"
    wait_until(lambda: landed(s3, bucket, "http/y.h5"), 20, "the wait=false object")
    # a refusal stays here, answered as before
    code, reply, _ = post(url, {"file": str(tmp_path / "nothing.h5"),
                                "uri": f"s3://{bucket}/http/z.h5"})
    assert code == 400 and reply["task"]["reason"] == "file_missing"
    assert db.transfer.completed == 2 and da.transfer.completed == 0
    assert bridge(da).published == 2


def test_an_http_client_that_hangs_up_does_not_stop_a_bridged_request(
        base_config: dict[str, Any], stream: dict[str, Any], s3: Any, bucket: str,
        tmp_path: Path) -> None:
    a = instance(base_config, stream, tmp_path, "a",
                 http={"address": f"127.0.0.1:{free_port()}"})
    path = granules(tmp_path, 1, first=13)[0]
    with running_daemon(a) as da:
        stop_fetching(da)  # nobody takes it yet
        url = f"http://{da.input('http').server.address}/upload"
        with pytest.raises(TimeoutError):
            post(url, {"file": str(path), "uri": f"s3://{bucket}/gone/x.h5"}, timeout=1)
        wait_until(lambda: bridge(da).published == 1 and bridge(da).waiting == 0, 10,
                   "the caller gone, the request in the stream")
        b = instance(base_config, stream, tmp_path, "b", bridge=False)
        with running_daemon(b) as db:  # it is done anyway
            wait_until(lambda: landed(s3, bucket, "gone/x.h5"), 20, "the object")
            assert db.transfer.completed == 1


# --- the stream cannot be reached ------------------------------------------------------------


def test_a_request_is_done_here_when_the_stream_cannot_take_it(
        base_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch, s3: Any, bucket: str,
        tmp_path: Path) -> None:
    exe = binary()
    assert exe is not None
    store = tmp_path / "nats-down"
    store.mkdir()
    own = NatsServer(store, exe)
    monkeypatch.setattr(Bridge, "PUBLISH_RETRY", 1.0)
    js = {"servers": [own.url], "stream": "TBDOWN", "subject": "trollpush.bridge.down",
          "ack_wait": 10, "max_deliver": 3}
    a = instance(base_config, js, tmp_path, "a",
                 requests={"address": f"tcp://127.0.0.1:{free_port()}"})
    try:
        with running_daemon(a) as da:
            own.stop()  # a nats-server restart that takes too long
            path = granules(tmp_path, 1, first=9)[0]
            server = da.input("requests").server.address
            result = client.send(str(path), f"s3://{bucket}/down/{path.name}",
                                 server=server, timeout=15, result_timeout=30)
            assert result.ok, result.error
            assert s3.get_object(Bucket=bucket, Key=f"down/{path.name}")["Body"].read() \
                == path.read_bytes()
            assert da.transfer.completed == 1
            assert bridge(da).fallbacks == 1 and bridge(da).published == 0
            # while it stays down, the next request tries once: no wait per request
            second = granules(tmp_path, 1, first=10)[0]
            started = time.monotonic()
            assert client.send(str(second), f"s3://{bucket}/down/{second.name}",
                               server=server, timeout=15, result_timeout=30).ok
            assert time.monotonic() - started < Bridge.PUBLISH_RETRY
            assert bridge(da).fallbacks == 2
            # back: requests go into the stream again (this instance takes them too)
            own.start()
            taken: JetStreamInput = da.input("jetstream")
            wait_until(lambda: (nc := taken.connection()) is not None and nc.is_connected,
                       15, "the jetstream input reconnected")
            third = granules(tmp_path, 1, first=12)[0]
            assert client.send(str(third), f"s3://{bucket}/down/{third.name}",
                               server=server, timeout=15, result_timeout=30).ok
            assert bridge(da).published == 1 and bridge(da).fallbacks == 2
            assert da.transfer.completed == 3
    finally:
        own.stop()


# --- config ------------------------------------------------------------------------------


def test_bridge_must_be_true_or_false(base_config: dict[str, Any]) -> None:
    config = dict(base_config, jetstream={"bridge": "yes"})
    with pytest.raises(ConfigError) as info:
        parse_config(config)
    problem = next(p for p in info.value.problems if p.key == "jetstream.bridge")
    assert "'yes'" in str(problem) and "true or false" in str(problem)
    assert list(jsonschema.Draft202012Validator(config_schema()).iter_errors(config))
    assert parse_config(dict(base_config, jetstream={})).jetstream.bridge is False  # type: ignore[union-attr]


def test_a_reload_does_not_switch_the_bridge(base_config: dict[str, Any]) -> None:
    """The bridge wraps every input as it is built: switching it would rebind them all
    (a rebound REQ/REP or HTTP input loses its callers), so it waits for a restart."""
    on = parse_config(dict(base_config, jetstream={"bridge": True}))
    off = parse_config(dict(base_config, jetstream={"bridge": False, "ack_wait": 30}))
    change = diff(on, off)
    assert "jetstream.bridge" in change.restart
    assert change.config.jetstream is not None and change.config.jetstream.bridge is True
    assert change.config.jetstream.ack_wait == 30  # the rest applies
    gone = diff(on, parse_config(base_config))  # a bridging section stays until a restart
    assert gone.config.jetstream == on.jetstream and "jetstream.bridge" in gone.restart
    late = diff(parse_config(base_config), on)
    assert late.config.jetstream is not None and late.config.jetstream.bridge is False


def test_a_caller_still_waiting_at_a_stop_is_told_and_the_request_stays_in_the_stream(
        base_config: dict[str, Any], stream: dict[str, Any], natsd: NatsServer,
        bucket: str, tmp_path: Path) -> None:
    a = instance(base_config, stream, tmp_path, "a",
                 requests={"address": f"tcp://127.0.0.1:{free_port()}"})
    path = granules(tmp_path, 1, first=11)[0]
    results: list[client.SendResult] = []
    with running_daemon(a) as da:
        stop_fetching(da)  # nobody takes it: the caller is still waiting at the stop
        sender = threading.Thread(target=lambda: results.append(client.send(
            str(path), f"s3://{bucket}/stays/{path.name}",
            server=da.input("requests").server.address, timeout=10, result_timeout=30)))
        sender.start()
        wait_until(lambda: bridge(da).published == 1, 10, "the request in the stream")
    sender.join(timeout=30)
    assert results and not results[0].ok
    failure = results[0].message.data
    assert failure["reason"] == "shutdown" and "JetStream stream" in failure["error"]
    assert state(natsd.url, stream["stream"])["messages"] == 1
