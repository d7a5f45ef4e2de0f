"""Object options end to end: ``trollpush run`` as a process, real stores, real clients.

SeaweedFS (it enforces SSE-C and conditional writes): a small file and a multipart one
routed by a target with an SSE-C key, storage class, composed metadata and tags, the
content type from the name and ``if_none_match``; both read back with the key (and refused
without it); a different file for the same key is announced as ``exists``, the same one
as done; and the key is in no output of the whole run: the daemon's log, the
announcements, ``send``'s replies, ``check``, ``match``, ``status``, ``/version``,
``/status``, ``/metrics``, nor the journal file.

moto: a versioned bucket with SSE-S3: the completion names the version and the mode.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from .conftest import CREDS
from .helpers import Listener, Producer, daemon_process, free_port, link, wait_until

pytestmark = pytest.mark.slow

SUBJECT = "/new/file/viirs/"
NAME = "NOAA-20_20261201_0312_{orbit:05d}.h5"


def trollpush(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trollpush", *args], capture_output=True,
                          text=True, timeout=60, env=os.environ.copy())


@contextmanager
def _wired(ports: dict[str, int]) -> Iterator[tuple[Listener, Producer]]:
    """A listener on the daemon's announcements, a producer on its subscription."""
    listener = Listener(f"tcp://127.0.0.1:{ports['pub']}")
    producer = Producer(f"tcp://127.0.0.1:{ports['sub']}")
    try:
        yield listener, producer
    finally:
        producer.close()
        listener.close()


def _ready(proc: subprocess.Popen[bytes], log: Path) -> None:
    wait_until(lambda: "trollpush ready" in log.read_text() or proc.poll() is not None, 30,
               "daemon ready")
    assert proc.poll() is None, log.read_text()


def _client(url: str) -> Any:
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"])


def _config(url: str, bucket: str, key_file: Path, tmp_path: Path
            ) -> tuple[dict[str, Any], dict[str, int]]:
    ports = {"sub": free_port(), "req": free_port(), "pub": free_port(), "http": free_port()}
    return {
        "subscribe": {"topics": [SUBJECT], "nameserver": False,
                      "addresses": [f"tcp://127.0.0.1:{ports['sub']}"]},
        "requests": {"address": f"tcp://127.0.0.1:{ports['req']}"},
        "http": {"address": f"127.0.0.1:{ports['http']}", "upload": False},
        "publish": {"name": "trollpush-objects", "address": f"tcp://127.0.0.1:{ports['pub']}",
                    "nameservers": False, "topic": "/uploaded/", "failure_topic": "/failed"},
        "journal": {"path": str(tmp_path / "journal.sqlite")},
        "endpoints": {"default": {
            "url": url, "region": "us-east-1", "tries": 2, "attempt_timeout": 20,
            "checksum": "crc32c", "multipart_threshold": "5MiB", "multipart_chunksize": "5MiB",
            "object": {"encryption": "sse-c", "sse_c_key_file": str(key_file),
                       "storage_class": "STANDARD_IA",
                       "metadata": {"producer": "trollpush-test"}}}},
        "targets": [{
            "name": "viirs", "topics": [SUBJECT],
            "pattern": "{platform_name}_{start_time:%Y%m%d_%H%M}_{orbit:05d}.h5",
            "destination": f"s3://{bucket}/{{platform_name}}/{{uid}}",
            "object": {"content_type": "auto", "if_none_match": True,
                       "metadata": {"platform": "{platform_name}",
                                    "start-time": "{start_time:%Y-%m-%dT%H:%M:%S}"},
                       "tags": {"mission": "{platform_name}", "orbit": "{orbit}"},
                       "cache_control": "max-age=3600",
                       "content_disposition": "attachment"}}],
        "daemon": {"shutdown_grace": 10},
    }, ports


def test_sse_c_and_conditional_writes_through_the_daemon(seaweed: str, weed_bucket: str,
                                                        tmp_path: Path) -> None:
    key = os.urandom(32)
    forms = [base64.b64encode(key).decode(), key.hex(), repr(key)[2:-1]]
    key_file = tmp_path / "sse-c.key"
    key_file.write_text(forms[0] + "\n")
    key_file.chmod(0o600)
    config, ports = _config(seaweed, weed_bucket, key_file, tmp_path)
    store = _client(seaweed)
    sse = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": key}
    small, large = tmp_path / NAME.format(orbit=1), tmp_path / NAME.format(orbit=2)
    small.write_bytes(os.urandom(100_000))
    large.write_bytes(os.urandom(11 * 1024 * 1024 + 5))
    outputs: list[str] = []
    with _wired(ports) as (listener, producer):
        with daemon_process(config, tmp_path, "-v") as (proc, log):
            _ready(proc, log)
            link(producer, listener, SUBJECT)
            for path in (small, large):
                producer.send(SUBJECT, "file", {"uri": str(path), "uid": path.name,
                                                "sensor": "viirs"})
            done = listener.wait_for(lambda ms: len([m for m in ms if m.type == "file"]) == 2,
                                     60, "two completions")
            by_name = {m.data["uid"]: m.data for m in done if m.type == "file"}
            for path in (small, large):
                item = by_name[path.name]
                obj = f"NOAA-20/{path.name}"
                assert item["uri"] == f"s3://{weed_bucket}/{obj}"
                assert item["storage_class"] == "STANDARD_IA"
                assert item["encryption"] == "sse-c"
                assert item["etag"] and '"' not in item["etag"]
                head = store.head_object(Bucket=weed_bucket, Key=obj, **sse)
                assert head["ContentLength"] == path.stat().st_size
                assert head.get("StorageClass") == "STANDARD_IA"
                assert head["ContentType"] == "application/x-hdf5"
                assert head["CacheControl"] == "max-age=3600"
                assert head["ContentDisposition"] == "attachment"
                assert head["Metadata"] == {"producer": "trollpush-test", "platform": "NOAA-20",
                                            "start-time": "2026-12-01T03:12:00"}
                orbit = str(int(path.name.split("_")[-1][:5]))
                tags = store.get_object_tagging(Bucket=weed_bucket, Key=obj)["TagSet"]
                assert {t["Key"]: t["Value"] for t in tags} == {"mission": "NOAA-20",
                                                                "orbit": orbit}
                body = store.get_object(Bucket=weed_bucket, Key=obj, **sse)["Body"].read()
                assert body == path.read_bytes()
                with pytest.raises(ClientError):  # the store keeps no key: none, no bytes
                    store.get_object(Bucket=weed_bucket, Key=obj)["Body"].read()
            assert by_name[large.name].get("checksum", "").endswith("-3")  # 3 parts

            # another file for the same object: never overwritten, announced as `exists`
            other = tmp_path / "other" / small.name
            other.parent.mkdir()
            other.write_bytes(os.urandom(100_000))
            listener.clear()
            producer.send(SUBJECT, "file", {"uri": str(other), "uid": other.name})
            failed = listener.wait_for(lambda ms: any(m.type == "failure" for m in ms), 30,
                                       "the failure announcement")
            fail = next(m.data for m in failed if m.type == "failure")
            assert fail["reason"] == "exists", fail
            assert store.get_object(Bucket=weed_bucket, Key=f"NOAA-20/{small.name}",
                                    **sse)["Body"].read() == small.read_bytes()

            # the same file again, past the journal (--overwrite): the store refuses the
            # write (412), the object there is the same: announced as done
            server = f"tcp://127.0.0.1:{ports['req']}"
            again = trollpush("send", str(large), f"s3://{weed_bucket}/NOAA-20/{large.name}",
                              "--server", server, "--overwrite", "--json")
            outputs += [again.stdout, again.stderr]
            assert again.returncode == 0, again.stdout + again.stderr
            reply = json.loads(again.stdout)
            assert reply["data"]["encryption"] == "sse-c", reply

            # every view of the running daemon
            for args in (("status", "--server", server, "--json"),
                         ("status", "--http", f"http://127.0.0.1:{ports['http']}", "--json")):
                seen = trollpush(*args)
                assert seen.returncode == 0, seen.stdout + seen.stderr
                outputs += [seen.stdout, seen.stderr]
            for view in ("version", "status", "metrics"):
                with urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/{view}",
                                            timeout=10) as answer:
                    outputs.append(answer.read().decode())
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        outputs += [log.read_text(), *(repr(m) for m in listener.messages)]

    cfg = tmp_path / "trollpush.yaml"
    checked = trollpush("check", str(cfg))
    assert checked.returncode == 0, checked.stderr
    assert "sse-c" in checked.stdout
    matched = trollpush("match", str(cfg), str(small), "--topic", SUBJECT, "-v")
    assert "STANDARD_IA" in matched.stdout and "if_none_match" in matched.stdout
    outputs += [checked.stdout, checked.stderr, matched.stdout, matched.stderr]
    journal = (tmp_path / "journal.sqlite").read_bytes()
    everything = "\n".join(outputs)
    for form in forms:
        assert form not in everything
        assert form.encode() not in journal
    assert key not in journal
    assert "upload complete" in everything  # the log was read, not an empty file


def test_versioned_bucket_and_sse_s3_on_moto(s3_url: str, tmp_path: Path) -> None:
    store = _client(s3_url)
    bucket = f"tp-{uuid.uuid4().hex[:16]}"
    store.create_bucket(Bucket=bucket)
    store.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    config, ports = _config(s3_url, bucket, tmp_path / "unused", tmp_path)
    config["endpoints"]["default"]["object"] = {"encryption": "sse-s3",
                                                "storage_class": "STANDARD_IA"}
    config["targets"][0]["object"]["if_none_match"] = False
    path = tmp_path / NAME.format(orbit=7)
    path.write_bytes(os.urandom(50_000))
    with _wired(ports) as (listener, producer), daemon_process(config, tmp_path) as (proc, log):
        _ready(proc, log)
        link(producer, listener, SUBJECT)
        producer.send(SUBJECT, "file", {"uri": str(path), "uid": path.name})
        done = listener.wait_for(lambda ms: any(m.type == "file" for m in ms), 30,
                                 "the completion")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    item = next(m.data for m in done if m.type == "file")
    head = store.head_object(Bucket=bucket, Key=f"NOAA-20/{path.name}")
    assert item["version_id"] == head["VersionId"]
    assert item["encryption"] == "sse-s3" and head["ServerSideEncryption"] == "AES256"
    assert item["storage_class"] == "STANDARD_IA" == head["StorageClass"]
    assert item["etag"] == head["ETag"].strip('"')
    assert item["size"] == 50_000


def test_kill_9_mid_sse_c_multipart_then_restart_resumes_with_the_key(
        seaweed: str, weed_bucket: str, tmp_path: Path) -> None:
    """kill -9 while an SSE-C multipart upload is half done; the restarted daemon takes the
    key again from its config (the journal holds only its MD5), lists the parts with it,
    sends the rest with it, and the object reads back only with it."""
    key = os.urandom(32)
    key_file = tmp_path / "sse-c.key"
    key_file.write_bytes(key)
    config, ports = _config(seaweed, weed_bucket, key_file, tmp_path)
    # slow enough to be cut in the middle: 40 MiB at 40 Mbit/s, one part at a time
    config["endpoints"]["default"].update(bandwidth_limit="40Mbit", max_parts_in_flight=1)
    path = tmp_path / NAME.format(orbit=3)
    path.write_bytes(os.urandom(40 * 1024 * 1024))
    journal = tmp_path / "journal.sqlite"

    def parts_done() -> int:
        if not journal.exists():
            return 0
        conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT count(*) FROM parts").fetchone()[0])
        finally:
            conn.close()

    store = _client(seaweed)
    with _wired(ports) as (listener, producer):
        with daemon_process(config, tmp_path, "-v") as (proc, log):
            _ready(proc, log)
            link(producer, listener, SUBJECT)
            producer.send(SUBJECT, "file", {"uri": str(path), "uid": path.name})
            wait_until(lambda: parts_done() >= 2, 60, "two parts recorded")
            proc.kill()
            assert proc.wait(timeout=30) == -signal.SIGKILL
        assert not listener.of_type("file")
        first = log.read_text()
        with daemon_process(config, tmp_path, "-v") as (proc, log):
            done = listener.wait_for(lambda ms: any(m.type == "file" for m in ms), 90,
                                     "the completion after the restart")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        second = log.read_text()
    assert "resuming multipart upload" in second, second
    resumed = int(second.split("resuming multipart upload", 1)[1].split(": ", 1)[1]
                  .split(" part(s)", 1)[0])
    assert resumed >= 2
    item = next(m.data for m in done if m.type == "file")
    assert item["encryption"] == "sse-c" and item["checksum"].endswith("-8")
    obj = f"NOAA-20/{path.name}"
    sse = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": key}
    assert store.get_object(Bucket=weed_bucket, Key=obj, **sse)["Body"].read() == \
        path.read_bytes()
    with pytest.raises(ClientError):
        store.head_object(Bucket=weed_bucket, Key=obj)
    assert store.list_multipart_uploads(Bucket=weed_bucket).get("Uploads", []) == []
    for form in (base64.b64encode(key).decode(), key.hex(), repr(key)[2:-1]):
        assert form not in first + second
