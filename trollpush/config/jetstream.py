"""The ``jetstream:`` section: NATS servers, the stream, its subject and the shared
consumer, validated whole at load (a NATS name or subject with a blank, a dot or a
wildcard would be refused by the server only at start)."""

from __future__ import annotations

import re

from .defaults import JETSTREAM, NATS_NAME_PATTERN, NATS_SUBJECT_PATTERN, NATS_URL_PATTERN
from .model import JetStreamConfig
from .validator import Validator

_NATS_URL_RE = re.compile(NATS_URL_PATTERN)
_NATS_NAME_RE = re.compile(NATS_NAME_PATTERN)
_NATS_SUBJECT_RE = re.compile(NATS_SUBJECT_PATTERN)


def read_jetstream(v: Validator, raw: object, *, present: bool) -> JetStreamConfig | None:
    """``jetstream:`` with nothing under it: on with the defaults."""
    data = v.mapping(raw, "jetstream") if raw is not None else ({} if present else None)
    if data is None:
        return None
    v.no_unknown(data, "jetstream.", JETSTREAM)
    servers = _nats_servers(v, data.get("servers"))
    names: dict[str, str] = {}
    for key, pattern, expected in (
            ("stream", _NATS_NAME_RE, "a stream name without blanks, dots, *, > or slashes"),
            ("consumer", _NATS_NAME_RE, "a consumer name without blanks, dots, *, > or "
                                        "slashes"),
            ("subject", _NATS_SUBJECT_RE, "a subject of dot-separated tokens without "
                                          "blanks or wildcards (trollpush.requests)")):
        default = JETSTREAM[key].default
        value = v.string(data, key, "jetstream.", default=default) or default
        if not pattern.match(value):
            v.problem(f"jetstream.{key}", value, expected)
            value = default
        names[key] = value
    replicas = v.read(data, "jetstream.", "replicas", JETSTREAM["replicas"])
    maximum = int(JETSTREAM["replicas"].maximum or 5)
    if replicas > maximum:
        v.problem("jetstream.replicas", replicas, f"an integer from 1 to {maximum} (NATS "
                  "keeps at most five copies of a stream)")
        replicas = JETSTREAM["replicas"].default
    return JetStreamConfig(servers=servers, stream=names["stream"], subject=names["subject"],
                           consumer=names["consumer"], replicas=replicas,
                           **v.read_all(data, "jetstream.", JETSTREAM, skip=("replicas",)))


def _nats_servers(v: Validator, raw: object) -> tuple[str, ...]:
    """One nats:// (or tls://) URL, or a non-empty list of them."""
    default: tuple[str, ...] = JETSTREAM["servers"].default
    if raw is None:
        return default
    values = [raw] if isinstance(raw, str) else raw
    if not isinstance(values, list) or not values:
        v.problem("jetstream.servers", raw, "a nats:// URL or a non-empty list of them")
        return default
    good = True
    for i, url in enumerate(values):
        if not isinstance(url, str) or not _NATS_URL_RE.match(url):
            v.problem(f"jetstream.servers[{i}]", url,
                      "a NATS URL like nats://HOST:4222 (or tls://HOST:4222)")
            good = False
    return tuple(values) if good else default
