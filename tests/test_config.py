"""Config loading and validation: every problem is reported with its key, value and expectation."""

from __future__ import annotations

import copy
import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from trollpush.config import ConditionSet, Config, load_config, parse_config
from trollpush.errors import ConfigError, ConfigProblem

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYSECRETKEY"
#: the archive endpoint's object block in valid()
OBJ_PATH = ("endpoints", "archive", "object")
OBJ = "endpoints.archive.object"

DELETE = object()


def valid() -> dict[str, Any]:
    """A complete, valid config touching every section (nothing is bound or contacted)."""
    return {
        "subscribe": {"topics": ["/new/file/"], "nameserver": False,
                      "addresses": ["tcp://127.0.0.1:40000"]},
        "requests": {"address": "tcp://127.0.0.1:15556"},
        "jetstream": {"servers": ["nats://127.0.0.1:4222"], "stream": "TROLLPUSH",
                      "subject": "trollpush.requests", "consumer": "trollpush",
                      "ack_wait": 30, "max_deliver": 5, "replicas": 1},
        "s3daemon": {"address": "127.0.0.1:15557", "endpoint": "archive", "line_timeout": 5,
                     "max_connections": 16},
        "publish": {"name": "trollpush-test", "address": "tcp://127.0.0.1:40001",
                    "nameservers": False, "topic": "/uploaded/", "failure_topic": "/failed"},
        "endpoints": {
            "default": {"url": "http://127.0.0.1:9000", "region": "us-east-1",
                        "access_key_id": "AKIDEXAMPLE", "secret_access_key": SECRET,
                        "max_connections": 8, "tries": 2, "attempt_timeout": 20},
            "archive": {"url": "https://s3.archive.example.org", "profile": "archive",
                        "addressing_style": "path",
                        "object": {"storage_class": "STANDARD_IA", "content_type": "auto",
                                   "metadata": {"platform": "{platform_name}",
                                                "start-time": "{start_time:%Y%m%d%H%M}"},
                                   "tags": {"mission": "{platform_name}", "site": "nkp"},
                                   "encryption": "sse-kms", "kms_key_id": "alias/archive",
                                   "acl": "bucket-owner-full-control"}},
        },
        "targets": [{
            "name": "viirs", "topics": ["/new/file/viirs/"],
            "pattern": "{platform_name}_{start_time:%Y%m%d_%H%M}_{orbit:05d}.h5",
            "conditions": {"sensor": "viirs", "except": {"platform_name": ["Suomi-NPP"]}},
            "aliases": {"platform_name": {"NOAA-20": "j01"}},
            "destination": "s3://l1/{platform_name}/{start_time:%Y/%m/%d}/{uid}",
            "publish_topic": "/uploaded/viirs/{platform_name}/",
        }, {
            "name": "archive", "destination": "s3://archive/{start_time:%Y/%m/%d}/",
            "endpoint": "archive",
            "object": {"storage_class": "GLACIER_IR", "if_none_match": True,
                       "metadata": {"start-time": None, "orbit": "{orbit:05d}"},
                       "tags": {"site": None}},
        }],
        "daemon": {"queue_size": 10, "max_in_flight": 4, "shutdown_grace": 5},
    }


def edited(*edits: tuple[tuple[str | int, ...], object]) -> dict[str, Any]:
    """``valid()`` with values set (or removed, with DELETE) at the given key paths."""
    data = valid()
    for path, value in edits:
        node: Any = data
        for part in path[:-1]:
            node = node[part]
        if value is DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = copy.deepcopy(value)
    return data


def renamed(path: tuple[str | int, ...], new: str) -> dict[str, Any]:
    """``valid()`` with the key at ``path`` renamed to ``new`` (a typo)."""
    data = valid()
    node: Any = data
    for part in path[:-1]:
        node = node[part]
    node[new] = node.pop(path[-1])
    return data


def problems_of(data: object) -> list[ConfigProblem]:
    """The problems parse_config reports; AssertionError if it accepts the config."""
    try:
        parse_config(data)
    except ConfigError as err:
        return err.problems
    raise AssertionError("the config was accepted")


def assert_problem(problems: list[ConfigProblem], key: str, shown: str) -> ConfigProblem:
    """There is a problem at exactly ``key`` whose text shows ``shown`` and what was expected."""
    at_key = [p for p in problems if p.key == key]
    assert at_key, f"no problem at {key!r}; got {[str(p) for p in problems]}"
    for p in at_key:
        if shown in str(p) and "expected" in str(p):
            return p
    raise AssertionError(f"no problem at {key!r} shows {shown!r}: {[str(p) for p in at_key]}")


# --- a valid config ------------------------------------------------------------------


def test_valid_config_loads_into_typed_sections() -> None:
    """Every section of a good config is read into its typed value."""
    config = parse_config(valid(), source="test.yaml")
    assert config.source == "test.yaml"
    assert set(config.endpoints) == {"default", "archive"}
    assert config.endpoints["default"].max_connections == 8
    assert config.endpoints["default"].tries == 2
    assert config.endpoints["default"].attempt_timeout == 20.0
    assert config.endpoints["archive"].addressing_style == "path"
    assert [t.name for t in config.targets] == ["viirs", "archive"]
    viirs = config.targets[0]
    assert viirs.endpoint == "default"  # the endpoint named default is the default
    assert viirs.conditions == (ConditionSet({"sensor": ("viirs",)},
                                             {"platform_name": ("Suomi-NPP",)}),)
    assert viirs.aliases == {"platform_name": {"NOAA-20": "j01"}}
    assert config.targets[1].endpoint == "archive"
    assert config.subscribe is not None and config.subscribe.topics == ("/new/file/",)
    assert config.requests is not None and config.requests.address == "tcp://127.0.0.1:15556"
    assert config.publish is not None and config.publish.topic == "/uploaded/"
    assert config.publish.failure_topic == "/failed"
    assert "topic" not in config.publish.settings  # trollpush's own keys are not posttroll's
    assert config.daemon.queue_size == 10
    assert config.daemon.event_loop == "uvloop"
    assert config.default_endpoint() == "default"


def test_valid_config_is_frozen() -> None:
    """Assigning to a loaded config (or its sections and tables) raises."""
    config = parse_config(valid())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.source = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.endpoints["default"].tries = 99  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.targets[0].destination = "s3://elsewhere/"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.endpoints["new"] = config.endpoints["default"]  # type: ignore[index]
    with pytest.raises(TypeError):
        config.targets[0].conditions[0].conditions["sensor"] = ("avhrr",)  # type: ignore[index]


def test_load_config_reads_a_yaml_file(tmp_path: Path) -> None:
    """load_config parses the YAML file and records where it came from."""
    path = tmp_path / "trollpush.yaml"
    path.write_text(yaml.safe_dump(valid()), encoding="utf-8")
    config = load_config(path)
    assert isinstance(config, Config)
    assert config.source == str(path)
    assert [t.name for t in config.targets] == ["viirs", "archive"]


def test_bare_requests_section_means_default_address() -> None:
    """`requests:` with nothing under it enables REQ/REP on the default address."""
    config = parse_config({"requests": None, "endpoints": {"only": {}}})
    assert config.requests is not None
    assert config.requests.address == "tcp://127.0.0.1:15556"
    assert config.default_endpoint() == "only"  # a lone endpoint is the default


def test_summary_never_shows_secrets() -> None:
    """The `check` summary names credentials' kind, never their values."""
    text = parse_config(valid()).summary()
    assert SECRET not in text
    assert "AKIDEXAMPLE" not in text
    assert "explicit keys" in text
    assert SECRET not in repr(parse_config(valid()))


# --- one test per class of config error ------------------------------------------------


BAD_CONFIGS = [
    pytest.param(["endpoints"], "<root>", "['endpoints']", id="root-is-a-list"),
    pytest.param("just text", "<root>", "'just text'", id="root-is-a-string"),
    pytest.param(None, "<root>", "None", id="root-is-empty"),
    pytest.param(renamed(("targets",), "targetz"), "targetz", "'viirs'", id="unknown-top-key"),
    pytest.param(renamed(("targets", 0, "destination"), "destinaton"),
                 "targets[0].destinaton", "'s3://l1/", id="unknown-target-key"),
    pytest.param(renamed(("targets", 0, "destination"), "destinaton"),
                 "targets[0].destination", "None", id="typo-leaves-destination-missing"),
    pytest.param(renamed(("endpoints", "default", "region"), "regoin"),
                 "endpoints.default.regoin", "'us-east-1'", id="unknown-endpoint-key"),
    pytest.param(edited((("endpoints",), {})), "endpoints", "{}", id="no-endpoints"),
    pytest.param(edited((("endpoints",), DELETE)), "endpoints", "None", id="endpoints-missing"),
    pytest.param(edited((("endpoints", "default", "url"), "ftp://s3.example.org")),
                 "endpoints.default.url", "'ftp://s3.example.org'", id="url-not-http"),
    pytest.param(edited((("endpoints", "default", "url"), "s3.example.org:9000")),
                 "endpoints.default.url", "'s3.example.org:9000'", id="url-without-scheme"),
    pytest.param(edited((("endpoints", "default", "max_connections"), "many")),
                 "endpoints.default.max_connections", "'many'", id="max-connections-string"),
    pytest.param(edited((("endpoints", "default", "max_connections"), 2.5)),
                 "endpoints.default.max_connections", "2.5", id="max-connections-float"),
    pytest.param(edited((("endpoints", "default", "max_connections"), -1)),
                 "endpoints.default.max_connections", "-1", id="max-connections-negative"),
    pytest.param(edited((("endpoints", "default", "max_connections"), True)),
                 "endpoints.default.max_connections", "True", id="max-connections-bool"),
    pytest.param(edited((("endpoints", "default", "tries"), 0)),
                 "endpoints.default.tries", "0", id="tries-zero"),
    pytest.param(edited((("endpoints", "default", "attempt_timeout"), "soon")),
                 "endpoints.default.attempt_timeout", "'soon'", id="timeout-not-a-number"),
    pytest.param(edited((("endpoints", "archive", "addressing_style"), "sideways")),
                 "endpoints.archive.addressing_style", "'sideways'", id="addressing-style"),
    pytest.param(edited((("targets", 1, "endpoint"), "nowhere")),
                 "targets[1].endpoint", "'nowhere'", id="target-endpoint-unknown"),
    pytest.param(edited((("targets", 1, "name"), "viirs")),
                 "targets[1].name", "'viirs'", id="duplicate-target-name"),
    pytest.param(edited((("targets", 0, "destination"), DELETE)),
                 "targets[0].destination", "None", id="destination-missing"),
    pytest.param(edited((("targets", 0, "destination"), "https://l1.example.org/{uid}")),
                 "targets[0].destination", "'https://l1.example.org/{uid}'",
                 id="destination-not-s3"),
    pytest.param(edited((("targets", 0, "destination"), "s3:///{uid}")),
                 "targets[0].destination", "'s3:///{uid}'", id="destination-no-bucket"),
    pytest.param(edited((("targets", 0, "destination"), "s3://l1/{start_time:%Y")),
                 "targets[0].destination", "'s3://l1/{start_time:%Y'",
                 id="destination-bad-template"),
    pytest.param(edited((("targets", 0, "pattern"), "{platform_name_{orbit}.h5")),
                 "targets[0].pattern", "'{platform_name_{orbit}.h5'", id="bad-pattern"),
    pytest.param(edited((("targets", 0, "pattern"), "{orbit:d}_{orbit:s}.h5")),
                 "targets[0].pattern", "'{orbit:d}_{orbit:s}.h5'", id="pattern-field-twice"),
    pytest.param(edited((("targets", 0, "topics"), ["/new/file/ viirs/"])),
                 "targets[0].topics[0]", "'/new/file/ viirs/'", id="target-topic-whitespace"),
    pytest.param(edited((("subscribe", "topics"), ["/new\tfile/"])),
                 "subscribe.topics[0]", "'/new\\tfile/'", id="subscribe-topic-whitespace"),
    pytest.param(edited((("publish", "topic"), "/up loaded/")),
                 "publish.topic", "'/up loaded/'", id="publish-topic-whitespace"),
    pytest.param(edited((("targets", 0, "publish_topic"), "/uploaded/{platform_name} x/")),
                 "targets[0].publish_topic", "'/uploaded/{platform_name} x/'",
                 id="publish-topic-template-whitespace"),
    pytest.param(edited((("targets", 0, "topics"), [])),
                 "targets[0].topics", "[]", id="target-topics-empty"),
    pytest.param(edited((("subscribe", "topics"), [])),
                 "subscribe.topics", "[]", id="subscribe-topics-empty"),
    pytest.param(edited((("targets", 0, "conditions", "sensor"), {"is": "viirs"})),
                 "targets[0].conditions.sensor", "{'is': 'viirs'}", id="condition-dict"),
    pytest.param(edited((("targets", 0, "conditions", "sensor"), [])),
                 "targets[0].conditions.sensor", "[]", id="condition-empty-list"),
    pytest.param(edited((("targets", 0, "conditions", "sensor"), ["viirs", [["atms"]]])),
                 "targets[0].conditions.sensor[1][0]", "['atms']", id="condition-nested-twice"),
    pytest.param(edited((("targets", 0, "conditions", "sensor"), ["viirs", []])),
                 "targets[0].conditions.sensor[1]", "[]", id="condition-nested-empty"),
    pytest.param(edited((("targets", 0, "conditions", "except"), {})),
                 "targets[0].conditions.except", "{}", id="except-empty"),
    pytest.param(edited((("targets", 0, "conditions", "except"), ["Suomi-NPP"])),
                 "targets[0].conditions.except", "['Suomi-NPP']", id="except-not-mapping"),
    pytest.param(edited((("targets", 0, "conditions", "except", "orbit"), {"lt": 5})),
                 "targets[0].conditions.except.orbit", "{'lt': 5}", id="except-value-dict"),
    pytest.param(edited((("targets", 0, "conditions"), "sensor")),
                 "targets[0].conditions", "'sensor'", id="conditions-not-mapping"),
    pytest.param(edited((("targets", 0, "conditions"), ["sensor"])),
                 "targets[0].conditions[0]", "'sensor'", id="condition-set-not-mapping"),
    pytest.param(edited((("targets", 0, "conditions"), [])),
                 "targets[0].conditions", "[]", id="condition-sets-empty"),
    pytest.param(edited((("targets", 0, "conditions"), [{"sensor": "viirs"}, {}])),
                 "targets[0].conditions[1]", "{}", id="condition-set-empty"),
    pytest.param(edited((("targets", 0, "conditions"), [{"except": {"orbit": 1}}, None])),
                 "targets[0].conditions[1]", "None", id="condition-set-none"),
    pytest.param(edited((("targets", 0, "conditions"),
                         [{"sensor": "viirs"}, {"area": "euron1", "except": []}])),
                 "targets[0].conditions[1].except", "[]", id="condition-set-except-list"),
    pytest.param(edited((("targets", 0, "conditions"),
                         [{"except": {"orbit": 1, "except": {"orbit": 2}}}])),
                 "targets[0].conditions[0].except.except", "{'orbit': 2}",
                 id="except-in-except"),
    pytest.param(edited((("targets", 0, "conditions"), [{"daylight": "<abc"}])),
                 "targets[0].conditions[0].daylight", "'<abc'", id="comparison-no-number"),
    pytest.param(edited((("targets", 0, "conditions"), [{"daylight": "<"}])),
                 "targets[0].conditions[0].daylight", "'<'", id="comparison-operator-alone"),
    pytest.param(edited((("targets", 0, "conditions", "daylight"), "=30")),
                 "targets[0].conditions.daylight", "'=30'", id="comparison-single-equals"),
    pytest.param(edited((("targets", 0, "conditions", "daylight"), "=<30")),
                 "targets[0].conditions.daylight", "'=<30'", id="comparison-operator-twisted"),
    pytest.param(edited((("targets", 0, "conditions", "daylight"), "!30")),
                 "targets[0].conditions.daylight", "'!30'", id="comparison-bang-alone"),
    pytest.param(edited((("targets", 0, "conditions", "daylight"), " <30")),
                 "targets[0].conditions.daylight", "' <30'", id="comparison-leading-blank"),
    pytest.param(edited((("targets", 0, "conditions", "daylight"), "<30<40")),
                 "targets[0].conditions.daylight", "'<30<40'", id="comparison-chained"),
    pytest.param(edited((("targets", 0, "conditions", "daylight"), "<0x1e")),
                 "targets[0].conditions.daylight", "'<0x1e'", id="comparison-hex"),
    pytest.param(edited((("targets", 0, "conditions", "daylight"), "<30 and True")),
                 "targets[0].conditions.daylight", "'<30 and True'", id="comparison-code"),
    pytest.param(edited((("targets", 0, "conditions", "daylight"), ["<30", ">80"])),
                 "targets[0].conditions.daylight[0]", "'<30'", id="comparison-in-a-list"),
    pytest.param(edited((("targets", 0, "conditions", "except", "daylight"), [[">80"]])),
                 "targets[0].conditions.except.daylight[0][0]", "'>80'",
                 id="comparison-in-a-nested-list"),
    pytest.param(edited((("targets", 0, "aliases"), ["NOAA-20", "j01"])),
                 "targets[0].aliases", "['NOAA-20', 'j01']", id="aliases-not-mapping"),
    pytest.param(edited((("targets", 0, "aliases", "platform_name"), "j01")),
                 "targets[0].aliases.platform_name", "'j01'", id="alias-table-not-mapping"),
    pytest.param(edited((("targets", 0, "aliases", "platform_name", "NOAA-20"), ["j01"])),
                 "targets[0].aliases.platform_name.NOAA-20", "['j01']", id="alias-not-string"),
    pytest.param(edited((("targets",), {"name": "viirs"})),
                 "targets", "{'name': 'viirs'}", id="targets-not-list"),
    pytest.param(edited((("targets", 1), "s3://archive/")),
                 "targets[1]", "'s3://archive/'", id="target-not-mapping"),
    pytest.param(edited((("subscribe", "addresses"), DELETE)),
                 "subscribe.addresses", "None", id="subscribe-no-nameserver-no-addresses"),
    pytest.param(edited((("subscribe", "addresses"), [])),
                 "subscribe.addresses", "[]", id="subscribe-addresses-empty"),
    pytest.param(edited((("subscribe", "addresses"), ["127.0.0.1:40000"])),
                 "subscribe.addresses[0]", "'127.0.0.1:40000'", id="subscribe-bad-address"),
    pytest.param(edited((("subscribe", "nameserver"), 42)),
                 "subscribe.nameserver", "42", id="subscribe-bad-nameserver"),
    pytest.param(renamed(("subscribe", "topics"), "topic"),
                 "subscribe.topic", "['/new/file/']", id="subscribe-unknown-key"),
    pytest.param(edited((("subscribe",), ["/new/file/"])),
                 "subscribe", "['/new/file/']", id="subscribe-not-mapping"),
    pytest.param(edited((("publish", "name"), DELETE)),
                 "publish.name", "None", id="publish-without-name"),
    pytest.param(edited((("publish", "name"), "")),
                 "publish.name", "''", id="publish-empty-name"),
    pytest.param(edited((("publish", "address"), DELETE)),
                 "publish.address", "None", id="publish-no-nameservers-no-address"),
    pytest.param(edited((("publish", "address"), "localhost")),
                 "publish.address", "'localhost'", id="publish-bad-address"),
    pytest.param(edited((("publish", "nameservers"), "localhost")),
                 "publish.nameservers", "'localhost'", id="publish-nameservers-not-list"),
    pytest.param(renamed(("publish", "failure_topic"), "failure_topics"),
                 "publish.failure_topics", "'/failed'", id="publish-unknown-key"),
    pytest.param(edited((("requests", "address"), "127.0.0.1:15556")),
                 "requests.address", "'127.0.0.1:15556'", id="requests-bad-address"),
    pytest.param(edited((("requests", "address"), "tcp://127.0.0.1:port")),
                 "requests.address", "'tcp://127.0.0.1:port'", id="requests-address-no-port"),
    pytest.param(edited((("requests", "adress"), "tcp://127.0.0.1:1")),
                 "requests.adress", "'tcp://127.0.0.1:1'", id="requests-unknown-key"),
    pytest.param(edited((("s3daemon", "address"), "tcp://127.0.0.1:15557")),
                 "s3daemon.address", "'tcp://127.0.0.1:15557'", id="s3daemon-address-scheme"),
    pytest.param(edited((("s3daemon", "address"), "localhost")),
                 "s3daemon.address", "'localhost'", id="s3daemon-address-no-port"),
    pytest.param(edited((("s3daemon", "max_connections"), 0)),
                 "s3daemon.max_connections", "0", id="s3daemon-max-connections-zero"),
    pytest.param(edited((("s3daemon", "line_timeout"), "soon")),
                 "s3daemon.line_timeout", "'soon'", id="s3daemon-line-timeout-string"),
    pytest.param(renamed(("s3daemon", "endpoint"), "endpiont"),
                 "s3daemon.endpiont", "'archive'", id="s3daemon-unknown-key"),
    pytest.param(edited((("jetstream", "servers"), ["http://127.0.0.1:4222"])),
                 "jetstream.servers[0]", "'http://127.0.0.1:4222'", id="jetstream-server-scheme"),
    pytest.param(edited((("jetstream", "servers"), [])),
                 "jetstream.servers", "[]", id="jetstream-no-servers"),
    pytest.param(edited((("jetstream", "stream"), "TROLL.PUSH")),
                 "jetstream.stream", "'TROLL.PUSH'", id="jetstream-stream-dot"),
    pytest.param(edited((("jetstream", "consumer"), "a b")),
                 "jetstream.consumer", "'a b'", id="jetstream-consumer-blank"),
    pytest.param(edited((("jetstream", "subject"), "trollpush.>")),
                 "jetstream.subject", "'trollpush.>'", id="jetstream-subject-wildcard"),
    pytest.param(edited((("jetstream", "ack_wait"), 0.5)),
                 "jetstream.ack_wait", "0.5", id="jetstream-ack-wait-small"),
    pytest.param(edited((("jetstream", "max_deliver"), 0)),
                 "jetstream.max_deliver", "0", id="jetstream-max-deliver-zero"),
    pytest.param(edited((("jetstream", "replicas"), 7)),
                 "jetstream.replicas", "7", id="jetstream-replicas-over-five"),
    pytest.param(edited((("jetstream", "bridge"), "yes")),
                 "jetstream.bridge", "'yes'", id="jetstream-bridge-not-a-boolean"),
    pytest.param(edited((("subscribe",), DELETE), (("requests",), DELETE),
                        (("s3daemon",), DELETE), (("jetstream",), DELETE)),
                 "subscribe/requests", "None", id="no-inputs"),
    pytest.param(edited((("subscribe",), DELETE), (("targets",), DELETE)), "targets", "None",
                 id="jetstream-no-targets"),
    pytest.param(edited((("targets",), DELETE)), "targets", "None", id="subscribe-no-targets"),
    pytest.param(edited((("targets",), [])), "targets", "[]", id="subscribe-empty-targets"),
    pytest.param(edited((("daemon", "queue_size"), 0)),
                 "daemon.queue_size", "0", id="queue-size-zero"),
    pytest.param(edited((("daemon", "queue_size"), "big")),
                 "daemon.queue_size", "'big'", id="queue-size-string"),
    pytest.param(edited((("daemon", "queue_size"), 10.5)),
                 "daemon.queue_size", "10.5", id="queue-size-float"),
    pytest.param(edited((("daemon", "shutdown_grace"), -1)),
                 "daemon.shutdown_grace", "-1", id="shutdown-grace-negative"),
    pytest.param(edited((("daemon", "event_loop"), "trio")),
                 "daemon.event_loop", "'trio'", id="event-loop-unknown"),
    pytest.param(edited((("daemon", "workers"), 4)),
                 "daemon.workers", "4", id="daemon-unknown-key"),
    # object options (the archive endpoint's block, and the archive target's over it)
    pytest.param(renamed(("endpoints", "archive", "object", "acl"), "acls"),
                 f"{OBJ}.acls", "'bucket-owner-full-control'", id="object-unknown-key"),
    pytest.param(edited((("endpoints", "archive", "object"), ["STANDARD"])),
                 OBJ, "['STANDARD']", id="object-not-mapping"),
    pytest.param(edited(((*OBJ_PATH, "storage_class"), "standard_ia")),
                 f"{OBJ}.storage_class", "'standard_ia'", id="storage-class-lowercase"),
    pytest.param(edited(((*OBJ_PATH, "content_type"), "hdf5")),
                 f"{OBJ}.content_type", "'hdf5'", id="content-type-no-subtype"),
    pytest.param(edited(((*OBJ_PATH, "cache_control"), "max-age=60\r\nX-Evil: 1")),
                 f"{OBJ}.cache_control", "'max-age=60\\r\\nX-Evil: 1'",
                 id="cache-control-crlf"),
    pytest.param(edited(((*OBJ_PATH, "acl"), "everyone")),
                 f"{OBJ}.acl", "'everyone'", id="acl-not-canned"),
    pytest.param(edited(((*OBJ_PATH, "encryption"), "aes")),
                 f"{OBJ}.encryption", "'aes'", id="encryption-unknown"),
    pytest.param(edited(((*OBJ_PATH, "encryption"), "sse-s3")),
                 f"{OBJ}.kms_key_id", "'alias/archive'", id="kms-key-without-sse-kms"),
    pytest.param(edited(((*OBJ_PATH, "encryption"), "sse-c"), ((*OBJ_PATH, "kms_key_id"),
                                                              DELETE)),
                 f"{OBJ}.sse_c_key_file", "None", id="sse-c-without-key-file"),
    pytest.param(edited(((*OBJ_PATH, "sse_c_key_file"), "/etc/trollpush/key")),
                 f"{OBJ}.sse_c_key_file", "'/etc/trollpush/key'",
                 id="key-file-without-sse-c"),
    pytest.param(edited(((*OBJ_PATH, "encryption"), "sse-c"), ((*OBJ_PATH, "kms_key_id"),
                                                              DELETE),
                        ((*OBJ_PATH, "sse_c_key_file"), "/nonexistent/sse-c.key")),
                 f"{OBJ}.sse_c_key_file", "'/nonexistent/sse-c.key'", id="key-file-missing"),
    pytest.param(edited(((*OBJ_PATH, "if_none_match"), "yes")),
                 f"{OBJ}.if_none_match", "'yes'", id="if-none-match-not-bool"),
    pytest.param(edited(((*OBJ_PATH, "metadata", "x amz"), "1")),
                 f"{OBJ}.metadata.x amz", "'x amz'", id="metadata-key-not-token"),
    pytest.param(edited(((*OBJ_PATH, "metadata", "orbit"), 5)),
                 f"{OBJ}.metadata.orbit", "5", id="metadata-value-number"),
    pytest.param(edited(((*OBJ_PATH, "metadata", "site"), "Norrköping")),
                 f"{OBJ}.metadata.site", "'Norrköping'", id="metadata-value-not-ascii"),
    pytest.param(edited(((*OBJ_PATH, "metadata", "Platform"), "x")),
                 f"{OBJ}.metadata.Platform", "'Platform'", id="metadata-keys-equal-but-case"),
    pytest.param(edited(((*OBJ_PATH, "metadata", "notes"), "n" * 2100)),
                 f"{OBJ}.metadata", "bytes", id="metadata-over-2kib"),
    pytest.param(edited(((*OBJ_PATH, "metadata", "day"), "{start_time:%Y")),
                 f"{OBJ}.metadata.day", "'{start_time:%Y'", id="metadata-bad-template"),
    pytest.param(edited(((*OBJ_PATH, "tags", "aws:created"), "x")),
                 f"{OBJ}.tags.aws:created", "'aws:created'", id="tag-key-aws"),
    pytest.param(edited(((*OBJ_PATH, "tags", "k" * 129), "x")),
                 f"{OBJ}.tags.{'k' * 129}", "'kkk", id="tag-key-too-long"),
    pytest.param(edited(((*OBJ_PATH, "tags", "note"), "v" * 257)),
                 f"{OBJ}.tags.note", "'vvv", id="tag-value-too-long"),
    pytest.param(edited(((*OBJ_PATH, "tags", "note"), "a;b")),
                 f"{OBJ}.tags.note", "'a;b'", id="tag-value-bad-character"),
    pytest.param(edited((("targets", 1, "object", "tags"),
                         {f"t{i}": "x" for i in range(9)})),
                 "targets[1].object.tags", "11 tags", id="tags-over-ten-once-merged"),
    pytest.param(edited((("targets", 1, "object", "metadata", "PLATFORM"), "x")),
                 "targets[1].object.metadata.PLATFORM", "'PLATFORM'",
                 id="target-metadata-key-equal-but-case"),
    pytest.param(edited((("targets", 1, "object", "kms_key_id"), "alias/other")),
                 "targets[1].object.kms_key_id", "'alias/other'",
                 id="target-kms-key-without-its-encryption"),
]


@pytest.mark.parametrize(("data", "key", "shown"), BAD_CONFIGS)
def test_config_error_names_key_value_and_expectation(data: object, key: str, shown: str) -> None:
    """Each class of mistake gives a problem at the right key showing the value and the
    expectation, and the ConfigError text lists it."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="bad.yaml")
    problem = assert_problem(info.value.problems, key, shown)
    assert str(problem) in str(info.value)
    assert str(info.value).startswith("bad.yaml: ")


def test_yaml_syntax_error_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not YAML names the file and says valid YAML was expected."""
    path = tmp_path / "broken.yaml"
    path.write_text("endpoints: {default: {url: http://x\ntargets: [\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problem = assert_problem(info.value.problems, "<yaml>", str(path))
    assert "valid YAML" in str(problem)
    assert info.value.source == str(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A config path that does not exist names the path and says a readable file was expected."""
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert_problem(info.value.problems, "<file>", str(path))


def test_directory_is_a_config_error(tmp_path: Path) -> None:
    """A directory given as the config is reported, not a traceback."""
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert_problem(info.value.problems, "<file>", str(tmp_path))


def test_empty_file_is_a_config_error(tmp_path: Path) -> None:
    """An empty file is a root that is not a mapping."""
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert_problem(info.value.problems, "<root>", "None")


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    """A config saved as Latin-1 is reported as a ConfigError, not a traceback."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes("# Norrk\xf6ping\nrequests:\nendpoints: {default: {}}\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert_problem(info.value.problems, "<file>", str(path))


# --- secrets ---------------------------------------------------------------------------


def test_access_key_without_secret_is_reported() -> None:
    """access_key_id alone is an error at secret_access_key."""
    problems = problems_of(edited((("endpoints", "default", "secret_access_key"), DELETE)))
    problem = assert_problem(problems, "endpoints.default.secret_access_key", "expected")
    assert "access_key_id and secret_access_key" in str(problem)


def test_secret_without_access_key_is_reported_without_the_secret() -> None:
    """secret_access_key alone is an error whose text never shows the secret."""
    with pytest.raises(ConfigError) as info:
        parse_config(edited((("endpoints", "default", "access_key_id"), DELETE)))
    assert_problem(info.value.problems, "endpoints.default.secret_access_key", "<hidden>")
    assert SECRET not in str(info.value)
    assert all(SECRET not in str(p) for p in info.value.problems)


@pytest.mark.parametrize(("data", "key"), [
    pytest.param(renamed(("endpoints", "default", "secret_access_key"), "secret_acess_key"),
                 "endpoints.default.secret_acess_key", id="misspelt-secret-key"),
    pytest.param(edited((("endpoints", "default", "secret_access_key"), 918273645)),
                 "endpoints.default.secret_access_key", id="secret-not-a-string"),
    pytest.param(edited((("endpoints", "default", "session_token"), ["tok-918273645"])),
                 "endpoints.default.session_token", id="token-not-a-string"),
])
def test_problems_about_secret_keys_hide_the_value(data: object, key: str) -> None:
    """A problem at a key that holds a secret (even a misspelt one) shows <hidden>, not the
    value, and the error text never contains it."""
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert_problem(info.value.problems, key, "<hidden>")
    text = str(info.value)
    assert SECRET not in text and "918273645" not in text


# --- config gaps that look like bugs ---------------------------------------------------


def test_bare_except_block_is_reported() -> None:
    """`except:` with no entries (as written in YAML) is an empty except block."""
    data = yaml.safe_load("""
requests:
endpoints: {default: {}}
targets:
  - destination: s3://l1/
    conditions:
      sensor: viirs
      except:
""")
    assert_problem(problems_of(data), "targets[0].conditions.except", "None")


def test_each_problem_is_reported_once() -> None:
    """An empty subscribe.topics gives one problem, not two identical ones."""
    problems = problems_of(edited((("subscribe", "topics"), [])))
    texts = [str(p) for p in problems]
    assert len(texts) == len(set(texts)), texts


@pytest.mark.parametrize("destination", ["s3://l1/{}", "s3://l1/{0}/{uid}"])
def test_positional_template_field_is_reported(destination: str) -> None:
    """A destination with a positional (unnamed) field is a config error."""
    problems = problems_of(edited((("targets", 0, "destination"), destination)))
    assert_problem(problems, "targets[0].destination", repr(destination))


def test_nan_timeout_is_reported() -> None:
    """`.nan` is not a usable timeout."""
    data = yaml.safe_load("requests:\nendpoints: {default: {attempt_timeout: .nan}}\n")
    assert_problem(problems_of(data), "endpoints.default.attempt_timeout", "nan")


# --- all problems at once ---------------------------------------------------------------


def test_every_problem_is_listed_not_just_the_first() -> None:
    """A config with several independent mistakes reports all of them in one ConfigError."""
    data = edited(
        (("endpoints", "default", "url"), "ftp://s3.example.org"),
        (("endpoints", "default", "tries"), 0),
        (("targets", 0, "destination"), "https://l1/{uid}"),
        (("targets", 1, "endpoint"), "nowhere"),
        (("publish", "name"), DELETE),
        (("requests", "address"), "nowhere"),
        (("daemon", "queue_size"), -5),
    )
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="several.yaml")
    err = info.value
    keys = {p.key for p in err.problems}
    assert keys >= {"endpoints.default.url", "endpoints.default.tries", "targets[0].destination",
                    "targets[1].endpoint", "publish.name", "requests.address",
                    "daemon.queue_size"}
    text = str(err)
    assert text.startswith(f"several.yaml: {len(err.problems)} problem(s)")
    for p in err.problems:
        assert f"  - {p}" in text


# --- trollpush check -----------------------------------------------------------------------


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trollpush", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


def test_check_cli_prints_summary_for_a_good_config(tmp_path: Path) -> None:
    """`trollpush check` exits 0 with a summary of inputs, endpoints and targets, and never
    prints a secret."""
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(valid()), encoding="utf-8")
    proc = run_cli("check", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"config {path}: OK" in proc.stdout
    assert "endpoint default:" in proc.stdout
    assert "target viirs:" in proc.stdout and "target archive:" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr


def test_check_cli_lists_every_problem_of_a_broken_config(tmp_path: Path) -> None:
    """`trollpush check` exits 1 and lists every problem on stderr (without the secret)."""
    data = edited(
        (("endpoints", "default", "access_key_id"), DELETE),
        (("endpoints", "default", "max_connections"), "many"),
        (("targets", 0, "pattern"), "{platform_name_{orbit}.h5"),
        (("targets", 1, "name"), "viirs"),
    )
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    proc = run_cli("check", str(path), cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert f"{len(info.value.problems)} problem(s)" in proc.stderr
    for p in info.value.problems:
        assert str(p) in proc.stderr
    for key in ("endpoints.default.secret_access_key", "endpoints.default.max_connections",
                "targets[0].pattern", "targets[1].name"):
        assert key in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_cli_reports_a_missing_file(tmp_path: Path) -> None:
    """`trollpush check` on a path that does not exist exits 1 with the path on stderr."""
    proc = run_cli("check", str(tmp_path / "absent.yaml"), cwd=tmp_path)
    assert proc.returncode == 1
    assert "absent.yaml" in proc.stderr and "expected a readable file" in proc.stderr


@pytest.mark.parametrize(("subscribe", "publish", "bad"), [
    pytest.param({"topics": ["/"], "nameserver": False, "addresses": ["tcp://127.0.0.1:40001"]},
                 {"name": "tp", "address": "tcp://127.0.0.1:40001", "nameservers": False},
                 True, id="own-address-catch-all"),
    pytest.param({"topics": ["/trollpush/"], "nameserver": "localhost"},
                 {"name": "tp", "nameservers": ["localhost"]}, True, id="nameserver-all-services"),
    pytest.param({"topics": ["/uploaded/j01/"], "nameserver": False,
                  "addresses": ["tcp://127.0.0.1:40001"]},
                 {"name": "tp", "address": "tcp://127.0.0.1:40001", "nameservers": False},
                 True, id="templated-publish-topic"),
    pytest.param({"topics": ["/"], "nameserver": False, "addresses": ["tcp://127.0.0.1:40000"]},
                 {"name": "tp", "address": "tcp://127.0.0.1:40001", "nameservers": False},
                 False, id="other-publisher"),
    pytest.param({"topics": ["/"], "nameserver": "localhost", "services": ["producer"]},
                 {"name": "tp", "nameservers": ["localhost"]}, False, id="other-service"),
])
def test_a_daemon_that_would_hear_its_own_announcements_is_refused(
        subscribe: dict[str, object], publish: dict[str, object], bad: bool) -> None:
    """Subscribing to our own publisher on a topic that matches our output would loop."""
    data = {"subscribe": subscribe, "publish": {**publish, "topic": "/trollpush/uploaded/"},
            "endpoints": {"default": {}},
            "targets": [{"destination": "s3://b/", "publish_topic": "/uploaded/{platform}/"}]}
    if not bad:
        parse_config(data)
        return
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    [problem] = info.value.problems
    assert problem.key == "subscribe.topics[0]" and "its own publisher" in str(problem)


# --- message texts ------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "value", "expected"), [
    (("endpoints", "default", "multipart_threshold"), "1MiB",
     "a size >= 5MiB: a number of bytes or a string with a unit like 64MiB"),
    (("endpoints", "default", "multipart_chunksize"), 1000,
     "a size >= 5MiB: a number of bytes or a string with a unit like 16MiB"),
    (("endpoints", "default", "min_throughput"), 0.5,
     "a rate >= 1B/s: a number of bytes per second or a string with a unit like 1MiB/s"),
    (("endpoints", "default", "bandwidth_limit"), "1kbit",
     "a rate >= 8kbit: a number of bits per second or a string with a unit like 100Mbit"),
    (("daemon", "max_request_bytes"), 100,
     "a size >= 1KiB: a number of bytes or a string with a unit like 1MiB"),
    (("endpoints", "default", "tries"), 0, "an integer >= 1"),
    (("endpoints", "default", "max_parallel"), "many", "an integer >= 1"),
    (("endpoints", "default", "timeout_factor"), 0.5, "a finite number >= 1"),
    (("daemon", "max_age"), float("inf"), "a finite number >= 1"),
    (("journal", "keep_landed_days"), -1, "a finite number >= 0"),
], ids=["threshold", "chunksize", "min_throughput", "bandwidth_limit", "max_request_bytes",
        "tries", "max_parallel-type", "timeout_factor", "max_age-inf", "keep_landed_days"])
def test_limits_are_shown_in_the_unit_the_key_is_written_in(
        path: tuple[str, ...], value: object, expected: str) -> None:
    """A size's minimum reads 5MiB (not 5.24288e+06), a rate's 8kbit, an integer's has no
    stray space: the exact text of each problem."""
    data = valid() if path[0] != "journal" else {**valid(), "journal": {}}
    node: Any = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    key = ".".join(path)
    texts = [str(p) for p in problems_of(data) if p.key == key]
    assert texts == [f"{key}: got {value!r}, expected {expected}"]


# --- docs/config.md against the validator ------------------------------------------------

CONFIG_MD = Path(__file__).resolve().parents[1] / "docs" / "config.md"
NUMBERS = {"five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
           "eleven": 11}


def known_keys(section: str | None) -> set[str]:
    """The keys the validator accepts in ``section`` (None: the top level), as it lists them
    for an unknown key."""
    data: dict[str, Any] = {**valid(), "journal": {}}
    if section is None:
        data["no_such_key"] = 1
    elif section == "endpoints":
        data["endpoints"]["default"]["no_such_key"] = 1
    elif section == "targets":
        data["targets"][0]["no_such_key"] = 1
    elif section == "object":  # an endpoint's or a target's block
        data["endpoints"]["default"]["object"] = {"no_such_key": 1}
    elif section == "watch":
        data["watch"] = [{"path": "/srv/incoming", "subject": "/watch/", "no_such_key": 1}]
    else:  # a section the complete config leaves out (http) too
        data[section] = {**(data.get(section) or {}), "no_such_key": 1}
    (problem,) = [p for p in problems_of(data) if p.key.endswith("no_such_key")]
    listed = problem.expected.removeprefix("no such key (known: ").removesuffix(")")
    return set(listed.split(", "))


def documented_keys() -> dict[str | None, set[str]]:
    """The keys in the first column of each section's tables in docs/config.md."""
    out: dict[str | None, set[str]] = {None: set()}
    section: str | None = None
    for line in CONFIG_MD.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^## `(\w+)`", line):
            section = m.group(1)
            out[section] = set()
        elif line.startswith("## "):
            section = "-"  # a section about no keys
        elif line.startswith("| ") and not line.startswith("| Key") and section != "-":
            first = line.split("|")[1]
            out.setdefault(section, set()).update(re.findall(r"`(\w+)`", first))
    out.pop("-", None)
    return out


def test_config_md_lists_every_section_and_key_the_validator_knows() -> None:
    """The reference names the sections and keys that exist, and only those."""
    documented = documented_keys()
    assert documented.pop(None) == known_keys(None)
    text = CONFIG_MD.read_text(encoding="utf-8")
    m = re.search(r"It has (\w+) top-level sections", text)
    assert m is not None and NUMBERS[m.group(1)] == len(known_keys(None))
    for section, keys in documented.items():
        assert keys == known_keys(section), section


def test_config_md_validation_example_is_what_check_prints() -> None:
    """The example output in docs/config.md is the validator's real output, word for word."""
    text = CONFIG_MD.read_text(encoding="utf-8")
    m = re.search(r"```\n\$ trollpush check bad\.yaml\n(.*?)\n```", text, re.S)
    assert m is not None
    data = yaml.safe_load("""
requests:
publish: {name: trollpush, nameservers: false}
endpoints:
  default: {url: s3.example.org, secret_access_key: hush, tries: 0}
targets:
  - pattern: "{platform_name_{orbit:05d}.h5"
    destination: "l1-data/{platform_name}/"
    conditions: {sensor: [viirs, {a: 1}]}
""")
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="bad.yaml")
    assert str(info.value) == m.group(1)


@pytest.mark.parametrize(("subscribe", "publish"), [
    pytest.param({"nameserver": False, "addresses": 2.5}, {"nameservers": False},
                 id="addresses-a-number"),
    pytest.param({"nameserver": False, "addresses": "ipc:///tmp/x.sock"},
                 {"nameservers": False, "address": 0}, id="addresses-a-string"),
    pytest.param({"nameserver": "localhost", "services": 5, "topics": ["/uploaded/"]},
                 {"nameservers": ["localhost"]}, id="services-a-number-counts-as-all"),
])
def test_odd_inputs_to_the_loop_check_are_problems_not_tracebacks(
        subscribe: dict[str, object], publish: dict[str, object]) -> None:
    """The check for a daemon hearing itself reads the values as they are, even wrong ones:
    a bad `addresses` is a problem in the list, never a TypeError."""
    data = valid()
    data["subscribe"].update(subscribe)
    data["publish"].update(publish)
    with pytest.raises(ConfigError):
        parse_config(data)
