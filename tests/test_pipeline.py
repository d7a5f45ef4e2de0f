"""The whole pipeline in-process: real posttroll sockets, a real moto S3 server."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from posttroll.message import Message

from trollpush import SetupError, __version__, send
from trollpush.messages import decode_message

from .helpers import Listener, Producer, link, running_daemon, wait_until


def _body(s3: Any, bucket: str, key: str) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_file_message_lands_and_is_announced(base_config: dict[str, Any], producer: Producer,
                                             listener: Listener, granule: Path, s3: Any,
                                             bucket: str) -> None:
    """A `file` message from an independent publisher ends as an object and a completion."""
    with running_daemon(base_config):
        link(producer, listener, "/new/file/viirs/")
        producer.send("/new/file/viirs/", "file",
                      {"uri": str(granule), "uid": granule.name, "sensor": "viirs",
                       "orbit_number": 12345})
        msgs = listener.wait_for(lambda ms: any(m.type == "file" for m in ms))
    done = [m for m in msgs if m.type == "file"]
    assert len(done) == 1
    m = done[0]
    key = f"j01/2026/11/21/{granule.name}"
    assert m.subject == "/uploaded/viirs/j01/"
    assert m.data["uri"] == f"s3://{bucket}/{key}"
    assert m.data["uid"] == granule.name
    assert m.data["size"] == granule.stat().st_size
    assert m.data["endpoint"] == "default"
    assert m.data["sensor"] == "viirs" and m.data["orbit_number"] == 12345
    assert m.data["platform_name"] == "NOAA-20"  # parsed, un-aliased
    assert _body(s3, bucket, key) == granule.read_bytes()


def test_fan_out_and_dataset_announced_once_whole(base_config: dict[str, Any],
                                                  producer: Producer, listener: Listener,
                                                  tmp_path: Path, s3: Any, bucket: str) -> None:
    """A dataset goes to every matching target; each target announces it once, whole."""
    base_config["targets"].append({"name": "archive", "destination": f"s3://{bucket}/archive/",
                                   "publish_topic": "/uploaded/archive/"})
    files = []
    for i in range(3):
        p = tmp_path / f"NOAA-20_20261121_10{i:02d}_1234{i}.h5"
        p.write_bytes(os.urandom(1000 + i))
        files.append(p)
    with running_daemon(base_config):
        link(producer, listener, "/new/file/viirs/")
        producer.send("/new/file/viirs/", "dataset", {
            "dataset": [{"uri": str(p), "uid": p.name} for p in files], "sensor": "viirs"})
        msgs = listener.wait_for(lambda ms: len([m for m in ms if m.type == "dataset"]) >= 2)
        time.sleep(0.3)  # an absence check: a duplicate announcement would show up here
    sets = {m.subject: m for m in listener.of_type("dataset")}
    assert len(listener.of_type("dataset")) == 2
    assert set(sets) == {"/uploaded/viirs/j01/", "/uploaded/archive/"}
    for m in sets.values():
        assert [d["uid"] for d in m.data["dataset"]] == [p.name for p in files]
        assert [d["size"] for d in m.data["dataset"]] == [1000, 1001, 1002]
        assert m.data["sensor"] == "viirs"
    archived = [d["uri"] for d in sets["/uploaded/archive/"].data["dataset"]]
    assert archived == [f"s3://{bucket}/archive/{p.name}" for p in files]
    for p in files:
        assert _body(s3, bucket, f"archive/{p.name}") == p.read_bytes()
    assert not msgs or all(m.type in ("dataset", "failure") for m in msgs)


def test_bad_messages_are_announced_and_the_daemon_keeps_going(
        base_config: dict[str, Any], producer: Producer, listener: Listener, granule: Path,
        tmp_path: Path, ports: dict[str, int]) -> None:
    """Missing files, no route, compose errors, malformed frames: each a failure, never a stop."""
    base_config["targets"].append({"name": "needs-orbit", "topics": ["/new/file/other/"],
                                   "destination": "s3://b/{orbit}/"})
    (tmp_path / "x.txt").write_text("x")
    with running_daemon(base_config) as daemon:
        link(producer, listener, "/new/file/viirs/")
        before = daemon.counts["rejected"]  # the link probes were refused on purpose
        producer.send("/new/file/viirs/", "file", {"uri": str(tmp_path / "gone.h5")})
        producer.send("/new/file/viirs/", "file", {"uri": str(tmp_path)})
        producer.send("/new/file/viirs/", "file", {"uid": "no-uri.h5"})
        producer.send("/new/file/viirs/", "info", {"uri": str(granule)})
        producer.send("/new/file/viirs/", "file", {"uri": str(tmp_path / "x.txt")})
        producer.send("/new/file/other/", "file", {"uri": str(tmp_path / "x.txt")})
        producer.send_raw("pytroll://new/file/viirs/ file")  # too few fields
        # (a frame not starting with the subscribed prefix never arrives: ZMQ filters it)
        producer.send_raw("pytroll://new/file/viirs/ file a@b 2026-11-21T10:00:00 v1.01 "
                          "application/json {not json")
        # (non-UTF-8 frames are covered on the REQ/REP side); a good one must still work
        producer.send("/new/file/viirs/", "file", {"uri": str(granule)})
        msgs = listener.wait_for(lambda ms: any(m.type == "file" for m in ms))
        reasons = {m.data["reason"] for m in msgs if m.type == "failure"}
        assert {"file_missing", "not_a_file", "missing_uri", "unsupported_type",
                "no_route", "compose_error"} <= reasons, reasons
        fail = next(m for m in msgs if m.type == "failure" and m.data["reason"] == "compose_error")
        assert "{orbit}" in fail.data["error"] and fail.data["target"] == "needs-orbit"
        # gone, directory, no uri, info, and the two raw frames (bad_message is not
        # announced with a uri, so it is counted rather than matched above)
        assert daemon.counts["rejected"] - before == 6


def test_request_reply_plain_req_socket(base_config: dict[str, Any], granule: Path, s3: Any,
                                        bucket: str, ports: dict[str, int]) -> None:
    """A plain REQ client (s3daemon style, destination given) gets the completion as reply;
    malformed frames get a failure reply, not silence."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 15000)
    try:
        with running_daemon(base_config):
            sock.connect(f"tcp://127.0.0.1:{ports['req']}")
            req = Message("/whatever/", "file", {"uri": str(granule),
                                                 "destination": f"s3://{bucket}/direct/"})
            sock.send_string(req.encode())
            reply = decode_message(sock.recv_string())
            assert reply.type == "file"
            assert reply.data["uri"] == f"s3://{bucket}/direct/{granule.name}"
            assert "destination" not in reply.data and "reply" not in reply.data
            for bad in (b"\xff\xfe\x00garbage", b"pytroll://x file", b""):
                sock.send(bad)
                reply = decode_message(sock.recv_string())
                assert reply.type == "failure" and reply.data["reason"] == "bad_message"
            sock.send_string(Message("/x/", "file", {"uri": str(granule),
                                                     "destination": "http://nope"}).encode())
            reply = decode_message(sock.recv_string())
            assert reply.type == "failure" and reply.data["reason"] == "bad_destination"
    finally:
        sock.close()
        ctx.term()
    assert _body(s3, bucket, f"direct/{granule.name}") == granule.read_bytes()


def test_fifty_concurrent_sends(base_config: dict[str, Any], tmp_path: Path, s3: Any,
                                bucket: str, ports: dict[str, int]) -> None:
    """50 clients at once are all served, each with its own answer."""
    paths = []
    for i in range(50):
        p = tmp_path / f"f{i:02d}.bin"
        p.write_bytes(os.urandom(2000 + i))
        paths.append(p)
    results: dict[int, Any] = {}

    def one(i: int) -> None:
        results[i] = send(str(paths[i]), f"s3://{bucket}/many/", timeout=60,
                          server=f"tcp://127.0.0.1:{ports['req']}")

    with running_daemon(base_config):
        threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=90)
    assert len(results) == 50
    for i, r in results.items():
        assert r.ok, r.error
        assert r.message.data["uri"] == f"s3://{bucket}/many/{paths[i].name}"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {f"many/{p.name}" for p in paths}


def test_upload_failure_is_announced_with_attempts(base_config: dict[str, Any],
                                                   producer: Producer, listener: Listener,
                                                   granule: Path, ports: dict[str, int]) -> None:
    """A store error is announced on the failure topic and answered to the requester."""
    with running_daemon(base_config):
        link(producer, listener, "/new/file/viirs/")
        result = send(str(granule), "s3://no-such-bucket-here/x", timeout=30,
                      server=f"tcp://127.0.0.1:{ports['req']}")
        [announced] = listener.wait_for(lambda ms: any(m.type == "failure" for m in ms))
    # the reply is the announcement, plus the daemon's version (REQ/REP replies only)
    assert result.message.data["version"] == __version__
    assert announced.subject == "/failed" and announced.data == {
        k: v for k, v in result.message.data.items() if k != "version"}
    assert not result.ok
    data = result.message.data
    assert result.message.type == "failure"
    assert data["reason"] == "permanent_error" and "NoSuchBucket" in data["error"]
    assert data["attempts"] == 1  # permanent: not retried
    assert data["uri"] == str(granule)
    assert data["destination"] == "s3://no-such-bucket-here/x"


def test_sigterm_grace_answers_cut_off_requests(base_config: dict[str, Any], granule: Path,
                                                silent_server: str,
                                                ports: dict[str, int]) -> None:
    """Shutdown waits `shutdown_grace`, then fails what is left loudly (and answers it)."""
    base_config["endpoints"]["hung"] = {"url": silent_server, "attempt_timeout": 60,
                                        "tries": 1, "connect_timeout": 0.5}
    base_config["daemon"]["shutdown_grace"] = 1
    results: list[Any] = []
    with running_daemon(base_config) as daemon:
        worker = threading.Thread(target=lambda: results.append(send(
            str(granule), "s3://b/k", server=f"tcp://127.0.0.1:{ports['req']}", timeout=60,
            endpoint="hung")))
        worker.start()
        wait_until(lambda: daemon.transfer.active == 1, 15, "upload in progress")
        start = time.monotonic()
    stopped_after = time.monotonic() - start
    worker.join(timeout=30)
    assert stopped_after < 10  # grace 1 s, not the 60 s attempt timeout
    assert results and not results[0].ok
    assert results[0].message.data["reason"] == "shutdown"


def test_requests_only_without_publishing(base_config: dict[str, Any], tmp_path: Path,
                                          s3: Any, bucket: str, ports: dict[str, int]) -> None:
    """No subscribe, no publish: a pure REQ/REP uploader (s3daemon's role); a dataset of
    several files to a directory destination is answered once, whole."""
    del base_config["subscribe"], base_config["publish"], base_config["targets"]
    files = [tmp_path / f"seg{i}.dat" for i in range(3)]
    for p in files:
        p.write_bytes(os.urandom(3000))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 15000)
    try:
        with running_daemon(base_config) as daemon:
            sock.connect(f"tcp://127.0.0.1:{ports['req']}")
            sock.send_string(Message("/x/", "dataset", {
                "dataset": [{"uri": str(p), "uid": p.name} for p in files],
                "destination": f"s3://{bucket}/segments/", "platform_name": "Metop-C"}).encode())
            reply = decode_message(sock.recv_string())
            assert "disabled" in repr(daemon.announcer)
    finally:
        sock.close()
        ctx.term()
    assert reply.type == "dataset" and reply.data["platform_name"] == "Metop-C"
    assert [d["uri"] for d in reply.data["dataset"]] == [
        f"s3://{bucket}/segments/{p.name}" for p in files]
    for p in files:
        assert s3.get_object(Bucket=bucket, Key=f"segments/{p.name}")["Body"].read() == \
            p.read_bytes()


def test_no_wait_request_that_cannot_start_gets_the_failure(
        base_config: dict[str, Any], granule: Path, ports: dict[str, int]) -> None:
    """`--no-wait` returns on acceptance; a request that cannot even start is not 'accepted'."""
    with running_daemon(base_config):
        res = send(str(granule), "s3://b/k", server=f"tcp://127.0.0.1:{ports['req']}",
                   timeout=15, wait=False, endpoint="nope")
    assert not res.ok and res.message.data["reason"] == "bad_destination"
    assert "nope" in (res.error or "")


def test_send_notices_a_daemon_that_goes_away(base_config: dict[str, Any], granule: Path,
                                              silent_server: str,
                                              ports: dict[str, int]) -> None:
    """The daemon accepted, then its connection closed: `send` ends with daemon_gone instead
    of waiting forever.  (A graceful stop answers first, so the socket is torn down here the
    hard way, as a crash would.)"""
    base_config["endpoints"]["hung"] = {"url": silent_server, "attempt_timeout": 60, "tries": 1,
                                        "connect_timeout": 0.5}
    base_config["daemon"]["shutdown_grace"] = 0.5
    results: list[Any] = []
    with pytest.raises(SetupError, match="intake failed"), \
            running_daemon(base_config) as daemon:
        worker = threading.Thread(target=lambda: results.append(send(
            str(granule), "s3://b/k", server=f"tcp://127.0.0.1:{ports['req']}",
            endpoint="hung")))
        worker.start()
        wait_until(lambda: daemon.transfer.active == 1, 15, "upload in progress")
        server = daemon.input("requests").server
        assert server is not None and daemon.loop is not None
        # the socket dies as in a crash
        daemon.loop.call_soon_threadsafe(server.close)
        worker.join(timeout=20)
        assert not worker.is_alive()
    assert results and not results[0].ok
    assert results[0].message.data["reason"] == "daemon_gone"


def test_own_announcements_heard_back_are_not_refused_loudly(
        base_config: dict[str, Any], producer: Producer, listener: Listener,
        granule: Path) -> None:
    """failure/ack/multiple messages arriving as input are dropped quietly: refusing them
    with a failure announcement would feed a loop when a daemon hears its own publisher."""
    with running_daemon(base_config) as daemon:
        link(producer, listener, "/new/file/viirs/")
        before = daemon.counts["rejected"]  # the link probes were refused on purpose
        for kind in ("failure", "ack", "multiple", "beat"):
            producer.send("/new/file/viirs/", kind, {"uri": str(granule), "reason": "x"})
        producer.send("/new/file/viirs/", "file", {"uri": str(granule)})
        msgs = listener.wait_for(lambda ms: any(m.type == "file" for m in ms))
        rejected = daemon.counts["rejected"] - before
    assert [m.type for m in msgs] == ["file"]
    assert rejected == 0
