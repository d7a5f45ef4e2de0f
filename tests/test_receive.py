"""Decoding frames into Requests or Rejections: the right reason each time, never an exception.

Also a property test that routing arbitrary metadata never raises.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from posttroll.message import Message

from trollpush.config import parse_config
from trollpush.errors import Reason
from trollpush.messages import MESSAGE_TYPES, build_request, decode
from trollpush.models import FILE_KEYS, RESERVED_KEYS, Rejection, Request
from trollpush.route import Router, RouteResult

HEADER = "pytroll://new/file/viirs/ {kind} tester@host 2026-11-21T10:05:00 v1.01 application/json "

#: the reasons decode may give (routing and transfer reasons come later)
INPUT_REASONS = {Reason.BAD_MESSAGE, Reason.UNSUPPORTED_TYPE, Reason.MISSING_URI,
                 Reason.REMOTE_FILE, Reason.FILE_MISSING, Reason.NOT_A_FILE,
                 Reason.FILE_UNREADABLE, Reason.BAD_DESTINATION}


def frame(data: object, kind: str = "file", subject: str = "/new/file/viirs/") -> bytes:
    """One posttroll wire frame, as a producer would send it."""
    return str(Message(subject, kind, data).encode()).encode("utf-8")


def raw_frame(json_text: str, kind: str = "file") -> bytes:
    """A frame with hand-written JSON (for text Message.encode would not produce)."""
    return (HEADER.format(kind=kind) + json_text).encode("utf-8")


def rejected(raw: bytes, origin: str = "subscribe") -> Rejection:
    item = decode(raw, origin=origin)
    assert isinstance(item, Rejection), f"expected a Rejection, got {item!r}"
    assert item.origin == origin
    return item


def accepted(raw: bytes, origin: str = "subscribe") -> Request:
    item = decode(raw, origin=origin)
    assert isinstance(item, Request), f"expected a Request, got {item!r}"
    assert item.origin == origin
    return item


# --- rejections that need no files -----------------------------------------------------


@pytest.mark.parametrize(("raw", "reason"), [
    pytest.param(b"\xff\xfe\x00garbage", Reason.BAD_MESSAGE, id="not-utf8"),
    pytest.param(raw_frame('{"uri": "/x"}')[:-3] + b"\xc3(\"}", Reason.BAD_MESSAGE,
                 id="not-utf8-in-json"),
    pytest.param(b"", Reason.BAD_MESSAGE, id="empty"),
    pytest.param(b"hello world", Reason.BAD_MESSAGE, id="garbage"),
    pytest.param(b"pytroll://new/file/ file", Reason.BAD_MESSAGE, id="too-few-fields"),
    pytest.param(b"http://new/file/ file me 2026-11-21T10:05:00 v1.01 application/json {}",
                 Reason.BAD_MESSAGE, id="wrong-magic"),
    pytest.param(raw_frame('{"uri": "/data/x.h5"'), Reason.BAD_MESSAGE, id="broken-json"),
    pytest.param(b"pytroll://new/file/ file me yesterday v1.01 application/json {}",
                 Reason.BAD_MESSAGE, id="bad-time"),
    pytest.param(frame({"uri": "/data/x.h5"}, kind="info"), Reason.UNSUPPORTED_TYPE,
                 id="type-info"),
    pytest.param(frame({"uri": "/data/x.h5"}, kind="beat"), Reason.UNSUPPORTED_TYPE,
                 id="type-beat"),
    pytest.param(raw_frame('["/data/x.h5"]'), Reason.BAD_MESSAGE, id="data-is-a-list"),
    pytest.param(raw_frame('"/data/x.h5"'), Reason.BAD_MESSAGE, id="data-is-a-string"),
    pytest.param(b"pytroll://new/file/ file me 2026-11-21T10:05:00 v1.01 text/ascii /data/x.h5",
                 Reason.BAD_MESSAGE, id="data-is-text"),
    pytest.param(frame({"sensor": "viirs"}), Reason.MISSING_URI, id="missing-uri"),
    pytest.param(frame({"uri": None}), Reason.MISSING_URI, id="uri-null"),
    pytest.param(frame({"uri": ""}), Reason.MISSING_URI, id="uri-empty"),
    pytest.param(frame({"uri": 42}), Reason.MISSING_URI, id="uri-number"),
    pytest.param(frame({"uri": ["/data/x.h5"]}), Reason.MISSING_URI, id="uri-list"),
    pytest.param(frame({"uri": "file://otherhost/data/x.h5"}), Reason.REMOTE_FILE,
                 id="file-remote-host"),
    pytest.param(frame({"uri": "ssh://otherhost.example.org/data/x.h5"}), Reason.REMOTE_FILE,
                 id="ssh-remote-host"),
    pytest.param(frame({"uri": "sftp://user@otherhost:22/data/x.h5"}), Reason.REMOTE_FILE,
                 id="sftp-remote-host"),
    pytest.param(frame({"uri": "s3://bucket/data/x.h5"}), Reason.REMOTE_FILE, id="s3-uri"),
    pytest.param(frame({"uri": "https://example.org/data/x.h5"}), Reason.REMOTE_FILE,
                 id="http-uri"),
    pytest.param(frame({"uri": "data/x.h5"}), Reason.BAD_MESSAGE, id="relative-path"),
    pytest.param(frame({"uri": "file:data/x.h5"}), Reason.BAD_MESSAGE, id="relative-file-uri"),
    pytest.param(frame({"dataset": "/data/x.h5"}, kind="dataset"), Reason.MISSING_URI,
                 id="dataset-not-a-list"),
    pytest.param(frame({"uri": "/data/x.h5"}, kind="dataset"), Reason.MISSING_URI,
                 id="dataset-without-list"),
    pytest.param(frame({"dataset": []}, kind="dataset"), Reason.MISSING_URI,
                 id="dataset-empty"),
    pytest.param(frame({"dataset": ["/data/x.h5"]}, kind="dataset"), Reason.BAD_MESSAGE,
                 id="dataset-item-not-mapping"),
    pytest.param(frame({"dataset": [{"uid": "x.h5"}]}, kind="dataset"), Reason.MISSING_URI,
                 id="dataset-item-without-uri"),
    pytest.param(frame({"dataset": [{"uri": "ssh://otherhost/x.h5"}]}, kind="dataset"),
                 Reason.REMOTE_FILE, id="dataset-item-remote"),
    pytest.param(frame({"collection": "/x"}, kind="collection"), Reason.MISSING_URI,
                 id="collection-not-a-list-or-mapping"),
    pytest.param(frame({"collection": {"uri": "/x"}}, kind="collection"), Reason.BAD_MESSAGE,
                 id="collection-mapping-of-a-non-mapping"),
    pytest.param(frame({"collection": [{"dataset": [7]}]}, kind="collection"),
                 Reason.BAD_MESSAGE, id="collection-nested-item-not-mapping"),
])
def test_bad_frames_are_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    """Each kind of bad frame gives a Rejection with its stable reason code."""
    item = rejected(raw)
    assert item.reason == reason
    assert item.detail


def test_rejection_keeps_subject_uri_and_metadata() -> None:
    """A Rejection of a parsed message carries what a failure announcement needs."""
    item = rejected(frame({"uri": "ssh://otherhost/data/x.h5", "uid": "x.h5", "sensor": "viirs",
                           "destination": "s3://b/"}, subject="/new/file/viirs/"))
    assert item.reason == Reason.REMOTE_FILE
    assert item.subject == "/new/file/viirs/"
    assert item.uri == "ssh://otherhost/data/x.h5"
    assert item.destination == "s3://b/"
    assert dict(item.metadata) == {"sensor": "viirs"}
    assert "otherhost" in item.detail


@pytest.mark.parametrize(("data", "reason"), [
    ({"uri": "/data/x.h5", "destination": 5}, Reason.BAD_DESTINATION),
    ({"uri": "/data/x.h5", "destination": "s3://b/", "endpoint": ["a"]},
     Reason.BAD_DESTINATION),
])
def test_request_with_non_string_steering_is_rejected(data: dict[str, Any], reason: str) -> None:
    """For REQ/REP requests, destination and endpoint must be strings."""
    assert rejected(frame(data), origin="request").reason == reason


# --- rejections about the file itself ---------------------------------------------------


def _missing(tmp: Path) -> str:
    return str(tmp / "absent.h5")


def _directory(tmp: Path) -> str:
    (tmp / "adir").mkdir()
    return str(tmp / "adir")


def _fifo(tmp: Path) -> str:
    os.mkfifo(tmp / "pipe")
    return str(tmp / "pipe")


def _symlink_loop(tmp: Path) -> str:
    (tmp / "loop").symlink_to(tmp / "loop")
    return str(tmp / "loop")


def _below_a_file(tmp: Path) -> str:
    (tmp / "plain.h5").write_bytes(b"x")
    return str(tmp / "plain.h5" / "child.h5")


@pytest.mark.parametrize(("make", "reason"), [
    pytest.param(_missing, Reason.FILE_MISSING, id="missing-file"),
    pytest.param(_directory, Reason.NOT_A_FILE, id="directory"),
    pytest.param(_fifo, Reason.NOT_A_FILE, id="fifo"),
    pytest.param(lambda tmp: "/dev/null", Reason.NOT_A_FILE, id="char-device"),
    pytest.param(_symlink_loop, Reason.NOT_A_FILE, id="symlink-loop"),  # a final symlink
    pytest.param(_below_a_file, Reason.FILE_UNREADABLE, id="path-through-a-file"),
])
@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
def test_unusable_files_are_rejected(tmp_path: Path, make: Callable[[Path], str], reason: str,
                                     as_uri: bool) -> None:
    """A file that is absent, not regular, or cannot be reached gets its reason; as a plain
    path and as a file:// URI alike."""
    path = make(tmp_path)
    uri = f"file://{quote(path)}" if as_uri else path
    item = rejected(frame({"uri": uri}))
    assert item.reason == reason
    assert item.uri == uri


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a file with mode 000")
def test_unreadable_file_is_rejected(tmp_path: Path) -> None:
    """A regular file without read permission is file_unreadable."""
    path = tmp_path / "secret.h5"
    path.write_bytes(b"x")
    path.chmod(0)
    assert rejected(frame({"uri": str(path)})).reason == Reason.FILE_UNREADABLE


def test_dataset_with_one_missing_item_is_rejected(tmp_path: Path) -> None:
    """Every item of a dataset is checked; one missing file rejects the whole message."""
    (tmp_path / "a.h5").write_bytes(b"a")
    data = {"dataset": [{"uri": str(tmp_path / "a.h5")}, {"uri": str(tmp_path / "b.h5")}]}
    item = rejected(frame(data, kind="dataset"))
    assert item.reason == Reason.FILE_MISSING
    assert "b.h5" in item.detail


# --- frames that decode raises on (suspected bugs) ------------------------------------------


@pytest.mark.parametrize("json_text", [
    pytest.param('{"uri": "/data/x\\u0000.h5"}', id="nul-in-path"),
    pytest.param('{"uri": "file:///data/x%00.h5"}', id="percent-encoded-nul"),
    pytest.param('{"uri": "/data/\\ud800.h5"}', id="lone-surrogate"),
    pytest.param('{"uri": "file://[::1/data/x.h5"}', id="bad-ipv6-host"),
    pytest.param('{"dataset": [{"uri": "/data/x\\u0000.h5"}]}', id="nul-in-dataset-item"),
])
def test_decode_never_raises_on_unusable_paths(json_text: str) -> None:
    """decode() turns a uri that no OS call can take into a Rejection, not an exception."""
    kind = "dataset" if "dataset" in json_text else "file"
    item = decode(raw_frame(json_text, kind=kind), origin="subscribe")
    assert isinstance(item, Rejection)
    assert item.reason in (Reason.BAD_MESSAGE, Reason.FILE_MISSING, Reason.REMOTE_FILE)


# --- accepted messages --------------------------------------------------------------------


@pytest.fixture
def product(tmp_path: Path) -> Path:
    path = tmp_path / "NOAA-20_20261121_1005_12345.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n")
    return path


URI_FORMS: list[Callable[[Path], str]] = [
    str,
    lambda p: f"file://{p}",
    lambda p: f"file://localhost{p}",
    lambda p: f"file://LOCALHOST{p}",
    lambda p: f"file://127.0.0.1{p}",
    lambda p: f"ssh://{socket.gethostname()}{p}",
    lambda p: f"scp://user@{socket.gethostname()}:22{p}",
    lambda p: f"file://{p.parent}/./sub/..//{p.name}",
]


@pytest.mark.parametrize("form", URI_FORMS,
                         ids=["path", "file", "file-localhost", "file-LOCALHOST", "file-127",
                              "ssh-this-host", "scp-user-port", "unnormalised"])
def test_local_uri_forms_name_the_local_file(product: Path, form: Callable[[Path], str]) -> None:
    """A path, file:// (empty, localhost or loopback host) and ssh:// to this host all give
    a Request for the same local file."""
    uri = form(product)
    req = accepted(frame({"uri": uri, "sensor": "viirs"}))
    assert req.type == "file"
    [f] = req.files
    assert f.path == product
    assert f.uri == uri
    assert f.uid == product.name  # uid defaults to the basename
    assert req.subject == "/new/file/viirs/"


def test_percent_encoded_file_uri_is_decoded(tmp_path: Path) -> None:
    """file:// URIs are percent-decoded into the path."""
    path = tmp_path / "with space é.h5"
    path.write_bytes(b"x")
    req = accepted(frame({"uri": "file://" + quote(str(path))}))
    assert req.files[0].path == path
    assert req.files[0].uid == path.name


def test_explicit_uid_is_kept(product: Path) -> None:
    """A uid in the message wins over the basename."""
    req = accepted(frame({"uri": str(product), "uid": "granule-42"}))
    assert req.files[0].uid == "granule-42"


def test_metadata_excludes_file_keys_but_keeps_the_rest(product: Path) -> None:
    """Pub-sub metadata is the data minus uri/uid; destination is only metadata there."""
    data = {"uri": str(product), "uid": "u", "sensor": ["viirs"], "orbit": 12345,
            "start_time": dt.datetime(2026, 11, 21, 10, 5), "destination": "s3://b/",
            "endpoint": "archive", "reply": "both"}
    req = accepted(frame(data))
    assert dict(req.metadata) == {"sensor": ["viirs"], "orbit": 12345,
                                  "start_time": dt.datetime(2026, 11, 21, 10, 5),
                                  "destination": "s3://b/", "endpoint": "archive",
                                  "reply": "both"}
    assert req.destination is None and req.endpoint is None
    assert req.data["uri"] == str(product)


def test_request_metadata_excludes_reserved_keys(product: Path) -> None:
    """For REQ/REP requests, destination/endpoint/reply steer and are not metadata."""
    data = {"uri": str(product), "sensor": "viirs", "destination": "s3://b/k/",
            "endpoint": "archive", "reply": "both"}
    req = accepted(frame(data), origin="request")
    assert dict(req.metadata) == {"sensor": "viirs"}
    assert req.destination == "s3://b/k/"
    assert req.endpoint == "archive"
    assert not (set(req.metadata) & (FILE_KEYS | RESERVED_KEYS))


def test_dataset_items_become_files_in_order(tmp_path: Path) -> None:
    """A dataset's items become SourceFiles in order with their uids and item extras."""
    paths = [tmp_path / f"part{i}.h5" for i in range(3)]
    for p in paths:
        p.write_bytes(b"x")
    data = {"platform_name": "NOAA-20",
            "dataset": [{"uri": str(paths[0]), "uid": "first", "segment": 0},
                        {"uri": f"file://{paths[1]}", "segment": 1},
                        {"uri": str(paths[2]), "uid": ""}]}
    req = accepted(frame(data, kind="dataset"))
    assert [f.path for f in req.files] == paths
    assert [f.uid for f in req.files] == ["first", "part1.h5", "part2.h5"]
    assert [dict(f.meta) for f in req.files] == [{"segment": 0}, {"segment": 1}, {}]
    assert dict(req.metadata) == {"platform_name": "NOAA-20"}


def test_collection_flattens_nested_datasets(tmp_path: Path) -> None:
    """A collection's nested datasets and plain items are flattened in order."""
    paths = [tmp_path / f"c{i}.h5" for i in range(3)]
    for p in paths:
        p.write_bytes(b"x")
    data = {"collection": [{"dataset": [{"uri": str(paths[0])}, {"uri": str(paths[1])}]},
                           {"uri": str(paths[2])}]}
    req = accepted(frame(data, kind="collection"))
    assert [f.path for f in req.files] == paths


def test_build_request_without_check_accepts_absent_files() -> None:
    """check=False (used by `trollpush match`) skips the file-system checks only."""
    req = build_request(Message("/a/", "file", {"uri": "/does/not/exist.h5"}), origin="cli",
                        check=False)
    assert req.files[0].path == Path("/does/not/exist.h5")


# --- property: decode never raises ---------------------------------------------------------


@dataclass(frozen=True)
class Paths:
    """Real file-system objects for generated URIs to point at."""

    file: Path
    directory: Path
    fifo: Path


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> Paths:
    base = tmp_path_factory.mktemp("receive-fuzz")
    (base / "real.h5").write_bytes(b"x")
    (base / "dir").mkdir()
    os.mkfifo(base / "fifo")
    return Paths(base / "real.h5", base / "dir", base / "fifo")


SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
           | st.text(max_size=12))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
STRUCTURAL = FILE_KEYS | RESERVED_KEYS
META_KEYS = (st.sampled_from(["sensor", "platform_name", "orbit", "start_time", "format"])
             | st.text(max_size=8)).filter(lambda k: k not in STRUCTURAL)


def uris(paths: Paths) -> st.SearchStrategy[Any]:
    """URIs of every shape: the real file in each local form, other local objects, remote
    hosts, junk, non-strings."""
    real = st.sampled_from([str(paths.file), f"file://{paths.file}",
                            f"file://localhost{paths.file}",
                            f"ssh://{socket.gethostname()}{paths.file}"])
    local = st.sampled_from([str(paths.file), str(paths.directory), str(paths.fifo),
                             str(paths.file.parent / "absent.h5"), "/dev/null", "/", "rel/x"])
    hosts = st.sampled_from(["", "localhost", socket.gethostname(), "otherhost", "u@h:22"])
    schemes = st.sampled_from(["file", "ssh", "scp", "sftp", "s3", "http", "ftp", ""])
    built = st.builds(lambda s, h, p: f"{s}://{h}{p}", schemes, hosts, local | st.text(max_size=12))
    return st.one_of(real, real, local, built, st.text(max_size=30), JSON)


def message_data(paths: Paths) -> st.SearchStrategy[Any]:
    """Message data: mostly mappings with file and steering keys, sometimes any JSON."""
    item = st.fixed_dictionaries({}, optional={"uri": uris(paths), "uid": JSON,
                                               "dataset": JSON})
    items = st.lists(item | JSON, max_size=3) | JSON
    nested = st.lists(st.fixed_dictionaries({"dataset": items}) | item, max_size=3)
    destinations = st.one_of(st.sampled_from(["s3://b/k/", "alias/b/k"]), st.text(max_size=10),
                             JSON)
    steering = {"destination": destinations, "endpoint": st.none() | st.text(max_size=8) | JSON,
                "reply": st.sampled_from(["final", "both", "bogus"]) | JSON}
    structured = st.builds(
        lambda fixed, meta: {**meta, **fixed},
        st.fixed_dictionaries({"uri": uris(paths)},
                              optional={"uid": JSON, "dataset": items,
                                        "collection": nested | JSON, **steering}),
        st.dictionaries(META_KEYS, JSON, max_size=4))
    return st.one_of(structured, structured, JSON)


def wire_text(paths: Paths) -> st.SearchStrategy[str]:
    """posttroll-like wire strings: well-formed headers with random JSON bodies, and headers
    with random fields and bodies."""
    word = st.text(max_size=10)
    subject = st.sampled_from(["/new/file/viirs/", "/a", "/", ""]) | word
    kind = st.sampled_from([*MESSAGE_TYPES, "info", "beat", "ack", "failure"]) | word
    sender = st.sampled_from(["me@host", "x", ""]) | word
    when = st.datetimes().map(dt.datetime.isoformat) | word
    version = st.sampled_from(["v1.01", "v1.2", "v2"]) | word
    mime = st.sampled_from(["application/json", "text/ascii", "binary/octet-stream"]) | word
    body = message_data(paths).map(lambda d: json.dumps(d, default=str)) | st.text(max_size=40)
    good = st.builds(
        lambda s, k, w, b: f"pytroll://{s} {k} me@host {w} v1.01 application/json {b}",
        st.sampled_from(["/new/file/viirs/", "/a"]), st.sampled_from(MESSAGE_TYPES),
        st.datetimes().map(dt.datetime.isoformat), body)
    random = st.builds(lambda *parts: "pytroll://" + " ".join(parts),
                       subject, kind, sender, when, version, mime, body)
    return st.one_of(good, good, random)


def check_item(item: object, origin: str) -> None:
    """The contract of decode(): a Request of existing regular files, or a Rejection with
    one of the input reason codes."""
    assert isinstance(item, (Request, Rejection))
    assert item.origin == origin
    if isinstance(item, Rejection):
        assert item.reason in INPUT_REASONS
        assert isinstance(item.detail, str) and item.detail
        return
    assert item.type in MESSAGE_TYPES
    assert item.files
    for f in item.files:
        assert f.path.is_absolute() and f.path.is_file()
        assert isinstance(f.uid, str) and f.uid
    assert not set(item.metadata) & FILE_KEYS


FUZZ = settings(max_examples=2000, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@FUZZ
@given(raw=st.binary(max_size=200) | st.binary(max_size=200).map(lambda b: b"pytroll://" + b),
       origin=st.sampled_from(["subscribe", "request"]))
def test_decode_never_raises_on_random_bytes(raw: bytes, origin: str) -> None:
    """Arbitrary bytes always become a Rejection (or, by luck, a Request), never an error."""
    check_item(decode(raw, origin=origin), origin)


@FUZZ
@given(data=st.data(), origin=st.sampled_from(["subscribe", "request"]))
def test_decode_never_raises_on_posttroll_like_frames(paths: Paths, data: st.DataObject,
                                                      origin: str) -> None:
    """Posttroll-shaped frames with random fields and random JSON never make decode raise."""
    text = data.draw(wire_text(paths), label="frame")
    check_item(decode(text.encode("utf-8"), origin=origin), origin)


@FUZZ
@given(data=st.data(), kind=st.sampled_from(MESSAGE_TYPES),
       origin=st.sampled_from(["subscribe", "request"]))
def test_decode_never_raises_on_well_formed_messages(paths: Paths, data: st.DataObject,
                                                     kind: str, origin: str) -> None:
    """Valid posttroll messages of every type with random data never make decode raise."""
    body = data.draw(message_data(paths), label="data")
    check_item(decode(frame(body, kind=kind), origin=origin), origin)


# --- property: routing never raises ----------------------------------------------------------


ROUTER = Router(parse_config({
    "requests": None,
    "endpoints": {"default": {}, "archive": {"url": "https://s3.archive.example.org"}},
    "targets": [
        {"name": "viirs", "topics": ["/new/file/viirs/"],
         "pattern": "{platform_name}_{start_time:%Y%m%d_%H%M}_{orbit:05d}.h5",
         "conditions": {"sensor": "viirs", "except": {"platform_name": ["Suomi-NPP"]}},
         "aliases": {"platform_name": {"NOAA-20": "j01"}},
         "destination": "s3://l1/{platform_name}/{start_time:%Y/%m/%d}/{uid}",
         "publish_topic": "/uploaded/viirs/{platform_name}/"},
        {"name": "by-meta", "conditions": {"sensor": ["avhrr", "viirs", 1, True]},
         "destination": "s3://b/{sensor}/{orbit:05d}/{start_time:%Y%m%d_%H%M}/{format!s}/",
         "publish_topic": "/uploaded/{sensor}/"},
        {"name": "archive", "endpoint": "archive", "destination": "s3://archive/{uid}"},
    ],
}))

VALUES = (SCALARS | st.datetimes() | st.floats() | st.lists(SCALARS, max_size=3)
          | st.dictionaries(st.text(max_size=4), SCALARS, max_size=2))
NAMES = (st.sampled_from(["NOAA-20_20261121_1005_12345.h5", "Suomi-NPP_20261121_1005_00001.h5",
                          "NOAA-20_20261399_1005_12345.h5", "x.h5", ".h5", "..", "."])
         | st.text(min_size=1, max_size=20).filter(lambda n: "/" not in n and "\x00" not in n))


@settings(max_examples=1000, deadline=None, derandomize=True, database=None)
@given(meta=st.dictionaries(META_KEYS, VALUES, max_size=6),
       names=st.lists(NAMES, min_size=1, max_size=3),
       kind=st.sampled_from(MESSAGE_TYPES),
       subject=st.sampled_from(["/new/file/viirs/", "/new/file/viirs/x", "/other/"]),
       direct=st.none() | st.sampled_from(["s3://b/k/", "s3://b/k", "a/b/", "b", "http://x/"])
       | st.text(max_size=10),
       endpoint=st.none() | st.sampled_from(["default", "archive", "nope"]))
def test_route_never_raises_on_random_metadata(meta: dict[str, Any], names: list[str], kind: str,
                                               subject: str, direct: str | None,
                                               endpoint: str | None) -> None:
    """Whatever metadata and file names a message carries, routing gives jobs and failures
    (with routing reason codes), never an exception."""
    items = [{"uri": f"/data/in/{n}"} for n in names]
    data: dict[str, Any] = dict(meta)
    if kind == "file":
        data["uri"] = items[0]["uri"]
    elif kind == "dataset":
        data["dataset"] = items
    else:
        data["collection"] = [{"dataset": items[:1]}, *items[1:]]
    origin = "subscribe"
    if direct is not None:
        origin = "request"
        data["destination"] = direct
        if endpoint is not None:
            data["endpoint"] = endpoint
    request = build_request(Message(subject, kind, data), origin=origin, check=False)
    result = ROUTER.route(request)
    assert isinstance(result, RouteResult)
    assert result.jobs or result.failures
    for job in result.jobs:
        assert len(job.uploads) == len(request.files)
        for up in job.uploads:
            assert up.bucket and up.key and not up.key.startswith("/")
    for fail in result.failures:
        assert fail.reason in {Reason.NO_ROUTE, Reason.COMPOSE_ERROR, Reason.BAD_DESTINATION}


async def test_a_busy_publisher_does_not_starve_a_quiet_one() -> None:
    """Each read shares its batch among the ready sockets, starting with another each
    time: a flood on one publisher's socket leaves room for the others."""
    import zmq

    from trollpush.inputs._checks import CheckThreads
    from trollpush.inputs.subscribe import SubscribeReceiver

    async def sink(item: Any) -> None:
        pass

    receiver = SubscribeReceiver({"addresses": [], "nameserver": False}, sink,
                                 asyncio.get_running_loop())
    ctx = zmq.Context()
    pairs = []
    try:
        for name in ("busy", "quiet"):
            a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
            a.bind(f"inproc://{name}")
            b.connect(f"inproc://{name}")
            pairs.append((a, b))
        for n in range(1000):
            pairs[0][0].send(b"busy %d" % n)
        for n in range(10):
            pairs[1][0].send(b"quiet %d" % n)
        readers = [b for _, b in pairs]
        ready: dict[Any, int] = {sock: int(zmq.POLLIN) for sock in readers}
        frames = receiver._read(readers, ready, {}, 256)
        assert sum(f.startswith(b"quiet") for f in frames) == 10
        assert len(frames) <= 256
    finally:
        for a, b in pairs:
            a.close(linger=0)
            b.close(linger=0)
        ctx.term()

    threads = CheckThreads("t", limit=2)
    gate = threading.Event()
    try:
        assert not threads.full
        for _ in range(2):
            threads.submit(gate.wait, 10)
        assert threads.full  # a new check would wait behind two that may never return
    finally:
        gate.set()
        threads.close()
