"""The pytroll chain end to end, with the real programs: pytroll-collectors' trollstalker
watches a directory and announces each new file (its aliases applied, ``sensor`` a
list), trollpush uploads it to the store, and a consumer opens each object through the
``filesystem`` and ``path`` its completion announces, as trollflow2 does.

trollstalker publishes without a nameserver when its config says ``nameservers = false``
with a ``posttroll_port``: posttroll then binds ``tcp://*:PORT`` (all interfaces: it has
no way to bind loopback only), and trollpush connects to it on 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fsspec import AbstractFileSystem
from posttroll.message import Message
from s3fs import S3FileSystem

from .helpers import Listener, free_port, running_daemon

PATTERN = "{platform_name}_{start_time:%Y%m%d_%H%M}_{orbit:05d}"
TOPIC = "/new/file/viirs/"


@pytest.fixture
def stalker(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A real trollstalker process watching a directory: (the directory, its port).  Its
    aliases turn J01 into NOAA-20, as a station's trollstalker does."""
    watched, port = tmp_path / "incoming", free_port()
    watched.mkdir()
    ini = tmp_path / "trollstalker.ini"
    ini.write_text("[viirs]\n"
                   f"topic = {TOPIC}\n"
                   f"directory = {watched}\n"
                   # any extension, so that link probes (.probe) are announced too
                   f"filepattern = {PATTERN}.{{ext}}\n"
                   "instruments = viirs\n"
                   f"posttroll_port = {port}\n"
                   "nameservers = false\n"
                   "alias_platform_name = J01:NOAA-20\n")
    script = Path(sys.executable).parent / "trollstalker.py"  # pytroll-collectors' own
    with open(tmp_path / "trollstalker.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, str(script), "-c", str(ini), "-C", "viirs"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        yield watched, port
    finally:
        proc.terminate()  # by its PID
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        S3FileSystem.clear_instance_cache()


def joined(watched: Path, listener: Listener, timeout: float = 45.0) -> None:
    """Wait until trollstalker -> trollpush -> listener carries messages (PUB/SUB drops
    what is sent before a subscription has joined): drop probe files that trollstalker
    announces and no target takes, until trollpush's ``no_route`` failure for one comes
    back.  From then on the listener drops the probes' announcements."""
    probes: set[str] = set()

    def answered(ms: list[Message]) -> bool:
        return any(m.type == "failure" and m.data.get("uri") in probes for m in ms)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = watched / f"J01_20000101_0000_{len(probes):05d}.probe"
        probes.add(str(probe))
        probe.write_bytes(b"probe")
        try:
            listener.wait_for(answered, timeout=0.5)
        except AssertionError:
            continue
        with listener._lock:
            listener.ignored.update(probes)
            listener.messages = [m for m in listener.messages if m.data.get("uri") not in probes]
        return
    raise AssertionError("trollstalker -> trollpush -> listener never joined")


def opened(item: dict[str, Any]) -> bytes:
    """What trollflow2's launcher does with a file item that carries a filesystem."""
    fs = AbstractFileSystem.from_json(json.dumps(item["filesystem"]))
    with fs.open(item["path"], "rb") as f:
        data: bytes = f.read()
    return data


def test_trollstalker_to_trollpush_to_fsspec(
        stalker: tuple[Path, int], base_config: dict[str, Any], bucket: str, s3: Any,
        s3_url: str, ports: dict[str, int]) -> None:
    """Each file dropped where trollstalker looks lands under NOAA-20/viirs/ (the
    producer's alias kept over the J01 that the target's pattern reads from the name;
    ``sensor: ["viirs"]`` composed as its element), and every completion opens through
    its ``filesystem``/``path``.  The same files also go through an endpoint announced by
    a ``public_url`` and one with ``announce_filesystem: false``."""
    watched, port = stalker
    public = s3_url.replace("127.0.0.1", "localhost")  # another URL to the same store
    endpoint = base_config["endpoints"]["default"]
    base_config["subscribe"] = {"topics": [TOPIC], "nameserver": False,
                                "addresses": [f"tcp://127.0.0.1:{port}"]}
    base_config["endpoints"] = {"default": endpoint,
                                "public": {**endpoint, "public_url": public},
                                "quiet": {**endpoint, "announce_filesystem": False}}
    base_config["targets"] = [
        {"name": name, "topics": [TOPIC], "pattern": f"{PATTERN}.h5", "endpoint": name,
         "destination": f"s3://{bucket}/{prefix}{{platform_name}}/{{sensor}}/{{uid}}",
         "publish_topic": f"/uploaded/{{platform_name}}/{name}/"}
        for name, prefix in (("default", ""), ("public", "public/"), ("quiet", "quiet/"))]
    names = [f"J01_20261121_10{i:02d}_{70000 + i:05d}.h5" for i in range(3)]
    listener = Listener(f"tcp://127.0.0.1:{ports['pub']}", topics=["/"])
    try:
        with running_daemon(base_config):
            joined(watched, listener)
            for name in names:
                (watched / name).write_bytes(uuid.uuid4().bytes * 1000)
            got = listener.wait_for(lambda ms: len(ms) >= 3 * len(names), 60,
                                    "a completion per file and endpoint")
    finally:
        listener.close()
    assert all(m.type == "file" for m in got), [m.data for m in got if m.type != "file"]
    by = {(m.data["endpoint"], m.data["uid"]): m for m in got}
    assert len(by) == 3 * len(names)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert {f"NOAA-20/viirs/{n}" for n in names} <= keys
    for name in names:
        content = (watched / name).read_bytes()
        plain, public_one, quiet = (by[e, name] for e in ("default", "public", "quiet"))
        assert plain.subject == "/uploaded/NOAA-20/default/"
        assert plain.data["platform_name"] == "NOAA-20"
        assert plain.data["sensor"] == ["viirs"]
        assert plain.data["uri"] == plain.data["path"] == f"s3://{bucket}/NOAA-20/viirs/{name}"
        assert plain.data["endpoint_url"] == s3_url
        assert opened(plain.data) == content
        # public_url: announced in both places; the consumer reads through it
        assert public_one.data["endpoint_url"] == public
        assert public_one.data["filesystem"]["client_kwargs"]["endpoint_url"] == public
        assert s3_url not in public_one.encode()
        assert opened(public_one.data) == content
        # announce_filesystem: false
        assert "filesystem" not in quiet.data and "path" not in quiet.data
        assert quiet.data["uri"] == f"s3://{bucket}/quiet/NOAA-20/viirs/{name}"
        assert quiet.data["endpoint_url"] == s3_url
