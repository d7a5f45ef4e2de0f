"""Collections in every producer shape: a list (geographic_gatherer), or a mapping of named
datasets (segment_gatherer with several patterns), uploaded whole and announced once in
the shape they came in."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import pytest
from posttroll.message import Message

from trollpush.config import parse_config
from trollpush.errors import Reason
from trollpush.messages import Limits, build_request, completion, decode
from trollpush.models import Job, Rejection, Request, UploadResult
from trollpush.route import Router

from .helpers import Listener, Producer, link, running_daemon, wait_until

SUBJECT = "/new/file/seviri/"


def frame(data: object, kind: str = "collection") -> bytes:
    return str(Message(SUBJECT, kind, data).encode()).encode("utf-8")


def files(n: int, prefix: str = "/data/in/f") -> list[dict[str, Any]]:
    return [{"uri": f"{prefix}{i}.nc", "uid": f"f{i}.nc"} for i in range(n)]


def request_of(data: dict[str, Any]) -> Request:
    """A Request as receive builds it; the files need not exist."""
    return build_request(Message(SUBJECT, "collection", data), origin="subscribe",
                         check=False)


def router(destination: str) -> Router:
    return Router(parse_config({"requests": None, "endpoints": {"default": {}}, "targets": [
        {"name": "seviri", "topics": [SUBJECT], "destination": destination}]}))


def landed(job: Job) -> list[UploadResult]:
    return [UploadResult(up, 10 + i, 1, 0.01) for i, up in enumerate(job.uploads)]


# --- decoding ----------------------------------------------------------------------------


def test_a_mapping_of_named_datasets_is_read_in_order_with_each_datasets_metadata() -> None:
    """The files of every named dataset, in order; a dataset's own metadata reaches its
    files (under their own keys), as a list item's metadata does; the top level stays the
    request's metadata."""
    data = {"platform_name": "Meteosat-11", "sensor": ["seviri"], "collection": {
        "ir": {"dataset": files(2), "band": "ir", "sensor": ["seviri-ir"]},
        "vs": {"dataset": [{"uri": "/data/in/v.nc", "band": "own"}], "band": "vs"}}}
    req = request_of(data)
    assert [f.uri for f in req.files] == ["/data/in/f0.nc", "/data/in/f1.nc", "/data/in/v.nc"]
    assert [f.meta["band"] for f in req.files] == ["ir", "ir", "own"]
    assert dict(req.files[0].meta) == {"band": "ir", "sensor": ["seviri-ir"]}
    assert dict(req.metadata) == {"platform_name": "Meteosat-11", "sensor": ["seviri"]}


def test_a_list_collections_datasets_carry_their_metadata_to_their_files_too() -> None:
    data = {"collection": [{"dataset": files(1), "band": "ir"}, {"uri": "/data/in/x.nc"}]}
    req = request_of(data)
    assert [dict(f.meta) for f in req.files] == [{"band": "ir"}, {}]


def test_an_empty_named_dataset_next_to_others_is_kept() -> None:
    """segment_gatherer publishes a pattern that got no file (not critical, timed out) as
    an empty dataset: the others still go, and the empty one is announced as it came."""
    data = {"collection": {"ir": {"dataset": files(1), "sensor": []},
                           "vs": {"dataset": [], "sensor": []}}}
    req = request_of(data)
    assert len(req.files) == 1
    [job] = router("s3://b/{uid}").route(req).jobs
    out = completion(job, landed(job)).data["collection"]
    assert out["vs"] == {"dataset": [], "sensor": []}
    assert out["ir"]["dataset"][0]["uri"] == "s3://b/f0.nc"


@pytest.mark.parametrize(("collection", "reason", "words"), [
    pytest.param("/data/in/x.nc", Reason.MISSING_URI, "list, or a mapping", id="a-string"),
    pytest.param([], Reason.MISSING_URI, "list, or a mapping", id="empty-list"),
    pytest.param({}, Reason.MISSING_URI, "list, or a mapping", id="empty-mapping"),
    pytest.param(None, Reason.MISSING_URI, "list, or a mapping", id="null"),
    pytest.param({"ir": "/data/in/x.nc"}, Reason.BAD_MESSAGE, "collection['ir'] is not",
                 id="value-a-string"),
    pytest.param({"ir": files(1)}, Reason.BAD_MESSAGE, "collection['ir'] is not",
                 id="value-a-list"),
    pytest.param({"ir": {"dataset": files(1)}, "vs": 7}, Reason.BAD_MESSAGE,
                 "collection['vs'] is not", id="second-value-a-number"),
    pytest.param({"ir": {"dataset": "/data/in/x.nc"}}, Reason.MISSING_URI,
                 "collection['ir'].dataset: got str", id="dataset-a-string"),
    pytest.param({"ir": {"dataset": {"uri": "/x"}}}, Reason.MISSING_URI,
                 "collection['ir'].dataset: got dict", id="dataset-a-mapping"),
    pytest.param({"ir": {"dataset": [7]}}, Reason.BAD_MESSAGE,
                 "collection['ir'].dataset[0] is not", id="file-item-a-number"),
    pytest.param({"ir": {"dataset": [{"uid": "x.nc"}]}}, Reason.MISSING_URI, "no 'uri'",
                 id="file-item-without-uri"),
    pytest.param({"ir": {"dataset": [{"uri": "ssh://elsewhere.invalid/x.nc"}]}},
                 Reason.REMOTE_FILE, "elsewhere.invalid", id="file-item-remote"),
    pytest.param({"ir": {"dataset": []}, "vs": {"dataset": []}}, Reason.MISSING_URI,
                 "names no file", id="only-empty-datasets"),
    pytest.param([{"dataset": []}], Reason.MISSING_URI, "names no file",
                 id="list-of-empty-datasets"),
])
def test_hostile_collections_are_rejected_with_a_reason(collection: Any, reason: str,
                                                        words: str) -> None:
    item = decode(frame({"platform_name": "x", "collection": collection}), origin="subscribe")
    assert isinstance(item, Rejection)
    assert item.reason == reason
    assert words in item.detail
    assert dict(item.metadata) == {"platform_name": "x"}


def test_a_small_frame_does_not_grow_into_a_huge_request() -> None:
    """A dataset's metadata is copied to each of its files: many files under a big value
    would make a request (and its journal record) far larger than the frame.  More than
    max_request_bytes so copied is refused as too_large, before any file is looked at."""
    big = {"collection": {"ir": {"dataset": files(400), "note": "x" * 2000}}}
    raw = frame(big)
    item = decode(raw, origin="subscribe", limits=Limits(max_bytes=len(raw) * 4))
    assert isinstance(item, Rejection) and item.reason == Reason.TOO_LARGE
    assert "collection['ir']" in item.detail and "max_request_bytes" in item.detail


def test_many_named_datasets_within_the_limits_are_taken() -> None:
    """A mapping of thousands of names is as good as a list of thousands of items."""
    data = {"collection": {f"p{i}": {"dataset": files(1, f"/data/in/p{i}_"), "sensor": ["s"]}
                           for i in range(3000)}}
    raw = frame(data)
    req = build_request(Message(SUBJECT, "collection", data), origin="subscribe",
                        check=False, limits=Limits(max_bytes=len(raw)))
    assert len(req.files) == 3000


# --- announcing --------------------------------------------------------------------------


def test_a_mapping_collection_is_announced_once_with_the_same_names() -> None:
    data = {"platform_name": "Meteosat-11", "collection": {
        "ir": {"dataset": files(2), "band": "ir"},
        "vs": {"dataset": files(1, "/data/in/v"), "band": "vs"}}}
    req = request_of(data)
    [job] = router("s3://b/{band}/{uid}").route(req).jobs
    assert [u.key for u in job.uploads] == ["ir/f0.nc", "ir/f1.nc", "vs/f0.nc"]
    message = completion(job, landed(job))
    assert message.type == "collection"
    out = message.data["collection"]
    assert list(out) == ["ir", "vs"]
    assert out["ir"] == {"band": "ir", "dataset": [
        {"uri": "s3://b/ir/f0.nc", "uid": "f0.nc", "size": 10, "encryption": "none"},
        {"uri": "s3://b/ir/f1.nc", "uid": "f1.nc", "size": 11, "encryption": "none"}]}
    assert out["vs"] == {"band": "vs", "dataset": [
        {"uri": "s3://b/vs/f0.nc", "uid": "f0.nc", "size": 12, "encryption": "none"}]}
    assert message.data["platform_name"] == "Meteosat-11"
    assert message.data["endpoint"] == "default"


def test_a_list_collection_is_still_announced_as_a_list() -> None:
    data = {"collection": [{"dataset": files(1), "band": "ir"}, {"uri": "/data/in/x.nc"}]}
    [job] = router("s3://b/{uid}").route(request_of(data)).jobs
    assert completion(job, landed(job)).data["collection"] == [
        {"band": "ir", "dataset": [{"uri": "s3://b/f0.nc", "uid": "f0.nc", "size": 10,
                                    "encryption": "none"}]},
        {"uri": "s3://b/x.nc", "uid": "x.nc", "size": 11, "encryption": "none"}]


# --- end to end: what segment_gatherer publishes ------------------------------------------


HRIT = "H-000-MSG4__-MSG4________-{channel}-{{segment:_<9s}}-{{start_time:%Y%m%d%H%M}}-__"


def gatherer_config() -> dict[str, Any]:
    """Two patterns (``ir``, ``vs``), two segments each, every one of them critical."""
    def pattern(channel: str) -> dict[str, Any]:
        return {"pattern": HRIT.format(channel=f"{channel:_<9s}"),
                "critical_files": ":000001-000002", "wanted_files": ":000001-000002",
                "all_files": ":000001-000002", "is_critical_set": True, "variable_tags": []}
    return {"patterns": {"ir": pattern("IR_108"), "vs": pattern("VIS006")},
            "timeliness": 600, "time_name": "start_time", "time_tolerance": 30}


class _Publisher:
    """segment_gatherer's publisher, on the test producer's socket (127.0.0.1 and a free
    port; the gatherer's own would bind every interface)."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.sent: list[str] = []

    def send(self, text: str) -> None:
        self.sent.append(text)
        self.producer.send_raw(text)

    def stop(self) -> None:
        pass


def test_segment_gatherers_two_pattern_collection_lands_whole_and_is_announced_once(
        base_config: dict[str, Any], producer: Producer, listener: Listener, bucket: str,
        s3: Any, tmp_path: Path) -> None:
    """The real segment_gatherer (pytroll-collectors) gathers four segments under two
    patterns and publishes its collection; trollpush uploads all four files and announces
    one completion, a mapping with the same two names."""
    from pytroll_collectors.segments import SegmentGatherer

    base_config["targets"].append({
        "name": "seviri", "topics": [SUBJECT], "publish_topic": "/uploaded/seviri/",
        "destination": f"s3://{bucket}/{{platform_name}}/{{start_time:%Y%m%d%H%M}}/{{uid}}"})
    gatherer = SegmentGatherer(gatherer_config())
    # what run() would set up from its posttroll section (a listener, a publisher)
    publisher = _Publisher(producer)
    gatherer._subject = SUBJECT
    gatherer._publisher = publisher
    contents: dict[str, bytes] = {}
    with running_daemon(base_config) as daemon:
        link(producer, listener, SUBJECT)
        for channel in ("IR_108", "VIS006"):
            for segment in ("000001", "000002"):
                name = f"H-000-MSG4__-MSG4________-{channel:_<9s}-{segment:_<9s}-202611211000-__"
                (tmp_path / name).write_bytes(os.urandom(5000))
                contents[name] = (tmp_path / name).read_bytes()
                gatherer.process(Message("/in/hrit/", "file", {
                    "uri": str(tmp_path / name), "uid": name, "sensor": ["seviri"],
                    "platform_name": "Meteosat-11",
                    "start_time": dt.datetime(2026, 11, 21, 10, 0)}))
                gatherer.triage_slots()
        [sent] = publisher.sent
        assert Message.decode(sent).type == "collection"
        assert list(Message.decode(sent).data["collection"]) == ["ir", "vs"]
        # the request ends after all it announces; the probe's answer comes after that
        wait_until(lambda: daemon.counts["completed"] == 1, what="the request to end")
        link(producer, listener, SUBJECT)
    assert [m.type for m in listener.messages] == ["collection"]
    [done] = listener.messages
    assert done.subject == "/uploaded/seviri/"
    assert list(done.data["collection"]) == ["ir", "vs"]
    items = [(name, item) for name, dataset in done.data["collection"].items()
             for item in dataset["dataset"]]
    assert [name for name, _ in items] == ["ir", "ir", "vs", "vs"]
    for name, dataset in done.data["collection"].items():
        assert dataset["sensor"] == ["seviri"], name
    for _, item in items:
        key = f"Meteosat-11/202611211000/{item['uid']}"
        assert item["uri"] == f"s3://{bucket}/{key}"
        assert item["size"] == 5000
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == contents[item["uid"]]
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(o["Key"].rsplit("/", 1)[-1] for o in listed) == sorted(contents)
