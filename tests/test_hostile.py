"""Hostile and repeated input: size limits, path tricks, duplicates answered from the
journal, the same object never uploaded twice at once."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from trollpush import send

from .helpers import Listener, Producer, link, raw_request, running_daemon


def test_oversized_request_is_refused(base_config: dict[str, Any], granule: Path,
                                      ports: dict[str, int]) -> None:
    base_config["daemon"]["max_request_bytes"] = "4KiB"
    with running_daemon(base_config):
        from posttroll.message import Message

        big = Message("/x/", "file", {"uri": str(granule), "padding": "x" * 10_000,
                                      "destination": "s3://b/k"}).encode().encode()
        reply = raw_request(f"tcp://127.0.0.1:{ports['req']}", big, 15)
        assert reply.type == "failure" and reply.data["reason"] == "too_large"
        ok = send(str(granule), "s3://b/k", timeout=10,
                  server=f"tcp://127.0.0.1:{ports['req']}")  # the daemon is still there
        assert ok.message.data["reason"] != "too_large"


def test_allowed_roots_hold_against_path_tricks(base_config: dict[str, Any], tmp_path: Path,
                                                bucket: str, ports: dict[str, int]) -> None:
    """Only files really under an allowed root go: not `..`, not a symlink out."""
    root, outside = tmp_path / "data", tmp_path / "secret"
    root.mkdir()
    outside.mkdir()
    (root / "ok.h5").write_bytes(b"ok")
    (outside / "key.pem").write_bytes(b"secret")
    (root / "link.pem").symlink_to(outside / "key.pem")
    base_config["daemon"]["allowed_roots"] = [str(root)]
    server = f"tcp://127.0.0.1:{ports['req']}"
    with running_daemon(base_config):
        good = send(str(root / "ok.h5"), f"s3://{bucket}/", server=server, timeout=10)
        bad = [send(path, f"s3://{bucket}/", server=server, timeout=10) for path in (
            str(outside / "key.pem"), str(root / ".." / "secret" / "key.pem"),
            str(root / "link.pem"))]
    assert good.ok, good.error
    for result in bad:
        assert not result.ok and result.message.data["reason"] == "not_allowed"


def test_an_unchanged_file_that_landed_is_answered_from_the_journal(
        base_config: dict[str, Any], granule: Path, bucket: str,
        ports: dict[str, int]) -> None:
    """The same file to the same object again: answered, announced, not uploaded again;
    once the file changes it goes again."""
    server = f"tcp://127.0.0.1:{ports['req']}"
    with running_daemon(base_config) as daemon:
        first = send(str(granule), f"s3://{bucket}/again/", server=server, timeout=10)
        second = send(str(granule), f"s3://{bucket}/again/", server=server, timeout=10)
        assert daemon.transfer.completed == 1
        granule.write_bytes(os.urandom(100))
        third = send(str(granule), f"s3://{bucket}/again/", server=server, timeout=10)
        assert daemon.transfer.completed == 2
    assert first.ok and second.ok and third.ok
    assert second.message.data["uri"] == first.message.data["uri"]
    assert second.message.data["size"] == 70_000 and third.message.data["size"] == 100


def test_the_same_object_is_never_uploaded_twice_at_once(base_config: dict[str, Any],
                                                         granule: Path, bucket: str,
                                                         ports: dict[str, int]) -> None:
    server = f"tcp://127.0.0.1:{ports['req']}"
    results: list[Any] = []
    with running_daemon(base_config) as daemon:
        threads = [threading.Thread(target=lambda: results.append(send(
            str(granule), f"s3://{bucket}/once/", server=server, timeout=10)))
            for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        uploads = daemon.transfer.completed
    assert len(results) == 5 and all(r.ok for r in results)
    assert uploads == 1


def test_overwrite_always_uploads_again(base_config: dict[str, Any], producer: Producer,
                                        listener: Listener, granule: Path) -> None:
    base_config["targets"][0]["overwrite"] = "always"
    with running_daemon(base_config) as daemon:
        link(producer, listener, "/new/file/viirs/")
        for _ in range(2):
            producer.send("/new/file/viirs/", "file", {"uri": str(granule)})
        listener.wait_for(lambda ms: len([m for m in ms if m.type == "file"]) == 2)
        assert daemon.transfer.completed == 2
