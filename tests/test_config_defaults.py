"""One source of defaults: config.defaults, read alike by the dataclasses, the validator,
the JSON Schema, the client and the CLI."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from trollpush import client
from trollpush.cli import build_parser
from trollpush.config import (
    REQUEST_ADDRESS,
    DaemonConfig,
    EndpointConfig,
    JetStreamConfig,
    JournalConfig,
    ObjectConfig,
    PublishConfig,
    RequestsConfig,
    S3DaemonConfig,
    TargetConfig,
    parse_config,
)
from trollpush.config.defaults import (
    DAEMON,
    ENDPOINT,
    JETSTREAM,
    JOURNAL,
    OBJECT,
    PUBLISH,
    REQUESTS,
    S3DAEMON,
    TARGET,
    Key,
)
from trollpush.config.validator import PLAIN_KINDS

ROOT = Path(__file__).resolve().parents[1]
TABLES: list[tuple[type[Any], dict[str, Key]]] = [
    (EndpointConfig, dict(ENDPOINT)), (TargetConfig, dict(TARGET)), (DaemonConfig, dict(DAEMON)),
    (JournalConfig, dict(JOURNAL)), (RequestsConfig, dict(REQUESTS)),
    (S3DaemonConfig, dict(S3DAEMON)), (ObjectConfig, dict(OBJECT)),
    (JetStreamConfig, dict(JETSTREAM)),
    (PublishConfig, {k: PUBLISH[k] for k in ("topic", "failure_topic")})]
#: fields whose default in code means something else than the key left out of a file
DIFFERENT_ON_PURPOSE = {
    "JournalConfig.path": "None keeps the journal in memory; a file's default is the "
                          "user's state directory",
    "EndpointConfig.object": "no block: every object option at its default (the OBJECT "
                             "table, checked as ObjectConfig)",
    "TargetConfig.object": "no block: the endpoint's (merged at load)",
}


@pytest.mark.parametrize(("cls", "table"), TABLES, ids=lambda x: getattr(x, "__name__", ""))
def test_dataclass_defaults_are_the_tables(cls: type[Any], table: dict[str, Key]) -> None:
    """Every field with a default has the default of its key in config.defaults."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, key in table.items():
        if name not in fields:  # read into another field (conditions -> excepts too)
            continue
        field = fields[name]
        if f"{cls.__name__}.{name}" in DIFFERENT_ON_PURPOSE or \
                field.default is dataclasses.MISSING:  # required, or a factory's {} (absent)
            continue
        if key.default is None:  # absent: no value, or an empty one
            assert field.default in (None, ()), f"{cls.__name__}.{name}"
        else:
            assert field.default == key.default, f"{cls.__name__}.{name}"


@pytest.mark.parametrize(("cls", "table"), TABLES, ids=lambda x: getattr(x, "__name__", ""))
def test_every_field_is_a_documented_key(cls: type[Any], table: dict[str, Key]) -> None:
    """The dataclasses hold nothing that no key sets (but what the validator derives)."""
    # the endpoint's name, except:, posttroll's keys, the SSE-C key read from its file
    derived = {"name", "excepts", "settings", "sse_c"}
    assert {f.name for f in dataclasses.fields(cls)} - derived <= set(table)


def test_a_config_that_sets_nothing_gets_exactly_the_documented_defaults() -> None:
    """Every plain key left out reads as its default in config.defaults."""
    config = parse_config({"requests": None, "s3daemon": None, "jetstream": None,
                           "publish": {"name": "tp"},
                           "endpoints": {"only": None},
                           "targets": [{"destination": "s3://b/"}]})
    sections: list[tuple[object, dict[str, Key]]] = [
        (config.endpoints["only"], dict(ENDPOINT)), (config.targets[0], dict(TARGET)),
        (config.daemon, dict(DAEMON)), (config.journal, dict(JOURNAL)),
        (config.requests, dict(REQUESTS)), (config.s3daemon, dict(S3DAEMON)),
        (config.publish, dict(PUBLISH)), (config.jetstream, dict(JETSTREAM))]
    checked = 0
    for section, table in sections:
        for name, key in table.items():
            if key.kind in PLAIN_KINDS and key.default is not None and hasattr(section, name):
                assert getattr(section, name) == key.default, name
                checked += 1
    assert checked >= 25
    assert config.requests is not None and config.requests.address == REQUEST_ADDRESS
    assert config.targets[0].name == "target0"
    assert config.jetstream is not None
    assert config.jetstream.servers == JETSTREAM["servers"].default


def test_the_request_address_is_written_once() -> None:
    """The daemon's default, `trollpush send --server` and the client's default agree,
    because they are the same constant; no other module spells it out."""
    assert client.DEFAULT_SERVER == REQUEST_ADDRESS
    args = build_parser().parse_args(["send", "FILE", "s3://bucket/key"])
    assert args.server == REQUEST_ADDRESS
    spelt = [p.relative_to(ROOT) for p in (ROOT / "trollpush").rglob("*.py")
             if REQUEST_ADDRESS in p.read_text(encoding="utf-8")]
    assert spelt == [Path("trollpush/config/defaults.py")]
