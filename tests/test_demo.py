"""`trollpush demo`'s output: a failure line names the file once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from posttroll.message import Message

from trollpush import messages
from trollpush.demo import failure_line
from trollpush.messages import decode
from trollpush.models import Rejection


def failure_of(uri: str) -> dict[str, object]:
    """The data of the failure the daemon announces for a refused file message."""
    frame = Message("/new/file/viirs/", "file", {"uri": uri, "sensor": "viirs"}).encode()
    rejection = decode(frame.encode(), origin="subscribe")
    assert isinstance(rejection, Rejection), rejection
    message = messages.failure("/trollpush/failed", uri=rejection.uri,
                               destination=rejection.destination, error=rejection.detail,
                               reason=rejection.reason, metadata=rejection.metadata)
    return dict(message.data)


@pytest.mark.parametrize(("uri", "line"), [
    ("ssh://elsewhere.example/data/x.h5",
     "  FAILED ssh://elsewhere.example/data/x.h5: the file is on host 'elsewhere.example', "
     "not on this host [remote_file]"),
    ("data/x.h5", "  FAILED data/x.h5: the path must be absolute [bad_message]"),
    ("ssh://[elsewhere/x.h5",
     "  FAILED ssh://[elsewhere/x.h5: not a valid URI (Invalid IPv6 URL) [bad_message]"),
])
def test_failure_line_names_the_file_once(uri: str, line: str) -> None:
    """The daemon's error text starts with the URI (bare or quoted); the line drops it."""
    assert failure_line(failure_of(uri)) == line


def test_failure_line_shows_the_destination_and_keeps_other_texts() -> None:
    """An upload failure names file and object; an error not about the URI stays whole."""
    data = {"uri": "/data/x.h5", "destination": "s3://bucket/x.h5", "reason": "upload_failed",
            "error": "s3://bucket/x.h5: attempt 4 exceeded 26 s"}
    assert failure_line(data) == ("  FAILED /data/x.h5 -> s3://bucket/x.h5: s3://bucket/x.h5: "
                                  "attempt 4 exceeded 26 s [upload_failed]")


@pytest.mark.slow
def test_demo_prints_its_expected_failure_once_per_uri() -> None:
    """`trollpush demo` end to end: the expected failure's line names the URI once."""
    res = subprocess.run([sys.executable, "-m", "trollpush", "demo", "--files", "1"],
                         capture_output=True, text=True, timeout=120, env=os.environ.copy(),
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    failed = [ln for ln in res.stdout.splitlines() if "FAILED" in ln]
    assert failed == ["  FAILED ssh://elsewhere.example/data/x.h5: the file is on host "
                      "'elsewhere.example', not on this host [remote_file]"], res.stdout
