"""Routing: which targets take a request, and the exact objects and topics it becomes."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from posttroll.message import Message

from trollpush.config import Config, parse_config
from trollpush.errors import Reason, RouteError
from trollpush.messages import build_request, parse_destination
from trollpush.models import Request
from trollpush.route import DEFAULT_TOPIC, Router, RouteResult

PATTERN = "{platform_name}_{start_time:%Y%m%d_%H%M}_{orbit:05d}.h5"
GRANULE = "NOAA-20_20261121_1005_12345.h5"
SUBJECT = "/new/file/viirs/"


def make_config(*targets: dict[str, Any], **sections: Any) -> Config:
    """A config with two endpoints (default, archive), REQ/REP input and these targets."""
    data: dict[str, Any] = {
        "requests": None,
        "endpoints": {"default": {}, "archive": {"url": "https://s3.archive.example.org"}},
        "targets": list(targets),
    }
    data.update(sections)
    return parse_config(data)


def make_request(data: dict[str, Any], *, subject: str = SUBJECT, kind: str = "file",
                 origin: str = "subscribe") -> Request:
    """A Request as receive builds it; the files need not exist."""
    return build_request(Message(subject, kind, data), origin=origin, check=False)


def route(config: Config, data: dict[str, Any], **kw: Any) -> RouteResult:
    return Router(config).route(make_request(data, **kw))


def granule(name: str = GRANULE, **meta: Any) -> dict[str, Any]:
    return {"uri": f"/data/in/{name}", **meta}


def urls(result: RouteResult) -> list[str]:
    return [up.url for job in result.jobs for up in job.uploads]


VIIRS: dict[str, Any] = {
    "name": "viirs", "topics": [SUBJECT], "pattern": PATTERN,
    "destination": "s3://l1/{platform_name}/{start_time:%Y/%m/%d/%H%M}/{orbit}/{uid}",
}


# --- patterns, topics, conditions ------------------------------------------------------


def test_pattern_fields_feed_the_destination_with_datetime_formatting() -> None:
    """Fields parsed from the file name (a datetime, an int) are composed into the key."""
    result = route(make_config(VIIRS), granule())
    assert result.failures == ()
    [job] = result.jobs
    assert job.target == "viirs" and job.endpoint == "default"
    [up] = job.uploads
    assert (up.bucket, up.key) == ("l1", f"NOAA-20/2026/11/21/1005/12345/{GRANULE}")
    assert up.source.path == Path(f"/data/in/{GRANULE}")
    assert job.metadata["start_time"] == dt.datetime(2026, 11, 21, 10, 5)
    assert job.metadata["orbit"] == 12345
    assert "uid" not in job.metadata
    assert "uri" not in job.metadata


def test_message_metadata_is_available_to_the_destination() -> None:
    """Message metadata (not just the file name) can be composed into the key."""
    target = {"name": "meta", "destination": "s3://b/{sensor}/{start_time:%Y%m%d}/{uid}"}
    result = route(make_config(target),
                   granule("x.h5", sensor="viirs",
                           start_time=dt.datetime(2026, 11, 21, 10, 5)))
    assert urls(result) == ["s3://b/viirs/20261121/x.h5"]


def test_file_not_matching_the_pattern_is_not_routed() -> None:
    """A file whose name does not fit the pattern is skipped with the reason."""
    result = route(make_config(VIIRS), granule("readme.txt"))
    assert result.jobs == ()
    assert "does not match pattern" in result.skipped["viirs"]


@pytest.mark.parametrize("subject", [SUBJECT, SUBJECT + "npp/extra", SUBJECT + "x"])
def test_topics_match_by_prefix(subject: str) -> None:
    """A target takes any subject that starts with one of its topics."""
    result = route(make_config(VIIRS), granule(), subject=subject)
    assert [j.target for j in result.jobs] == ["viirs"]


@pytest.mark.parametrize("subject", ["/new/file/avhrr/", "/new/file/", "/other" + SUBJECT])
def test_topics_not_matching_skip_the_target(subject: str) -> None:
    """A subject not under the target's topics is skipped and says so."""
    result = route(make_config(VIIRS), granule(), subject=subject)
    assert result.jobs == ()
    assert subject in result.skipped["viirs"]
    assert [f.reason for f in result.failures] == [Reason.NO_ROUTE]


def test_target_without_topics_takes_any_subject() -> None:
    """No `topics` means every subject."""
    target = {"name": "all", "destination": "s3://b/"}
    result = route(make_config(target), granule(), subject="/anything/at/all")
    assert urls(result) == [f"s3://b/{GRANULE}"]


def with_conditions(conditions: dict[str, Any]) -> Config:
    return make_config({**VIIRS, "conditions": conditions})


@pytest.mark.parametrize(("sensor", "routed"), [("viirs", True), ("avhrr", False)])
def test_scalar_condition(sensor: str, routed: bool) -> None:
    """A scalar condition requires that exact value."""
    result = route(with_conditions({"sensor": "viirs"}), granule(sensor=sensor))
    assert bool(result.jobs) is routed
    if not routed:
        assert "'avhrr'" in result.skipped["viirs"]


@pytest.mark.parametrize(("name", "routed"), [
    ("NOAA-20_20261121_1005_12345.h5", True),
    ("NOAA-21_20261121_1005_12345.h5", True),
    ("Suomi-NPP_20261121_1005_12345.h5", False),
])
def test_list_condition_is_one_of(name: str, routed: bool) -> None:
    """A list condition accepts any one of its values (here on a parsed field)."""
    result = route(with_conditions({"platform_name": ["NOAA-20", "NOAA-21"]}), granule(name))
    assert bool(result.jobs) is routed


@pytest.mark.parametrize(("sensor", "routed"), [
    (["viirs"], True), (["atms", "viirs"], True), (["avhrr", "amsu-a"], False), ([], False),
])
def test_condition_on_a_list_valued_field(sensor: list[str], routed: bool) -> None:
    """Metadata holding a list (sensor: [viirs]) matches when any element is allowed."""
    result = route(with_conditions({"sensor": "viirs"}), granule(sensor=sensor))
    assert bool(result.jobs) is routed


def test_condition_on_a_number_matches_its_text() -> None:
    """A condition written as text matches a number parsed from the file name."""
    result = route(with_conditions({"orbit": "12345"}), granule())
    assert bool(result.jobs)


def test_missing_key_fails_the_condition() -> None:
    """A condition on a key the message does not have is not satisfied; the reason says so."""
    result = route(with_conditions({"sensor": "viirs"}), granule())
    assert result.jobs == ()
    assert "'sensor'" in result.skipped["viirs"]
    assert "no 'sensor'" in result.skipped["viirs"]


@pytest.mark.parametrize(("name", "routed"), [
    ("Suomi-NPP_20261121_1005_12345.h5", False),  # every except key matches: excluded
    ("Suomi-NPP_20261121_1005_12346.h5", True),  # orbit differs: not excluded
    ("NOAA-20_20261121_1005_12345.h5", True),  # platform differs: not excluded
])
def test_except_excludes_only_when_all_its_keys_match(name: str, routed: bool) -> None:
    """An `except:` block removes a file only when every one of its keys matches."""
    config = with_conditions({"sensor": "viirs",
                              "except": {"platform_name": ["Suomi-NPP"], "orbit": 12345}})
    result = route(config, granule(name, sensor="viirs"))
    assert bool(result.jobs) is routed
    if not routed:
        assert "excepted" in result.skipped["viirs"]


def test_except_with_a_missing_key_fails_the_set() -> None:
    """An except key the message lacks fails the set, as in trollmoves' dispatcher (its
    own test: NOAA-15 green_snow without platform_name is not dispatched): whether the
    file is excepted cannot be told, so it is not uploaded."""
    config = with_conditions({"except": {"quality": "bad"}})
    result = route(config, granule())
    assert result.jobs == ()
    assert result.skipped["viirs"] == "except on 'quality': the message has no 'quality'"
    assert route(config, granule(quality="good")).jobs


# --- aliases, trailing slash, topics ----------------------------------------------------


def test_aliases_apply_to_composing_but_not_to_announced_metadata() -> None:
    """An alias renames a value in the key and publish topic; Job.metadata keeps the original."""
    target = {**VIIRS, "aliases": {"platform_name": {"NOAA-20": "j01", "NOAA-21": "j02"}},
              "destination": "s3://l1/{platform_name}/{uid}",
              "publish_topic": "/uploaded/viirs/{platform_name}/"}
    [job] = route(make_config(target), granule()).jobs
    assert [u.key for u in job.uploads] == [f"j01/{GRANULE}"]
    assert job.publish_topic == "/uploaded/viirs/j01/"
    assert job.metadata["platform_name"] == "NOAA-20"


def test_value_without_alias_is_used_as_is() -> None:
    """A value missing from the alias table passes through unchanged."""
    target = {**VIIRS, "aliases": {"platform_name": {"NOAA-20": "j01"}},
              "destination": "s3://l1/{platform_name}/{uid}"}
    name = "Metop-B_20261121_1005_12345.h5"
    assert urls(route(make_config(target), granule(name))) == [f"s3://l1/Metop-B/{name}"]


def test_trailing_slash_appends_the_basename() -> None:
    """A destination ending in `/` gets the file's basename as the last key part."""
    target = {**VIIRS, "destination": "s3://archive/{start_time:%Y/%m/%d}/"}
    assert urls(route(make_config(target), granule())) == [f"s3://archive/2026/11/21/{GRANULE}"]


def test_publish_topic_is_composed_from_metadata() -> None:
    """publish_topic is a template over the message's and the file name's fields."""
    target = {**VIIRS, "publish_topic": "/uploaded/{sensor}/{platform_name}/{orbit:06d}/"}
    [job] = route(make_config(target), granule(sensor="viirs")).jobs
    assert job.publish_topic == "/uploaded/viirs/NOAA-20/012345/"


def test_publish_topic_may_use_the_uid() -> None:
    """The uid is a field like the others (it is only left out of the job's metadata)."""
    target = {**VIIRS, "publish_topic": "/uploaded/{uid}"}
    [job] = route(make_config(target), granule()).jobs
    assert job.publish_topic == f"/uploaded/{GRANULE}"
    assert "uid" not in job.metadata


def test_publish_topic_defaults_to_the_publish_section() -> None:
    """Without publish_topic, completions go to the publish section's topic."""
    publish = {"name": "tp", "topic": "/done/"}
    [job] = Router(make_config(VIIRS, publish=publish)).route(make_request(granule())).jobs
    assert job.publish_topic == "/done/"


def test_publish_topic_defaults_without_a_publish_section() -> None:
    """Without any publish section the built-in default topic is used."""
    [job] = route(make_config(VIIRS), granule()).jobs
    assert job.publish_topic == DEFAULT_TOPIC


def test_fan_out_to_several_targets() -> None:
    """One file matching several targets becomes one job per target, in config order."""
    archive = {"name": "archive", "pattern": PATTERN, "endpoint": "archive",
               "destination": "s3://archive/{start_time:%Y}/"}
    result = route(make_config(VIIRS, archive), granule())
    assert [(j.target, j.endpoint) for j in result.jobs] == [("viirs", "default"),
                                                             ("archive", "archive")]
    assert urls(result) == [f"s3://l1/NOAA-20/2026/11/21/1005/12345/{GRANULE}",
                            f"s3://archive/2026/{GRANULE}"]
    assert result.failures == ()
    for job in result.jobs:
        assert job.uploads[0].source.path == Path(f"/data/in/{GRANULE}")


# --- datasets and collections ----------------------------------------------------------


DATASET_FILES = ["NOAA-20_20261121_1005_12345.h5", "NOAA-20_20261121_1006_12345.h5"]


def dataset(names: list[str], **meta: Any) -> dict[str, Any]:
    return {**meta, "dataset": [{"uri": f"/data/in/{n}", "uid": n} for n in names]}


def test_dataset_where_every_item_matches_is_one_job() -> None:
    """A dataset becomes one job with one upload per item, in order; its metadata is the
    message's (without the item list)."""
    result = route(make_config(VIIRS), dataset(DATASET_FILES, sensor="viirs"), kind="dataset")
    assert result.failures == ()
    [job] = result.jobs
    assert [u.key for u in job.uploads] == [
        f"NOAA-20/2026/11/21/1005/12345/{DATASET_FILES[0]}",
        f"NOAA-20/2026/11/21/1006/12345/{DATASET_FILES[1]}"]
    assert dict(job.metadata) == {"sensor": "viirs"}


def test_dataset_where_only_some_items_match_is_a_failure() -> None:
    """A target that would take only part of a dataset fails it (no partial uploads)."""
    names = [DATASET_FILES[0], "NOAA-20_quicklook.png"]
    result = route(make_config(VIIRS), dataset(names), kind="dataset")
    assert result.jobs == ()
    [fail] = result.failures
    assert fail.reason == Reason.NO_ROUTE
    assert fail.target == "viirs"
    assert "1 of 2" in fail.detail and "dataset" in fail.detail
    assert "NOAA-20_quicklook.png" in fail.detail


def test_dataset_where_no_item_matches_is_skipped() -> None:
    """A dataset no item of which fits is simply not for this target."""
    result = route(make_config(VIIRS), dataset(["a.png", "b.png"]), kind="dataset")
    assert result.jobs == ()
    assert "viirs" in result.skipped
    assert [f.reason for f in result.failures] == [Reason.NO_ROUTE]


def test_collection_with_a_nested_dataset() -> None:
    """A collection's nested dataset items and plain items all become uploads, in order."""
    third = "NOAA-20_20261121_1007_12345.h5"
    data = {"collection": [dataset(DATASET_FILES), {"uri": f"/data/in/{third}"}]}
    result = route(make_config(VIIRS), data, kind="collection")
    [job] = result.jobs
    assert [u.source.path.name for u in job.uploads] == [*DATASET_FILES, third]
    assert [u.key.rsplit("/", 2)[-2] for u in job.uploads] == ["12345"] * 3


# --- failures --------------------------------------------------------------------------


def test_compose_with_a_missing_field_is_a_compose_error() -> None:
    """A destination needing a field the message lacks fails with compose_error naming it."""
    target = {"name": "sat", "destination": "s3://b/{satellite}/{uid}"}
    result = route(make_config(target), granule())
    assert result.jobs == ()
    [fail] = result.failures
    assert fail.reason == Reason.COMPOSE_ERROR
    assert fail.target == "sat"
    assert "{satellite}" in fail.detail
    assert fail.destination == "s3://b/{satellite}/{uid}"
    assert fail.source is not None and fail.source.path.name == GRANULE


def test_compose_with_a_wrong_type_is_a_compose_error() -> None:
    """A field whose value cannot take the format (a text 'orbit' for {orbit:05d}) fails."""
    target = {"name": "orb", "destination": "s3://b/{orbit:05d}/"}
    [fail] = route(make_config(target), granule("x.h5", orbit="twelve")).failures
    assert fail.reason == Reason.COMPOSE_ERROR
    assert "cannot compose" in fail.detail


def test_publish_topic_missing_field_is_a_compose_error() -> None:
    """A publish_topic needing an absent field fails the job instead of announcing wrongly."""
    target = {**VIIRS, "publish_topic": "/uploaded/{sensor}/"}
    result = route(make_config(target), granule())
    assert result.jobs == ()
    [fail] = result.failures
    assert fail.reason == Reason.COMPOSE_ERROR and "{sensor}" in fail.detail


def test_no_matching_target_is_one_no_route_failure_explaining_each_target() -> None:
    """A message that no target takes gives one no_route failure naming every target's
    reason."""
    targets = [{**VIIRS, "name": "by-topic", "topics": ["/new/file/avhrr/"]},
               {**VIIRS, "name": "by-pattern"},
               {**VIIRS, "name": "by-condition", "pattern": None,
                "conditions": {"sensor": "viirs"}}]
    result = route(make_config(*targets), granule("readme.txt", sensor="atms"))
    assert result.jobs == ()
    [fail] = result.failures
    assert fail.target is None
    assert fail.reason == Reason.NO_ROUTE
    assert set(result.skipped) == {"by-topic", "by-pattern", "by-condition"}
    for name, why in result.skipped.items():
        assert f"{name}: {why}" in fail.detail
    assert "/new/file/avhrr/" in result.skipped["by-topic"]
    assert "readme.txt" in result.skipped["by-pattern"]
    assert "'atms'" in result.skipped["by-condition"]
    assert fail.source is not None and fail.source.path.name == "readme.txt"


def test_no_targets_configured_is_a_no_route_failure() -> None:
    """With no targets at all, a routed message fails with no_route saying so."""
    [fail] = route(make_config(), granule()).failures
    assert fail.reason == Reason.NO_ROUTE
    assert "no targets configured" in fail.detail


def test_index_out_of_range_in_template_is_a_compose_error() -> None:
    """`{sensor[0]}` on a message with sensor: [] fails with compose_error, not an exception."""
    target = {"name": "first-sensor", "destination": "s3://b/{sensor[0]}/"}
    result = route(make_config(target), granule(sensor=[]))
    assert [f.reason for f in result.failures] == [Reason.COMPOSE_ERROR]


def test_attribute_error_in_template_is_a_compose_error() -> None:
    """`{start_time.year}` on a text start_time fails with compose_error, not an exception."""
    target = {"name": "year", "destination": "s3://b/{start_time.year}/"}
    result = route(make_config(target), granule(start_time="soon"))
    assert [f.reason for f in result.failures] == [Reason.COMPOSE_ERROR]


# --- direct destinations ---------------------------------------------------------------


def direct(destination: str, **extra: Any) -> dict[str, Any]:
    return {"uri": "/data/in/x.h5", "destination": destination, "sensor": "viirs", **extra}


def test_direct_destination_bypasses_routing() -> None:
    """A request with an explicit destination becomes exactly that upload, even when a
    target would also match."""
    catch_all = {"name": "all", "destination": "s3://elsewhere/"}
    result = route(make_config(catch_all), direct("s3://b/k/x.h5"), origin="request")
    assert result.failures == () and result.skipped == {}
    [job] = result.jobs
    assert job.target is None
    assert job.endpoint == "default"
    assert [(u.bucket, u.key) for u in job.uploads] == [("b", "k/x.h5")]
    assert dict(job.metadata) == {"sensor": "viirs"}
    assert job.publish_topic == DEFAULT_TOPIC


def test_destination_from_pubsub_is_only_metadata() -> None:
    """A `destination` in a pub-sub message does not steer: the message is routed."""
    catch_all = {"name": "all", "destination": "s3://elsewhere/"}
    result = route(make_config(catch_all), direct("s3://b/k/x.h5"))
    assert urls(result) == ["s3://elsewhere/x.h5"]


@pytest.mark.parametrize(("destination", "bucket", "key"), [
    ("s3://b/k/x.h5", "b", "k/x.h5"),
    ("s3://b/k/", "b", "k/x.h5"),
    ("s3://b", "b", "x.h5"),
    ("myminio/b/k/renamed.h5", "b", "k/renamed.h5"),
    ("myminio/b/k/", "b", "k/x.h5"),
])
def test_direct_destination_forms(destination: str, bucket: str, key: str) -> None:
    """s3://BUCKET/KEY and ALIAS/BUCKET/KEY; a key ending in / (or none) gets the basename."""
    [job] = route(make_config(), direct(destination), origin="request").jobs
    assert [(u.bucket, u.key) for u in job.uploads] == [(bucket, key)]


def test_direct_destination_with_an_explicit_endpoint() -> None:
    """`endpoint` in a request picks that endpoint."""
    [job] = route(make_config(), direct("s3://b/", endpoint="archive"), origin="request").jobs
    assert job.endpoint == "archive"


def test_direct_destination_with_an_unknown_endpoint_is_a_bad_destination() -> None:
    """An endpoint not in the config fails with bad_destination naming it and the known ones."""
    result = route(make_config(), direct("s3://b/", endpoint="nope"), origin="request")
    assert result.jobs == ()
    [fail] = result.failures
    assert fail.reason == Reason.BAD_DESTINATION
    assert "'nope'" in fail.detail and "default" in fail.detail
    assert fail.destination == "s3://b/"


def test_direct_destination_without_a_default_endpoint_is_a_bad_destination() -> None:
    """With several endpoints and none named default, a request must name one."""
    config = parse_config({"requests": None, "endpoints": {"a": {}, "b": {}}})
    result = route(config, direct("s3://b/"), origin="request")
    [fail] = result.failures
    assert fail.reason == Reason.BAD_DESTINATION and "None" in fail.detail


@pytest.mark.parametrize("destination", ["http://b/k", "bucketonly", "s3://", "s3:///k"])
def test_direct_destination_that_cannot_be_parsed_is_a_bad_destination(destination: str) -> None:
    """A malformed direct destination fails with bad_destination."""
    result = route(make_config(), direct(destination), origin="request")
    assert [f.reason for f in result.failures] == [Reason.BAD_DESTINATION]
    assert result.failures[0].destination == destination


def test_direct_dataset_needs_a_destination_ending_in_slash() -> None:
    """Several files cannot share one object key: a directory-like destination is required."""
    data = {**dataset(DATASET_FILES), "destination": "s3://b/k/one.h5"}
    [fail] = route(make_config(), data, kind="dataset", origin="request").failures
    assert fail.reason == Reason.BAD_DESTINATION and "2 files" in fail.detail
    data["destination"] = "s3://b/k/"
    [job] = route(make_config(), data, kind="dataset", origin="request").jobs
    assert [u.key for u in job.uploads] == [f"k/{n}" for n in DATASET_FILES]


# --- parse_destination -----------------------------------------------------------------


@pytest.mark.parametrize(("destination", "expected"), [
    ("s3://b/k", ("b", "k")),
    ("s3://b/a/b/c", ("b", "a/b/c")),
    ("s3://b/k/", ("b", "k/f.h5")),
    ("s3://b/", ("b", "f.h5")),
    ("s3://b", ("b", "f.h5")),
    ("alias/b/k", ("b", "k")),
    ("alias/b/k/", ("b", "k/f.h5")),
])
def test_parse_destination(destination: str, expected: tuple[str, str]) -> None:
    """Bucket and key from both destination forms; a trailing / takes the basename."""
    assert parse_destination(destination, "f.h5") == expected


@pytest.mark.parametrize("destination", [
    "http://b/k", "https://s3.example.org/b/k", "bucketonly", "s3://", "s3:///k", "/b/k", "",
])
def test_parse_destination_errors(destination: str) -> None:
    """Anything that is not s3://BUCKET[/KEY] or ALIAS/BUCKET[/KEY] is a bad_destination."""
    with pytest.raises(RouteError) as info:
        parse_destination(destination, "f.h5")
    assert info.value.reason == Reason.BAD_DESTINATION
    assert repr(destination) in info.value.detail


# --- trollpush match ------------------------------------------------------------------------


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "trollpush.yaml"
    path.write_text(yaml.safe_dump({
        "requests": None,
        "endpoints": {"default": {}},
        "targets": [{**VIIRS, "aliases": {"platform_name": {"NOAA-20": "j01"}},
                     "destination": "s3://l1/{platform_name}/{start_time:%Y/%m/%d}/{uid}",
                     "publish_topic": "/uploaded/viirs/{platform_name}/"}],
    }), encoding="utf-8")
    return path


def run_match(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trollpush", "match",
                           str(write_config(tmp_path)), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)


def test_match_cli_prints_the_destination(tmp_path: Path) -> None:
    """`trollpush match` exits 0 and prints the composed s3:// URL and publish topic."""
    proc = run_match(tmp_path, f"/data/in/{GRANULE}", "--topic", SUBJECT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"viirs: s3://l1/j01/2026/11/21/{GRANULE}" in proc.stdout
    assert "/uploaded/viirs/j01/" in proc.stdout


def test_match_cli_exits_1_when_nothing_matches(tmp_path: Path) -> None:
    """`trollpush match` exits 1 and says why, for a file no target takes."""
    proc = run_match(tmp_path, "/data/in/readme.txt", "--topic", SUBJECT)
    assert proc.returncode == 1
    assert "s3://" not in proc.stdout
    assert "viirs: no match" in proc.stdout and "readme.txt" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_a_composed_topic_with_whitespace_is_a_compose_error() -> None:
    """A subject may not hold whitespace: the wire format splits on it."""
    target = {"name": "spaced", "pattern": "{platform_name}_{rest}.h5",
              "destination": "s3://b/", "publish_topic": "/up/{platform_name}/"}
    result = route(make_config(target), granule("NOAA 20_x.h5"))
    assert [f.reason for f in result.failures] == [Reason.COMPOSE_ERROR]
    assert "whitespace" in result.failures[0].detail


def test_the_message_metadata_wins_over_fields_parsed_from_the_name() -> None:
    """trollstalker normalises `platform_name` (J01 -> NOAA-20) before it publishes: the
    target's pattern fills in only what the message lacks (here start_time and orbit)."""
    name = "J01_20261121_1005_12345.h5"
    result = route(make_config(VIIRS), granule(name, platform_name="NOAA-20"))
    assert urls(result) == [f"s3://l1/NOAA-20/2026/11/21/1005/12345/{name}"]
    assert result.jobs[0].metadata["platform_name"] == "NOAA-20"
    assert result.jobs[0].metadata["orbit"] == 12345
    # without it in the message, the parsed value is used, and aliases apply to it
    aliased = make_config({**VIIRS, "aliases": {"platform_name": {"J01": "NOAA-20"}}})
    assert urls(route(aliased, granule(name))) == [
        f"s3://l1/NOAA-20/2026/11/21/1005/12345/{name}"]


@pytest.mark.parametrize(("sensor", "outcome"), [
    (["viirs"], "s3://b/viirs/" + GRANULE),
    ("viirs", "s3://b/viirs/" + GRANULE),
    (["viirs", "atms"], "{sensor} holds 2 values"),
    ([], "{sensor} holds 0 values"),
])
def test_a_one_element_list_composes_as_its_element(sensor: Any, outcome: str) -> None:
    """trollstalker sends `sensor: ["viirs"]`: the key says viirs, not ['viirs']; a list
    of several values cannot name one object: that target fails with compose_error."""
    target = {"name": "by-sensor", "destination": "s3://b/{sensor}/{uid}"}
    result = route(make_config(target), granule(sensor=sensor))
    if outcome.startswith("s3://"):
        assert urls(result) == [outcome]
    else:
        assert result.jobs == ()
        assert [f.reason for f in result.failures] == [Reason.COMPOSE_ERROR]
        assert outcome in result.failures[0].detail


def test_a_list_a_template_does_not_use_is_left_alone() -> None:
    target = {"name": "flat", "destination": "s3://b/{uid}"}
    result = route(make_config(target), granule(sensor=["viirs", "atms"]))
    assert urls(result) == [f"s3://b/{GRANULE}"]
    assert result.jobs[0].metadata["sensor"] == ["viirs", "atms"]
