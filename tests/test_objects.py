"""Object options: the ``object:`` blocks of endpoints and targets, merged at load,
composed per file by routing (trollpush.objects), and S3's limits checked before any
upload; SSE-C keys read once and never shown."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trollpush import models, objects
from trollpush.config import Config, ObjectConfig, parse_config
from trollpush.config.model import NO_OBJECT
from trollpush.errors import ConfigError, Reason
from trollpush.models import ObjectOptions
from trollpush.reload import diff
from trollpush.route import Router, RouteResult

from .test_config import problems_of
from .test_route import GRANULE, PATTERN, granule, make_request

DEST = "s3://l1/{platform_name}/{uid}"


def config(endpoint: dict[str, Any] | None = None, *targets: dict[str, Any],
           url: str = "https://s3.example.org") -> Config:
    """One endpoint (``default``, with this object block) and these targets (each takes
    every granule)."""
    ep: dict[str, Any] = {"url": url}
    if endpoint is not None:
        ep["object"] = endpoint
    return parse_config({"requests": None, "endpoints": {"default": ep},
                         "targets": [{"name": f"t{i}", "pattern": PATTERN, "destination": DEST,
                                      **t} for i, t in enumerate(targets)]})


def routed(cfg: Config, **meta: Any) -> RouteResult:
    return Router(cfg).route(make_request(granule(**meta)))


def options_of(cfg: Config, name: str = GRANULE, **meta: Any) -> ObjectOptions:
    result = routed(cfg, **({"uri": f"/data/in/{name}"} | meta))
    assert result.failures == (), result.failures
    [job] = result.jobs
    [up] = job.uploads
    return up.options


def failure(cfg: Config, **meta: Any) -> tuple[str, str]:
    result = routed(cfg, **meta)
    assert result.jobs == ()
    [fail] = result.failures
    return fail.reason, fail.detail


@pytest.fixture
def key_file(tmp_path: Path) -> tuple[Path, bytes]:
    key = os.urandom(32)
    path = tmp_path / "sse-c.key"
    path.write_bytes(key)
    path.chmod(0o600)
    return path, key


# --- nothing asked, nothing changes ------------------------------------------------------


def test_no_object_block_gives_exactly_the_default_options() -> None:
    cfg = config(None, {})
    assert cfg.endpoints["default"].object is NO_OBJECT
    assert cfg.targets[0].object is NO_OBJECT
    # the very instance the engine and the journal know: no per-upload work, no record
    assert options_of(cfg) is models.NO_OPTIONS
    assert objects.plan(NO_OBJECT) is None  # routing does no work at all for it


def test_a_block_of_defaults_is_no_block() -> None:
    """Every key at its default (written out, or null) is the same as no block."""
    cfg = config({"encryption": "none", "if_none_match": False, "acl": None,
                  "metadata": {}, "tags": None, "storage_class": None}, {})
    assert cfg.endpoints["default"].object is NO_OBJECT
    assert options_of(cfg) == ObjectOptions()
    assert objects.options(ObjectConfig(), {}, "x.h5") == ObjectOptions()


def test_literal_options_are_planned_once_and_shared_by_every_file() -> None:
    cfg = config({"storage_class": "STANDARD_IA", "cache_control": "max-age=600"}, {})
    router = Router(cfg)
    a = router.route(make_request(granule())).jobs[0].uploads[0].options
    b = router.route(make_request(granule("NOAA-20_20261121_1010_12346.h5"))).jobs[0]
    assert b.uploads[0].options is a
    assert a == ObjectOptions(storage_class="STANDARD_IA", cache_control="max-age=600")
    assert a.put(None)["StorageClass"] == "STANDARD_IA"


# --- composition -------------------------------------------------------------------------


def test_metadata_and_tags_are_composed_from_the_files_fields() -> None:
    """Templates see the pattern's fields, the message's metadata (a one-element list as
    its element) and the target's aliases, with trollsift formats."""
    cfg = config({"metadata": {"platform": "{platform_name}",
                               "start-time": "{start_time:%Y-%m-%dT%H:%M:%S}",
                               "sensor": "{sensor}", "site": "norrkoping {{hq}}"},
                  "tags": {"mission": "{platform_name}", "orbit": "{orbit:06d}"}},
                 {"aliases": {"platform_name": {"NOAA-20": "noaa20"}}})
    opts = options_of(cfg, sensor=["viirs"])
    assert opts.metadata == (("platform", "noaa20"), ("start-time", "2026-11-21T10:05:00"),
                             ("sensor", "viirs"), ("site", "norrkoping {hq}"))
    assert opts.tags == (("mission", "noaa20"), ("orbit", "012345"))
    put = opts.put(None)
    assert put["Metadata"] == dict(opts.metadata)
    assert put["Tagging"] == "mission=noaa20&orbit=012345"


def test_a_missing_field_fails_the_target_with_compose_error() -> None:
    cfg = config({"metadata": {"station": "{station}"}}, {})
    reason, detail = failure(cfg)
    assert reason == Reason.COMPOSE_ERROR
    assert "targets[t0].object.metadata.station: unknown field {station}" in detail


def test_a_field_of_several_values_fails_with_compose_error() -> None:
    cfg = config({"tags": {"sensor": "{sensor}"}}, {})
    reason, detail = failure(cfg, sensor=["viirs", "atms"])
    assert reason == Reason.COMPOSE_ERROR and "holds 2 values" in detail


def test_only_the_target_that_fails_is_a_failure_the_others_run() -> None:
    cfg = config(None, {"object": {"metadata": {"station": "{station}"}}}, {})
    result = routed(cfg)
    assert [j.target for j in result.jobs] == ["t1"]
    assert [(f.target, f.reason) for f in result.failures] == [("t0", "compose_error")]


def test_a_direct_request_gets_its_endpoints_options() -> None:
    cfg = config({"storage_class": "GLACIER", "metadata": {"orbit": "{orbit}"}},
                 {"object": {"storage_class": "STANDARD"}})
    request = make_request({"uri": "/data/x.txt", "destination": "s3://b/in/", "orbit": 7},
                           origin="request")
    [job] = Router(cfg).route(request).jobs
    assert job.target is None
    assert job.uploads[0].options == ObjectOptions(storage_class="GLACIER",
                                                   metadata=(("orbit", "7"),))


# --- content_type: auto ------------------------------------------------------------------


@pytest.fixture
def host_mime_types(tmp_path: Path) -> Iterator[None]:
    """This process's mimetypes read a host table of its own; put back afterwards."""
    import mimetypes
    hosts = tmp_path / "mime.types"
    hosts.write_text("text/x-host-h5 h5\ntext/x-host-nc nc\n")
    try:
        mimetypes.init([str(hosts)])
        assert mimetypes.guess_type("x.h5")[0] == "text/x-host-h5"
        yield
    finally:
        mimetypes.init()


@pytest.mark.parametrize(("name", "expected"), [
    ("report.json", "application/json"),
    ("notes.txt", "text/plain"),
    ("granule.nc.gz", "application/gzip"),
    ("bundle.tar.gz", "application/gzip"),
    ("granule.gz", "application/gzip"),
    ("granule.h5.bz2", "application/x-bzip2"),
    ("granule.xz", "application/x-xz"),
    ("granule.no-such-suffix", "application/octet-stream"),
    ("NOAA-20_20261201_0312_00001.h5", "application/x-hdf5"),
    ("W_XX-EUMETSAT_MSG4_20261201.nc", "application/x-netcdf"),
    ("ecmwf_20261201.grib2", "application/x-grib"),
    ("ISXX01_20261201.bufr", "application/x-bufr"),
    ("overview.TIF", "image/tiff"),
    ("README", "application/octet-stream"),
])
def test_auto_content_type_is_from_the_name_compressed_files_get_the_compressed_type(
        name: str, expected: str, host_mime_types: None) -> None:
    """The same on every host: the host's mime.types is never read (here one that would
    call every .h5 and .nc file something else)."""
    assert objects.content_type_of(name) == expected
    opts = options_of(config({"content_type": "auto"},
                             {"pattern": None, "destination": "s3://b/{uid}"}), name=name)
    assert opts.content_type == expected
    sent = {**opts.put(None), **opts.create()}
    assert sent["ContentType"] == expected
    assert "ContentEncoding" not in sent  # never: a client would unpack it


def test_a_literal_content_type_is_sent_as_it_is() -> None:
    opts = options_of(config({"content_type": "text/plain; charset=utf-8"}, {}))
    assert opts.content_type == "text/plain; charset=utf-8"


# --- the merge rule ----------------------------------------------------------------------


def test_a_target_overrides_key_by_key_and_entry_by_entry() -> None:
    cfg = config({"storage_class": "STANDARD_IA", "acl": "bucket-owner-full-control",
                  "cache_control": "max-age=60",
                  "metadata": {"platform": "{platform_name}", "site": "nkp"},
                  "tags": {"mission": "{platform_name}", "level": "l1"}},
                 {"object": {"storage_class": "GLACIER_IR", "cache_control": None,
                             "metadata": {"site": None, "orbit": "{orbit}"},
                             "tags": {"level": "l1b"}, "if_none_match": True}})
    merged = cfg.targets[0].object
    assert merged.storage_class == "GLACIER_IR"  # replaced
    assert merged.acl == "bucket-owner-full-control"  # inherited
    assert merged.cache_control is None  # null: back to the default
    assert merged.metadata == (("platform", "{platform_name}"), ("orbit", "{orbit}"))
    assert merged.tags == (("mission", "{platform_name}"), ("level", "l1b"))
    assert merged.if_none_match is True
    assert cfg.endpoints["default"].object.if_none_match is False  # the endpoint's own


def test_null_metadata_or_tags_in_a_target_drops_the_endpoints_an_empty_one_keeps_them(
        ) -> None:
    cfg = config({"metadata": {"site": "nkp"}, "tags": {"level": "l1"}},
                 {"object": {"metadata": None, "tags": None}},
                 {"object": {"metadata": {}, "tags": {}}})
    dropped, kept = (t.object for t in cfg.targets)
    assert (dropped.metadata, dropped.tags) == ((), ())
    assert (kept.metadata, kept.tags) == ((("site", "nkp"),), (("level", "l1"),))
    first, second = routed(cfg).jobs
    assert first.uploads[0].options.metadata == ()  # the first target's upload sends none
    assert second.uploads[0].options.metadata == (("site", "nkp"),)


def test_encryption_keys_are_taken_together(key_file: tuple[Path, bytes]) -> None:
    """A target that names its encryption takes none of the endpoint's three keys."""
    path, _ = key_file
    cfg = config({"encryption": "sse-kms", "kms_key_id": "alias/l1"},
                 {"object": {"encryption": "sse-s3"}},
                 {"object": {"encryption": "sse-c", "sse_c_key_file": str(path)}},
                 {"object": {"acl": "private"}})
    first, second, third = (t.object for t in cfg.targets)
    assert (first.encryption, first.kms_key_id) == ("sse-s3", None)
    assert (second.encryption, second.kms_key_id, second.sse_c_key_file) == (
        "sse-c", None, str(path))
    assert (third.encryption, third.kms_key_id) == ("sse-kms", "alias/l1")


# --- S3's limits, per file ---------------------------------------------------------------


@pytest.mark.parametrize(("block", "meta", "where", "expected"), [
    pytest.param({"metadata": {"notes": "{notes}"}}, {"notes": "n" * 2100},
                 "metadata", "at most 2048 bytes", id="metadata-over-2kib"),
    pytest.param({"metadata": {"a": "{notes}", "b": "x" * 1000}}, {"notes": "n" * 1047},
                 "metadata", "at most 2048 bytes", id="metadata-sum-of-entries"),
    pytest.param({"metadata": {"station": "{station}"}}, {"station": "Norrköping"},
                 "metadata.station", "printable ASCII", id="metadata-value-not-ascii"),
    pytest.param({"metadata": {"station": "{station}"}}, {"station": "a\r\nX-Evil: 1"},
                 "metadata.station", "printable ASCII", id="metadata-value-crlf"),
    pytest.param({"tags": {"note": "{notes}"}}, {"notes": "v" * 257},
                 "tags.note", "at most 256 characters", id="tag-value-too-long"),
    pytest.param({"tags": {"note": "{notes}"}}, {"notes": "a;b"},
                 "tags.note", "+ - = . _ : / @", id="tag-value-bad-character"),
    pytest.param({"metadata": {"station": "{station}"}}, {"station": " Kiruna "},
                 "metadata.station", "without leading or trailing blanks",
                 id="metadata-value-outer-blanks"),
    # each tag within its limits, 10 of them: 23 KiB once URL-encoded (6 bytes a "ü")
    pytest.param({"tags": {f"t{i}": "{station}" for i in range(10)}}, {"station": "ü" * 256},
                 "", "at most 6144 bytes of headers", id="tags-encoded-beyond-s3s-headers"),
])
def test_a_composed_value_beyond_s3s_limits_fails_with_bad_object_options(
        block: dict[str, Any], meta: dict[str, Any], where: str, expected: str) -> None:
    reason, detail = failure(config(block, {}), **meta)
    assert reason == Reason.BAD_OBJECT_OPTIONS
    assert detail.startswith(f"targets[t0].object{'.' if where else ''}{where}: composed ")
    assert expected in detail


def test_literal_headers_beyond_what_s3_takes_are_a_config_problem() -> None:
    [problem] = problems_of({"requests": None, "endpoints": {"default": {"object": {
        "tags": {f"ü{i}" * 40: "ü" * 256 for i in range(10)}}}}})
    assert problem.key == "endpoints.default.object"
    assert "bytes of headers" in str(problem) and "8 KiB" in str(problem)


def test_auto_content_type_is_of_the_objects_name_never_read_as_a_url() -> None:
    assert objects.content_type_of("data:text/html,x.nc") == "application/x-netcdf"
    renamed = config({"content_type": "auto"},
                     {"pattern": None, "destination": "s3://b/{uid}.nc.gz"})
    assert options_of(renamed).content_type == "application/gzip"  # not the .h5's


def test_tags_allow_unicode_letters_spaces_and_the_listed_signs() -> None:
    opts = options_of(config({"tags": {"station": "{station}", "Plats": "Göteborg +-=._:/@"}},
                             {}), station="Norrköping 2")
    assert opts.tags == (("station", "Norrköping 2"), ("Plats", "Göteborg +-=._:/@"))


def test_the_checks_name_each_limit() -> None:
    """The pure checks, as the validator and routing share them."""
    assert objects.check_metadata([("a", "x"), ("A", "y")])[0][2].startswith(
        "a metadata key unlike 'a' ignoring case")
    assert objects.check_metadata([("a b", "x")])[0][0] == "a b"
    assert objects.check_metadata([("k", "v" * 2048)])[0][1] == "2049 bytes"
    assert objects.check_metadata([("k", "v" * 2047)]) == []
    assert objects.check_tags([(f"k{i}", "") for i in range(10)]) == []
    assert objects.check_tags([(f"k{i}", "") for i in range(11)])[0][1] == "11 tags"
    assert objects.check_tags([("AWS:x", "v")])[0][2].startswith("a tag key not starting")
    assert objects.check_tags([("k" * 128, "v" * 256)]) == []
    assert objects.check_tags([("", "v")])[0][2].startswith("a tag key of 1 to 128")
    assert objects.header_value("attachment; filename=\"a.h5\"") is None
    assert objects.header_value("a\tb") is not None


# --- at load ----------------------------------------------------------------------------


def test_literal_values_beyond_the_limits_are_config_problems_naming_the_key() -> None:
    problems = problems_of({"requests": None, "endpoints": {"default": {"object": {
        "metadata": {"platform": "{platform_name}", "site": "Norrköping"},
        "tags": {"aws:x": "1", "mission": "{platform_name}"}}}}})
    shown = {p.key: str(p) for p in problems}
    assert "endpoints.default.object.metadata.site" in shown
    assert "'Norrköping'" in shown["endpoints.default.object.metadata.site"]
    assert "printable ASCII" in shown["endpoints.default.object.metadata.site"]
    assert "not starting with aws:" in shown["endpoints.default.object.tags.aws:x"]
    assert set(shown) == {"endpoints.default.object.metadata.site",
                          "endpoints.default.object.tags.aws:x"}  # templates: per file


def test_a_merged_block_is_checked_once_at_the_target() -> None:
    """The endpoint's own problem is reported at the endpoint only; one that appears only
    once merged, at the target."""
    with pytest.raises(ConfigError) as info:
        config({"tags": {f"e{i}": "x" for i in range(6)}, "cache_control": "a\nb"},
               {"object": {"tags": {f"t{i}": "x" for i in range(5)}}}, {})
    keys = [p.key for p in info.value.problems]
    assert keys == ["endpoints.default.object.cache_control", "targets[0].object.tags"]
    assert "11 tags" in str(info.value)


def test_storage_classes_of_aws_and_of_other_stores() -> None:
    for name in (*objects.STORAGE_CLASSES, "CEPH_COLD", "TIER2"):
        assert config({"storage_class": name}).endpoints["default"].object.storage_class \
            == name
    [problem] = problems_of({"requests": None, "endpoints": {"default": {"object": {
        "storage_class": "Glacier"}}}})
    assert problem.key == "endpoints.default.object.storage_class"
    assert "STANDARD_IA" in problem.expected and "upper-case" in problem.expected


# --- SSE-C -------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["raw", "base64", "base64 with newline"])
def test_an_sse_c_key_is_read_once_at_load(tmp_path: Path, form: str) -> None:
    key = os.urandom(32)
    path = tmp_path / "key"
    path.write_bytes({"raw": key, "base64": base64.b64encode(key),
                      "base64 with newline": base64.b64encode(key) + b"\n"}[form])
    cfg = config({"encryption": "sse-c", "sse_c_key_file": str(path)}, {})
    block = cfg.endpoints["default"].object
    assert block.sse_c is not None and block.sse_c.key == key
    md5 = base64.b64encode(hashlib.md5(key).digest()).decode()
    assert block.sse_c.md5 == md5
    opts = options_of(cfg)
    assert opts.encryption == "sse-c" and opts.sse_c == block.sse_c
    part = opts.part(None)  # every part carries it, encoded as S3 takes it
    assert part["SSECustomerKey"] == base64.b64encode(key).decode()
    assert part["SSECustomerKeyMD5"] == md5
    assert cfg.targets[0].object.sse_c is block.sse_c
    path.unlink()  # read once: routing never reads the file again
    assert options_of(cfg).sse_c == block.sse_c


@pytest.mark.parametrize(("content", "why"), [
    (b"x" * 31, "holds 31 bytes"),
    (b"A" * 43 + b"\n", "holds 44 bytes"),
    (None, "cannot open"),
])
def test_a_bad_key_file_is_a_problem_naming_the_path_never_the_content(
        tmp_path: Path, content: bytes | None, why: str) -> None:
    path = tmp_path / "key"
    if content is not None:
        path.write_bytes(content)
    [problem] = problems_of({"requests": None, "endpoints": {"default": {"object": {
        "encryption": "sse-c", "sse_c_key_file": str(path)}}}})
    assert problem.key == "endpoints.default.object.sse_c_key_file"
    assert str(path) in str(problem) and why in str(problem)
    if content is not None:
        assert content.decode().strip() not in str(problem)


def test_the_key_never_shows_in_summary_repr_or_options(key_file: tuple[Path, bytes]) -> None:
    path, key = key_file
    cfg = config({"encryption": "sse-c", "sse_c_key_file": str(path)},
                 {"object": {"storage_class": "STANDARD"}})
    opts = options_of(cfg)
    md5 = cfg.endpoints["default"].object.sse_c.md5  # type: ignore[union-attr]
    texts = [cfg.summary(), repr(cfg), repr(opts), objects.describe(opts), str(opts)]
    for text in texts:
        for form in (base64.b64encode(key).decode(), key.hex(), repr(key)[2:-1]):
            assert form not in text
    assert f"encryption=sse-c (key md5 {md5})" in cfg.summary()
    assert f"encryption=sse-c (key md5 {md5})" in objects.describe(opts)


def test_sse_c_over_http_is_a_warning(key_file: tuple[Path, bytes]) -> None:
    path, _ = key_file
    block = {"encryption": "sse-c", "sse_c_key_file": str(path)}
    plain = config(block, {}, url="http://127.0.0.1:9000")
    assert plain.warnings == ("endpoints.default.object.encryption: sse-c over "
                              "http://127.0.0.1:9000: the SSE-C key travels in clear with "
                              "every request (use an https:// endpoint)",)
    assert f"warning: {plain.warnings[0]}" in plain.summary().splitlines()
    assert config(block, {}).warnings == ()  # https


# --- reload ------------------------------------------------------------------------------


def test_a_reload_that_changes_only_object_options_keeps_the_pool() -> None:
    old = config({"storage_class": "STANDARD"}, {})
    new = config({"storage_class": "GLACIER"}, {})
    change = diff(old, new)
    assert not change.endpoints  # no new pool for it
    assert change.settings == ("endpoints.default.object",)
    assert change.targets.changed == ("t0",)  # its merged block changed
    assert change.config.endpoints["default"].object.storage_class == "GLACIER"
    assert not change.empty and "endpoints.default.object" in change.summary()
    other = parse_config({"requests": None, "endpoints": {"default": {
        "url": "https://s3.example.org", "tries": 9, "object": {"storage_class": "GLACIER"}}}})
    assert diff(old, other).endpoints.changed == ("default",)  # a pool setting: new pool


def test_dates_in_metadata_compose_like_destinations() -> None:
    opts = options_of(config({"metadata": {"day": "{start_time:%Y%m%d}"}}, {}))
    assert opts.metadata == (("day", dt.datetime(2026, 11, 21).strftime("%Y%m%d")),)


def test_the_version_views_config_hides_the_key(key_file: tuple[Path, bytes]) -> None:
    """``GET /version`` shows the config as JSON: the key's MD5, never the key."""
    import json

    from trollpush.inputs._http_reply import settings

    path, key = key_file
    cfg = config({"encryption": "sse-c", "sse_c_key_file": str(path)}, {})
    shown = json.dumps(settings(cfg))
    md5 = cfg.endpoints["default"].object.sse_c.md5  # type: ignore[union-attr]
    assert md5 in shown
    for form in (base64.b64encode(key).decode(), key.hex(), repr(key)[2:-1], repr(key)):
        assert form not in shown
