"""Announce: the messages trollpush builds are posttroll's own, field for field."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from posttroll.message import Message

from trollpush import announce
from trollpush.models import Job, Request, SourceFile, Upload, UploadResult


def test_new_message_is_a_posttroll_message() -> None:
    """Built without posttroll's per-message user and host look-up, yet the same: the
    same attributes, the same sender, and it encodes and decodes like one."""
    data = {"uri": "s3://b/k", "when": dt.datetime(2026, 11, 21, 10, 5, tzinfo=dt.UTC)}
    ours = announce.new_message("/uploaded/viirs/", "file", data)
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
    message = Message.decode(announce.completion(job, [result]).encode())
    assert message.subject == "/uploaded/" and message.type == "file"
    assert message.data == {"platform_name": "NOAA-20", "uri": "s3://bucket/out/a.h5",
                            "uid": "a.h5", "size": 12, "checksum": "crc32c:AAAA",
                            "endpoint": "default"}
