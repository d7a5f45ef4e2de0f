"""Announce: the messages trollpush builds are posttroll's own, field for field, sent
in order from the publisher's thread."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from pathlib import Path
from typing import Any

from posttroll.message import Message

from trollpush import messages
from trollpush.announce import Announcer
from trollpush.config import parse_config
from trollpush.models import (
    Job,
    ObjectOptions,
    Request,
    SourceFile,
    SseCKey,
    Upload,
    UploadResult,
)

from .helpers import Listener, wait_until


def test_new_message_is_a_posttroll_message() -> None:
    """Built without posttroll's per-message user and host look-up, yet the same: the
    same attributes, the same sender, and it encodes and decodes like one."""
    data = {"uri": "s3://b/k", "when": dt.datetime(2026, 11, 21, 10, 5, tzinfo=dt.UTC)}
    ours = messages.new_message("/uploaded/viirs/", "file", data)
    theirs = Message("/uploaded/viirs/", "file", data)
    assert isinstance(ours, Message)
    assert vars(ours).keys() == vars(theirs).keys()
    assert (ours.subject, ours.type, ours.sender, ours.data, ours.binary, ours.version) == (
        theirs.subject, theirs.type, theirs.sender, theirs.data, theirs.binary, theirs.version)
    assert abs(ours.time - theirs.time) < dt.timedelta(seconds=5)
    back = Message.decode(ours.encode())
    assert (back.subject, back.type, back.sender, back.data, back.time) == (
        ours.subject, ours.type, ours.sender, ours.data, ours.time)


def test_completion_carries_the_object_and_the_metadata() -> None:
    source = SourceFile(uri="/data/in/a.h5", path=Path("/data/in/a.h5"), uid="a.h5")
    request = Request(id="r1", subject="/new/file/", type="file",
                      data={"uri": source.uri, "uid": "a.h5", "platform_name": "NOAA-20"},
                      metadata={"platform_name": "NOAA-20"}, files=(source,),
                      origin="subscribe")
    upload = Upload(source, "bucket", "out/a.h5")
    job = Job(request, "viirs", "default", (upload,), {"platform_name": "NOAA-20"},
              "/uploaded/")
    result = UploadResult(upload, 12, 1, 0.1, etag='"e"', checksum="AAAA",
                          checksum_algorithm="crc32c")
    message = Message.decode(messages.completion(job, [result]).encode())
    assert message.subject == "/uploaded/" and message.type == "file"
    assert message.data == {"platform_name": "NOAA-20", "uri": "s3://bucket/out/a.h5",
                            "uid": "a.h5", "size": 12, "checksum": "crc32c:AAAA",
                            "etag": "e", "encryption": "none", "endpoint": "default"}


def test_completion_carries_what_the_store_made_of_the_object() -> None:
    """The ETag without its quotes, the version id (a versioned bucket), the storage class
    configured and the encryption asked for (by its mode: never the key)."""
    sources = [SourceFile(uri=f"/data/in/{n}.h5", path=Path(f"/data/in/{n}.h5"), uid=f"{n}.h5")
               for n in ("a", "b")]
    request = Request(id="r1", subject="/new/file/", type="dataset",
                      data={"dataset": [{"uri": s.uri, "uid": s.uid} for s in sources]},
                      metadata={}, files=tuple(sources), origin="subscribe")
    key = SseCKey("bWQ1bWQ1bWQ1bWQ1bWQ1bQ==", b"k" * 32)
    uploads = (Upload(sources[0], "bucket", "out/a.h5",
                      ObjectOptions(storage_class="STANDARD_IA", encryption="sse-c",
                                    sse_c=key)),
               Upload(sources[1], "bucket", "out/b.h5"))
    job = Job(request, "viirs", "default", uploads, {}, "/uploaded/")
    results = [UploadResult(uploads[0], 12, 1, 0.1, etag='"abc-3"', version_id="v1",
                            storage_class="STANDARD_IA", encryption="sse-c"),
               UploadResult(uploads[1], 12, 1, 0.1, etag='"def"', encryption="sse-s3")]
    message = Message.decode(messages.completion(job, results).encode())
    first, second = message.data["dataset"]
    assert {k: first[k] for k in ("etag", "version_id", "storage_class", "encryption")} == {
        "etag": "abc-3", "version_id": "v1", "storage_class": "STANDARD_IA",
        "encryption": "sse-c"}
    assert second["etag"] == "def" and second["encryption"] == "sse-s3"
    assert "version_id" not in second and "storage_class" not in second
    wire = str(message.encode())
    assert base64.b64encode(b"k" * 32).decode() not in wire and "k" * 32 not in wire


def test_announcer_sends_in_order_from_its_thread_and_flushes_at_stop(
        base_config: dict[str, Any], ports: dict[str, int]) -> None:
    """Messages go out in the order they were queued; ``sent`` returns once its message
    (and every one before it) is handed to ZeroMQ; ``stop`` sends what is still queued."""
    announcer = Announcer(parse_config(base_config).publish)
    announcer.start()
    listener = Listener(f"tcp://127.0.0.1:{ports['pub']}", ["/uploaded/"])
    try:
        def probed() -> bool:  # PUB/SUB: send probes until the subscription has joined
            announcer.publish(messages.new_message("/uploaded/probe", "info", {}))
            return bool(listener.messages)
        wait_until(probed, 15, "the subscription to join")

        async def burst() -> int:
            for n in range(500):
                announcer.publish(messages.new_message("/uploaded/x", "file", {"n": n}))
            await announcer.sent(messages.new_message("/uploaded/x", "file", {"n": 500}))
            return announcer.published

        assert asyncio.run(burst()) >= 501
        for n in range(501, 600):
            announcer.publish(messages.new_message("/uploaded/x", "file", {"n": n}))
        announcer.stop()
        got = listener.wait_for(lambda ms: sum(m.subject == "/uploaded/x" for m in ms) >= 600,
                                15, "600 messages")
        assert [m.data["n"] for m in got if m.subject == "/uploaded/x"] == list(range(600))
    finally:
        listener.close()
        announcer.stop()
