"""``trollpush convert-dispatch`` side by side with trollmoves' dispatcher.

trollmoves' own example config (tests/data/trollmoves-dispatch.yaml, verbatim) and a
config of ours that uses the rest of the dispatcher's features are converted; then the
same messages go to ``Dispatcher.get_destinations`` (turned into objects as trollmoves'
S3 mover does) and to trollpush's Router on the converted config, and the objects must
be the same.  The dispatcher is built once per message: it consumes ``_alias_name``
from its config on the first message (a trollmoves bug, docs/migrating.md).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from posttroll.message import Message
from trollmoves.dispatcher import Dispatcher
from trollmoves.movers import S3Mover

from trollpush.config import parse_config
from trollpush.convert import Conversion, convert_dispatch, convert_dispatch_text
from trollpush.errors import ConfigError
from trollpush.messages import build_request, decode_message
from trollpush.route import Router

EXAMPLE = Path(__file__).parent / "data" / "trollmoves-dispatch.yaml"

#: the rest of the dispatcher's features, with S3 hosts (ours, not trollmoves')
FEATURES = """
posttroll_subscriber:
  subscribe_addresses: [tcp://127.0.0.1:40000]
  nameserver: false
l1b:
  host: s3://l1b-bucket/ignored/prefix
  connection_parameters:
    client_kwargs: {endpoint_url: 'http://127.0.0.1:9000', region_name: eu-north-1}
    config_kwargs: {s3: {addressing_style: path}}
    use_tmp_on_transfer: true
    anon: true
    s3_additional_kwargs: {SSECustomerKey: sse-c-key-in-clear}
  filepattern: '{platform_name}_{start_time:%Y%m%d_%H%M}_{orbit_number:05d}.{format}'
  directory: /{sensor}/{start_time:%Y/%m/%d}
  publish_topic: /uploaded/l1b/{platform_name}/
  aliases:
    platform_name: {NOAA-20: j01, Suomi-NPP: npp}
  dispatch_configs:
    - topics: [/l1b/viirs/, /l1b/atms/]
      conditions:
        - sensor: [viirs, atms]
          except: {platform_name: NOAA-21}
    - topics: [/l1b/avhrr/]
      directory: /avhrr
      connection_parameters:
        client_kwargs: {endpoint_url: 'https://archive.example.org', verify: CA_BUNDLE}
        profile: archive
renamed:
  host: s3://products
  directory: /in/{product_dir}
  aliases:
    product:
      - _alias_name: product_dir
        green_snow: snow-dir
  dispatch_configs:
    - topics: [/level2/]
clash:
  host: s3://products
  directory: /in/{product_dir}
  filepattern: '{product}.tif'
  aliases:
    product:
      - _alias_name: product_dir
        green_snow: snow-dir
      - green_snow: gs
  dispatch_configs:
    - topics: [/level2/]
ctime:
  host: s3://products
  directory: /by-ctime/{file_creation_time:%Y%m%d}
  dispatch_configs:
    - topics: [/level2/]
elsewhere:
  host: scp://user:pa55word@server.example.org
  directory: /data
  dispatch_configs:
    - topics: [/level2/]
    - topics: [/l1b/]
      host: sftp://server.example.org
local:
  host: ''
  directory: /tmp/out
  dispatch_configs:
    - topics: [/level2/]
"""


def dispatcher_objects(config: Path, message: Message) -> list[tuple[str, str]]:
    """(client, bucket/key) for each S3 destination the dispatcher gives the message."""
    before = signal.getsignal(signal.SIGTERM)
    try:
        dispatcher = Dispatcher(os.fspath(config), messages=[])  # takes SIGTERM: given back
    finally:
        signal.signal(signal.SIGTERM, before)
    dispatcher.config.pop("posttroll_subscriber", None)  # as its listener does at start
    files = ([message] if message.type == "file"
             else dispatcher._get_file_messages_from_dataset_message(message))
    out = []
    for msg in files:
        for url, params, client in dispatcher.get_destinations(msg):
            if url.startswith("s3://"):  # how trollmoves' S3 mover names the object
                out.append((client, S3Mover(msg.data["uri"], url, params)._get_destination()))
    return sorted(out)


def trollpush_objects(conversion: Conversion, message: Message) -> list[tuple[str, str]]:
    """(client the target came from, bucket/key) for each object trollpush would write."""
    config = parse_config(yaml.safe_load(conversion.text))
    request = build_request(decode_message(message.encode()), origin="test", check=False)
    result = Router(config).route(request)
    return sorted((conversion.origins[job.target or ""][0], f"{up.bucket}/{up.key}")
                  for job in result.jobs for up in job.uploads)


@pytest.fixture
def features(tmp_path: Path) -> str:
    """FEATURES, with a CA bundle that exists (``check`` reads it)."""
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    return FEATURES.replace("CA_BUNDLE", os.fspath(bundle))


@pytest.fixture
def files(tmp_path: Path) -> Iterator[Any]:
    """Make the message's files (the dispatcher reads their ctime)."""
    def make(*names: str) -> list[str]:
        paths = [tmp_path / n for n in names]
        for p in paths:
            p.write_bytes(b"x")
        return [os.fspath(p) for p in paths]
    yield make


#: trollmoves' test fixture atms_sdr_dataset_message, and variations
SDR = ["SATMS_npp_d20230405_t0839333_e0847009_b59261_c20230405084834951682_cspp_dev.h5",
       "GATMO_npp_d20230405_t0839333_e0847009_b59261_c20230405084835126023_cspp_dev.h5",
       "TATMS_npp_d20230405_t0839333_e0847009_b59261_c20230405084835042744_cspp_dev.h5"]
ATMS_META = {"start_time": dt.datetime(2023, 4, 5, 8, 39, 0, 700000),
             "end_time": dt.datetime(2023, 4, 5, 8, 48, 4, 600000), "orbit_number": 59261,
             "platform_name": "Suomi-NPP", "sensor": "atms", "data_processing_level": "1B",
             "variant": "DR", "collection_area_id": "euron1", "type": "HDF5", "format": "SDR"}
EXAMPLE_MESSAGES = [
    pytest.param("/atms/sdr/1", "dataset", {}, 2 * 3, id="tm-atms-sdr-dataset"),
    pytest.param("/atms/sdr/1", "file", {}, 2, id="atms-sdr-file"),
    pytest.param("/atms/sdr/1", "file", {"sensor": ["atms"]}, 2, id="sensor-as-list"),
    pytest.param("/atms/sdr/1/more", "file", {}, 2, id="longer-subject"),
    pytest.param("/atms/sdr/1", "file", {"platform_name": "NOAA-20"}, 2, id="aliased-platform"),
    pytest.param("/atms/sdr/1", "file", {"variant": "RR"}, 0, id="other-variant"),
    pytest.param("/atms/sdr/1", "file", {"format": "EDR"}, 0, id="other-format"),
    pytest.param("/atms/sdr/1", "file", {"variant": None}, 0, id="no-variant"),
    pytest.param("/atms/sdr/", "file", {}, 0, id="shorter-subject"),
    pytest.param("/level2/viirs", "file", {"sensor": "viirs", "product": "green_snow",
                                           "platform_name": "NOAA-20", "format": "tif"},
                 0, id="tm-viirs-green-snow-ftp-only"),
]


def message(subject: str, kind: str, meta: dict[str, Any], uris: list[str]) -> Message:
    data = {**ATMS_META, **meta}
    data = {k: v for k, v in data.items() if v is not None}
    items = [{"uri": u, "uid": os.path.basename(u)} for u in uris]
    if kind == "dataset":
        return Message(subject, "dataset", {**data, "dataset": items})
    return Message(subject, "file", {**data, **items[0]})


@pytest.mark.parametrize(("subject", "kind", "meta", "objects"), EXAMPLE_MESSAGES)
def test_the_example_routes_to_the_dispatchers_objects(
        subject: str, kind: str, meta: dict[str, Any], objects: int, files: Any) -> None:
    conversion = convert_dispatch_text(EXAMPLE.read_text(), source=str(EXAMPLE))
    msg = message(subject, kind, meta, files(*SDR))
    expected = dispatcher_objects(EXAMPLE, msg)
    assert trollpush_objects(conversion, msg) == expected
    assert len(expected) == objects
    for _, key in expected:  # the file's own name under the directory, in the bucket
        assert key.removeprefix("my-fancy-bucket/upload/sdr/") in SDR


L1B_META = {"platform_name": "NOAA-20", "sensor": "viirs", "format": "h5", "orbit_number": 7,
            "start_time": dt.datetime(2026, 11, 21, 10, 0)}
FEATURE_MESSAGES = [
    pytest.param("/l1b/viirs/", L1B_META, id="aliased-platform"),
    pytest.param("/l1b/atms/", {**L1B_META, "sensor": "atms", "platform_name": "NOAA-19"},
                 id="platform-not-aliased"),
    pytest.param("/l1b/viirs/", {**L1B_META, "platform_name": "NOAA-21"}, id="excepted"),
    pytest.param("/l1b/avhrr/", {**L1B_META, "sensor": "avhrr/3"}, id="second-item"),
    pytest.param("/level2/x", {"product": "green_snow"}, id="alias-name-renamed"),
    pytest.param("/level2/x", {"product": "overview"}, id="alias-name-not-in-table"),
]


@pytest.mark.parametrize(("subject", "meta"), FEATURE_MESSAGES)
def test_features_route_to_the_dispatchers_objects(subject: str, meta: dict[str, Any],
                                                   features: str, files: Any,
                                                   tmp_path: Path) -> None:
    config = tmp_path / "dispatch.yaml"
    config.write_text(features)
    conversion = convert_dispatch_text(features)
    msg = Message(subject, "file", {**meta, "uri": files("granule.h5")[0], "uid": "granule.h5"})
    # the dispatcher fails on the destinations that are left out (no {product_dir} after
    # its first message, no such field): compare without them
    expected = [o for o in dispatcher_objects(config, msg) if o[0] in ("l1b", "renamed")]
    assert trollpush_objects(conversion, msg) == expected
    assert expected or meta.get("platform_name") == "NOAA-21"


def comment_text(text: str) -> str:
    """Every comment of the output as one line (comments are wrapped)."""
    lines = [line.strip()[1:].strip() for line in text.splitlines()
             if line.strip().startswith("#")]
    return " ".join(" ".join(lines).split())


def test_what_cannot_be_converted_is_a_comment_and_a_warning(features: str) -> None:
    conversion = convert_dispatch_text(features)
    comments = comment_text(conversion.text)
    assert conversion.warnings
    for warning in conversion.warnings:  # "where: text": the text is in a comment (one
        # not converted is in the header's list of destinations not converted)
        text = warning.split(": ", 1)[1].removeprefix("not converted: ")
        assert " ".join(text.split()) in comments, warning
    said = "\n".join(conversion.warnings)
    for expected in ["the path of host (/ignored/prefix) is dropped",
                     "publish_topic uses platform_name",
                     "anon: True not carried over",
                     "clash.dispatch_configs[0]: not converted: the key uses {product}, "
                     "{product_dir}",
                     "ctime.dispatch_configs[0]: not converted: {file_creation_time}"]:
        assert expected in said
    assert "connection_parameters.s3_additional_kwargs (a dict) has no trollpush" in said
    assert "sse-c-key-in-clear" not in conversion.text + said
    assert "use_tmp_on_transfer not needed" in comments  # same behaviour: a comment only
    assert "use_tmp_on_transfer" not in said


def test_destinations_trollpush_does_not_serve_are_listed_and_skipped(features: str) -> None:
    conversion = convert_dispatch_text(features)
    skipped = "\n".join(conversion.skipped)
    assert "elsewhere.dispatch_configs[0]: scp://user:***@server.example.org" in skipped
    assert "pa55word" not in conversion.text + skipped  # a password in a host is hidden
    assert "elsewhere.dispatch_configs[1]: sftp://server.example.org" in skipped
    assert "local.dispatch_configs[0]: (empty host): a local copy" in skipped
    head = conversion.text.split("subscribe:", 1)[0]
    assert "Destinations not converted:" in head and "scp://user:***@server.example.org" in head
    assert set(conversion.origins) == {"l1b-0", "l1b-1", "renamed"}
    assert "elsewhere" not in conversion.text.split("targets:", 1)[1]


def test_the_converted_features(features: str, tmp_path: Path) -> None:
    """What each dispatcher setting became, read back through trollpush's loader."""
    config = parse_config(yaml.safe_load(convert_dispatch_text(features).text))
    sub = config.subscribe
    assert sub is not None and sub.settings["nameserver"] is False
    assert list(sub.settings["addresses"]) == ["tcp://127.0.0.1:40000"]
    assert sub.topics == ("/l1b/viirs/", "/l1b/atms/", "/l1b/avhrr/", "/level2/")
    assert config.publish is not None and config.publish.settings["name"] == "dispatcher"
    targets = {t.name: t for t in config.targets}
    assert targets["l1b-0"].destination == ("s3://l1b-bucket/{sensor}/{start_time:%Y/%m/%d}/"
                                            "{platform_name}_{start_time:%Y%m%d_%H%M}_"
                                            "{orbit_number:05d}.{format}")
    assert targets["l1b-0"].publish_topic == "/uploaded/l1b/{platform_name}/"
    assert targets["renamed"].destination == "s3://products/in/{product}/"
    assert dict(targets["renamed"].aliases["product"]) == {"green_snow": "snow-dir"}
    main, archive = (config.endpoints[targets[n].endpoint] for n in ("l1b-0", "l1b-1"))
    assert (main.url, main.region, main.addressing_style) == (
        "http://127.0.0.1:9000", "eu-north-1", "path")
    assert (archive.url, archive.profile, archive.verify) == (
        "https://archive.example.org", "archive", os.fspath(tmp_path / "ca.pem"))


def test_keys_are_never_copied() -> None:
    conversion = convert_dispatch_text(EXAMPLE.read_text())
    assert "my-super-secret-key" not in conversion.text
    assert "my-access-key" not in conversion.text
    assert any("hold key, secret: not copied" in w for w in conversion.warnings)
    # the two S3 destinations differ only in credentials: two endpoints, not one
    config = parse_config(yaml.safe_load(conversion.text))
    assert sorted(config.endpoints) == ["target-s3-example1", "target-s3-example2"]
    assert config.endpoints["target-s3-example2"].profile == "my-aws-profile"
    assert config.endpoints["target-s3-example1"].verify is False


def test_the_dispatchers_publisher_options() -> None:
    conversion = convert_dispatch_text(EXAMPLE.read_text(), publish_port=40001,
                                       publish_nameservers=["ns1", "ns2"])
    publish = parse_config(yaml.safe_load(conversion.text)).publish
    assert publish is not None
    assert dict(publish.settings) == {"name": "dispatcher", "port": 40001,
                                      "nameservers": ["ns1", "ns2"]}


@pytest.mark.parametrize(("raw", "key"), [
    pytest.param(["not", "a", "mapping"], "<root>", id="root"),
    pytest.param({"t": {"host": "s3://b/"}}, "t.dispatch_configs", id="no-dispatch-configs"),
    pytest.param({"t": {"host": "s3://b/", "dispatch_configs": [{"topics": []}]}},
                 "t.dispatch_configs[0].topics", id="no-topics"),
    pytest.param({"t": {"dispatch_configs": [{"topics": ["/a"]}]}}, "t.host", id="no-host"),
    pytest.param({"t": {"host": "ftp://x", "directory": "/", "dispatch_configs": [
        {"topics": ["/a"]}]}}, "<destinations>", id="nothing-s3"),
])
def test_an_unusable_dispatcher_config_names_the_key(raw: object, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        convert_dispatch(raw)
    assert f"  - {key}: got " in str(info.value)


def trollpush(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trollpush", *args], capture_output=True,
                          text=True, timeout=60)


def test_cli_converts_the_example_into_a_config_check_accepts(tmp_path: Path) -> None:
    out = tmp_path / "trollpush.yaml"
    conv = trollpush("convert-dispatch", str(EXAMPLE), "-o", str(out), "-p", "40001")
    assert conv.returncode == 0, conv.stderr
    assert conv.stdout == ""
    assert re.search(r"not converted: target1\.dispatch_configs\[0\]: ftp://", conv.stderr)
    assert "warning: target-s3-example1.dispatch_configs[0]: connection_parameters hold" \
        in conv.stderr
    check = trollpush("check", str(out))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "target target-s3-example1: -> s3://my-fancy-bucket/upload/sdr/" in check.stdout


def test_cli_prints_to_stdout_and_refuses_a_broken_file(tmp_path: Path) -> None:
    res = trollpush("convert-dispatch", str(EXAMPLE))
    assert res.returncode == 0 and res.stdout.startswith("# trollpush config written by")
    broken = tmp_path / "broken.yaml"
    broken.write_text("t: [unclosed\n")
    res = trollpush("convert-dispatch", str(broken))
    assert res.returncode == 1
    assert "<file>: got" in res.stderr and "valid YAML" in res.stderr
    res = trollpush("convert-dispatch", str(tmp_path / "missing.yaml"))
    assert res.returncode == 1 and "a readable UTF-8 file" in res.stderr
