"""Typed, frozen configuration, validated completely at load.

Every problem is collected (not just the first) and names the key, the value and what
was expected.  The YAML schema is documented in ``docs/config.md``.
"""

from __future__ import annotations

import grp
import math
import os
import re
import stat
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import trollsift
import yaml

from .errors import ConfigError, ConfigProblem
from .transfer.checksum import ALGORITHMS

Scalar = str | int | float | bool
MiB = 1024 * 1024
_BYTE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2,
               "g": 1000**3, "gb": 1000**3, "kib": 1024, "mib": MiB, "gib": 1024**3}
_BIT_UNITS = {"": 1, "bit": 1, "bps": 1, "kbit": 1e3, "kbps": 1e3, "mbit": 1e6, "mbps": 1e6,
              "gbit": 1e9, "gbps": 1e9}
_QUANTITY_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*(?:/s)?\s*$")


def _human(n: float) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", MiB), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:g}{unit}"
    return f"{n:g}B"


def _rate(bits: float) -> str:
    """A bit rate in the unit rates are written in (8000 -> 8kbit), for messages."""
    for unit, scale in (("Gbit", 1e9), ("Mbit", 1e6), ("kbit", 1e3)):
        if bits >= scale:
            return f"{bits / scale:g}{unit}"
    return f"{bits:g}bit"

#: a named field, optionally indexed or with attributes: {sensor[0]}, {start_time.year}
_NAMED_FIELD_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*|\[[^\]]+\])*")
_ADDRESS_RE = re.compile(r"^(tcp://[^\s:]+:\d+|ipc://\S+|inproc://\S+)$")


#: messages a SUB socket may buffer per publisher: a burst of 50,000 in 2 s fits with
#: room to spare while the reader catches up (libzmq's default, 1,000, drops the rest)
RECEIVE_HWM = 100_000


@dataclass(frozen=True)
class SubscribeConfig:
    """posttroll pub-sub input; ``settings`` holds posttroll's keys and ``receive_hwm``."""

    settings: Mapping[str, Any]

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(self.settings.get("topics", ()))

    @property
    def receive_hwm(self) -> int:
        return int(self.settings.get("receive_hwm", RECEIVE_HWM))


#: sun_path holds 108 bytes with the terminating NUL
_IPC_PATH_MAX = 107


@dataclass(frozen=True)
class RequestsConfig:
    """ZeroMQ REQ/REP input; for ``ipc://`` the socket file's mode and group decide who
    may submit (the file is set to them right after bind)."""

    address: str = "tcp://127.0.0.1:15556"
    mode: int | None = None  # permission bits of an ipc socket file; None for tcp
    group: int | None = None  # gid given to an ipc socket file; None: the daemon's group

    @property
    def ipc_path(self) -> str | None:
        """The socket file of an ``ipc://`` address (None for tcp, inproc, abstract)."""
        if not self.address.startswith("ipc://") or self.address.startswith("ipc://@"):
            return None
        return self.address[len("ipc://"):]


@dataclass(frozen=True)
class PublishConfig:
    """posttroll output; ``settings`` goes to create_publisher_from_dict_config."""

    settings: Mapping[str, Any]
    topic: str = "/trollpush/uploaded/"
    failure_topic: str = "/trollpush/failed"


@dataclass(frozen=True)
class EndpointConfig:
    """An S3 connection profile; one client (and pool) per endpoint for the daemon's life."""

    name: str
    url: str | None = None
    region: str | None = None
    profile: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    addressing_style: str = "auto"
    # pool: connections opened at start and kept warm through idle gaps
    max_connections: int = 32
    prewarm: int = 8
    keepalive_interval: float = 15.0
    keepalive_timeout: float = 3600.0
    tcp_keepalive: bool = True
    connect_timeout: float = 5.0
    # concurrency and multipart (names as in s3transfer)
    max_parallel: int = 32
    queue_timeout: float = 300.0
    multipart_threshold: int = 64 * MiB
    multipart_chunksize: int = 16 * MiB
    max_parts_in_flight: int = 8
    # time budget per attempt: (attempt_timeout + bytes / min_throughput) x factor^(n-1)
    attempt_timeout: float = 10.0
    min_throughput: float = 1 * MiB
    timeout_factor: float = 1.5
    tries: int = 4
    bandwidth_limit: float | None = None  # bits per second, shared by all uploads
    checksum: str = "crc32c"

    def attempt_budget(self, size: int, attempt: int) -> float:
        """Seconds allowed for attempt number ``attempt`` (1-based) of a ``size``-byte body."""
        base = self.attempt_timeout + size / self.min_throughput
        return float(base * self.timeout_factor ** (attempt - 1))

    def summary(self) -> str:
        """One line for logs and ``check``: never shows secrets."""
        creds = "explicit keys" if self.access_key_id else (
            f"profile {self.profile}" if self.profile else "default credential chain")
        limit = (f" bandwidth_limit={self.bandwidth_limit / 1e6:g}Mbit/s"
                 if self.bandwidth_limit else "")
        return (f"{self.name}: {self.url or 'AWS'} region={self.region or 'default'} "
                f"({creds}) max_parallel={self.max_parallel} prewarm={self.prewarm} "
                f"tries={self.tries} attempt_timeout={self.attempt_timeout:g}s "
                f"multipart>={_human(self.multipart_threshold)} "
                f"checksum={self.checksum}{limit}")


@dataclass(frozen=True)
class TargetConfig:
    """Where files that match go, and where their completions are announced."""

    name: str
    destination: str
    endpoint: str
    topics: tuple[str, ...] = ()
    pattern: str | None = None
    conditions: Mapping[str, tuple[Scalar, ...]] = field(default_factory=dict)
    excepts: Mapping[str, tuple[Scalar, ...]] = field(default_factory=dict)
    aliases: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    publish_topic: str | None = None
    overwrite: str = "changed"  # "always": upload even an unchanged file that already landed


@dataclass(frozen=True)
class DaemonConfig:
    """Bounds of the daemon itself."""

    queue_size: int = 10000
    max_in_flight: int = 256
    shutdown_grace: float = 30.0
    max_age: float = 3600.0  # how long a request may keep retrying while the store is down
    max_request_bytes: int = 1024 * 1024  # a larger message or request is refused
    allowed_roots: tuple[str, ...] = ()  # real paths; empty: any local file
    #: bound on one file-system call (open, stat, a read): a hung NFS mount or a FIFO
    #: fails its request instead of holding a worker thread and the requests behind it
    file_timeout: float = 30.0
    #: libuv's loop (uvloop) spends less per callback and socket call than asyncio's own:
    #: at thousands of small files a second the loop thread is the daemon's bottleneck
    event_loop: str = "uvloop"


EVENT_LOOPS = ("uvloop", "asyncio")


@dataclass(frozen=True)
class JournalConfig:
    """Where accepted requests are recorded; ``path`` None keeps them in memory only."""

    path: str | None = None
    keep_landed_days: float = 7.0


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    endpoints: Mapping[str, EndpointConfig]
    targets: tuple[TargetConfig, ...] = ()
    subscribe: SubscribeConfig | None = None
    requests: RequestsConfig | None = None
    publish: PublishConfig | None = None
    daemon: DaemonConfig = DaemonConfig()
    journal: JournalConfig = JournalConfig()
    source: str = "<config>"

    def default_endpoint(self) -> str | None:
        """The endpoint for requests and targets that name none."""
        return default_endpoint(self.endpoints)

    def warm_buckets(self) -> dict[str, str]:
        """A bucket per endpoint whose HEAD keeps connections warm (a fixed target bucket)."""
        out: dict[str, str] = {}
        for t in self.targets:
            bucket = t.destination[len("s3://"):].split("/", 1)[0]
            if "{" not in bucket:
                out.setdefault(t.endpoint, bucket)
        return out

    def summary(self) -> str:
        """Human summary for ``trollpush check``; never contains secrets."""
        lines = [f"config {self.source}: OK"]
        if self.subscribe:
            s = self.subscribe.settings
            where = (f"nameserver {s['nameserver']}" if s.get("nameserver") not in (False, None)
                     else ("addresses " + ", ".join(s.get("addresses", []))
                           if s.get("nameserver") is False else "nameserver localhost"))
            lines.append(f"input  subscribe: topics {list(self.subscribe.topics)} via {where}")
        if self.requests:
            access = ""
            if self.requests.mode is not None:
                group = ""
                if self.requests.group is not None:
                    try:
                        group = f", group {grp.getgrgid(self.requests.group).gr_name}"
                    except KeyError:
                        group = f", group {self.requests.group}"
                access = f" (socket file mode {self.requests.mode:04o}{group})"
            lines.append(f"input  requests: REQ/REP on {self.requests.address}{access}")
        if self.publish:
            s = self.publish.settings
            if s.get("nameservers") is False:
                where = s.get("address") or f"port {s.get('port')}"
            else:
                ns = s.get("nameservers") or "multicast"
                where = f"a random port, registered with {ns}"
            lines.append(f"output publish: {where} as {s.get('name')!r}, default topic "
                         f"{self.publish.topic}, failures on {self.publish.failure_topic}")
        else:
            lines.append("output publish: disabled (completions are not announced)")
        for ep in self.endpoints.values():
            lines.append(f"endpoint {ep.summary()}")
        for t in self.targets:
            extra = []
            if t.topics:
                extra.append(f"topics {list(t.topics)}")
            if t.pattern:
                extra.append(f"pattern {t.pattern}")
            if t.conditions or t.excepts:
                extra.append(f"{len(t.conditions)} condition(s), {len(t.excepts)} except")
            lines.append(f"target {t.name}: -> {t.destination} @{t.endpoint}"
                         + (f" ({'; '.join(extra)})" if extra else ""))
        return "\n".join(lines)


def default_endpoint(endpoints: Mapping[str, EndpointConfig]) -> str | None:
    """The one named ``default``, else the only one, else none."""
    if "default" in endpoints:
        return "default"
    return next(iter(endpoints)) if len(endpoints) == 1 else None


# --- loading ---------------------------------------------------------------------------


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file; raise ConfigError listing every problem."""
    src = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError([ConfigProblem("<file>", src, f"a readable file ({err.strerror})")],
                          src) from err
    except UnicodeDecodeError as err:
        raise ConfigError([ConfigProblem("<file>", src, f"UTF-8 text (byte {err.start} is not)")],
                          src) from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        # only the problem and its position: PyYAML's snippet could echo a secret
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError([ConfigProblem("<yaml>", src, f"valid YAML ({what}{where})")],
                          src) from err
    return parse_config(data, source=src)


def parse_config(data: object, *, source: str = "<config>") -> Config:
    """Validate an already-parsed mapping; raise ConfigError listing every problem."""
    v = _Validator()
    if not isinstance(data, Mapping):
        raise ConfigError([ConfigProblem("<root>", data, "a mapping of sections")], source)
    v.no_unknown(data, "", {"subscribe", "requests", "publish", "endpoints", "targets", "daemon",
                            "journal"})
    subscribe = _subscribe(v, data.get("subscribe"))
    requests = _requests(v, data.get("requests"), present="requests" in data)
    publish = _publish(v, data.get("publish"))
    endpoints = _endpoints(v, data.get("endpoints"))
    targets = _targets(v, data.get("targets"), endpoints)
    daemon = _daemon(v, data.get("daemon"))
    journal = _journal(v, data.get("journal"))
    if subscribe is None and requests is None:
        v.problem("subscribe/requests", None, "at least one input section (subscribe or requests)")
    _check_loop(v, subscribe, publish, targets)
    if subscribe is not None and not targets:
        v.problem("targets", data.get("targets"),
                  "at least one target when `subscribe` is set (messages need routes)")
    if v.problems:
        raise ConfigError(v.problems, source)
    return Config(endpoints=MappingProxyType(endpoints), targets=tuple(targets),
                  subscribe=subscribe, requests=requests, publish=publish, daemon=daemon,
                  journal=journal, source=source)


class _Validator:
    """Collects problems while reading sections; getters return a usable default on error."""

    def __init__(self) -> None:
        self.problems: list[ConfigProblem] = []

    def problem(self, key: str, value: object, expected: str) -> None:
        self.problems.append(ConfigProblem(key, value, expected))

    def no_unknown(self, data: Mapping[str, Any], prefix: str, allowed: set[str]) -> None:
        for key in data:
            if key not in allowed:
                self.problem(f"{prefix}{key}", data[key],
                             f"no such key (known: {', '.join(sorted(allowed))})")

    def mapping(self, value: object, key: str) -> Mapping[str, Any] | None:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.problem(key, value, "a mapping")
            return None
        return value

    def string(self, data: Mapping[str, Any], key: str, prefix: str, *,
               required: bool = False, default: str | None = None) -> str | None:
        value = data.get(key)
        if value is None:
            if required:
                self.problem(f"{prefix}{key}", value, "a string (required)")
            return default
        if not isinstance(value, str) or not value.strip():
            self.problem(f"{prefix}{key}", value, "a non-empty string")
            return default
        return value

    def number(self, data: Mapping[str, Any], key: str, prefix: str, default: float, *,
               minimum: float = 0.0, integer: bool = False) -> Any:
        value = data.get(key, default)
        kind = "an integer" if integer else "a number"
        ok_type = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_type):
            self.problem(f"{prefix}{key}", value, f"{kind} >= {minimum:g}")
            return default
        if not math.isfinite(value) or value < minimum:
            finite = kind if integer else "a finite number"  # an int is always finite
            self.problem(f"{prefix}{key}", value, f"{finite} >= {minimum:g}")
            return default
        return value

    def quantity(self, data: Mapping[str, Any], key: str, prefix: str, default: float | None,
                 units: Mapping[str, float], example: str, *, minimum: float = 0.0,
                 per_second: bool = False) -> float | None:
        """A number, or a string with a unit (``16MiB``, ``100Mbit``).

        A problem shows the minimum in the unit the key is written in (5MiB, 8kbit), not
        as a bare number of bytes or bits.
        """
        value = data.get(key)
        if value is None:
            return default
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number: float | None = float(value)
        elif isinstance(value, str) and (m := _QUANTITY_RE.match(value)) and \
                m.group(2).lower() in units:
            number = float(m.group(1)) * units[m.group(2).lower()]
        else:
            number = None
        if number is None or not math.isfinite(number) or number < minimum:
            if units is _BIT_UNITS:
                least, what = _rate(minimum), "bits per second"
            else:
                least = _human(minimum) + ("/s" if per_second else "")
                what = "bytes per second" if per_second else "bytes"
            noun = "a rate" if per_second or units is _BIT_UNITS else "a size"
            self.problem(f"{prefix}{key}", value, f"{noun} >= {least}: a number of {what} "
                         f"or a string with a unit like {example}")
            return default
        return number

    def boolean(self, data: Mapping[str, Any], key: str, prefix: str, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            self.problem(f"{prefix}{key}", value, "true or false")
            return default
        return value

    def topic(self, value: object, key: str) -> str | None:
        if not isinstance(value, str) or not value or any(c.isspace() for c in value):
            self.problem(key, value, "a posttroll subject: a non-empty string without whitespace")
            return None
        return value

    def topics(self, value: object, key: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            self.problem(key, value, "a non-empty list of topic strings")
            return ()
        return tuple(t for i, t in enumerate(value) if self.topic(t, f"{key}[{i}]") is not None)


#: posttroll's subscriber keys (and trollpush's receive_hwm); its publisher's keys
_SUBSCRIBE_KEYS = {"topics", "nameserver", "addresses", "services", "addr_listener", "timeout",
                   "receive_hwm"}
_PUBLISH_KEYS = {"name", "address", "port", "nameservers", "aliases", "broadcast_interval",
                 "min_port", "max_port", "topic", "failure_topic"}


def _subscribe(v: _Validator, raw: object) -> SubscribeConfig | None:
    data = v.mapping(raw, "subscribe")
    if data is None:
        return None
    v.no_unknown(data, "subscribe.", _SUBSCRIBE_KEYS)
    settings = dict(data)
    settings["topics"] = list(v.topics(data.get("topics"), "subscribe.topics"))
    if data.get("topics") is None:
        v.problem("subscribe.topics", None, "a non-empty list of topic strings")
    ns = data.get("nameserver", None)
    if ns is not False and ns is not None and not isinstance(ns, str):
        v.problem("subscribe.nameserver", ns, "false, or a nameserver host name")
    addresses = data.get("addresses")
    if ns is False:
        if not isinstance(addresses, list) or not addresses:
            v.problem("subscribe.addresses", addresses,
                      "a non-empty list of tcp://HOST:PORT addresses when nameserver is false")
        else:
            for i, a in enumerate(addresses):
                if not isinstance(a, str) or not _ADDRESS_RE.match(a):
                    v.problem(f"subscribe.addresses[{i}]", a, "an address like tcp://HOST:PORT")
    elif addresses is not None and not isinstance(addresses, list):
        v.problem("subscribe.addresses", addresses, "a list of addresses")
    settings["receive_hwm"] = v.number(data, "receive_hwm", "subscribe.", RECEIVE_HWM,
                                       integer=True)
    timeout = data.get("timeout")
    if timeout is not None:
        v.number(data, "timeout", "subscribe.", 10, minimum=0.1)
    return SubscribeConfig(settings=MappingProxyType(settings))


def _requests(v: _Validator, raw: object, *, present: bool) -> RequestsConfig | None:
    if raw is None:
        return RequestsConfig() if present else None
    data = v.mapping(raw, "requests")
    if data is None:
        return None
    v.no_unknown(data, "requests.", {"address", "mode", "group"})
    address = v.string(data, "address", "requests.", default=RequestsConfig.address)
    if address and not _ADDRESS_RE.match(address):
        v.problem("requests.address", address, "an address like tcp://127.0.0.1:15556")
    address = address or RequestsConfig.address
    config = RequestsConfig(address=address)
    path = config.ipc_path
    if path is None:
        for key in ("mode", "group"):
            if data.get(key) is not None:
                v.problem(f"requests.{key}", data.get(key),
                          f"no {key} unless requests.address is ipc:///PATH (a socket "
                          f"file); {address} has no file whose permissions could apply")
        return config
    _check_ipc_path(v, path, address)
    group = _group(v, data.get("group"))
    # with a group, the group is meant to submit; without one, only the daemon's user
    mode = _mode(v, data.get("mode"), 0o660 if group is not None else 0o600)
    return RequestsConfig(address=address, mode=mode, group=group)


def _check_ipc_path(v: _Validator, path: str, address: str) -> None:
    if not os.path.isabs(path):
        v.problem("requests.address", address, "ipc:// with an absolute path, like "
                  "ipc:///run/trollpush/requests.sock")
        return
    if len(os.fsencode(path)) > _IPC_PATH_MAX:
        v.problem("requests.address", address,
                  f"a socket path of at most {_IPC_PATH_MAX} bytes (the kernel's limit)")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        v.problem("requests.address", address, f"a socket path in an existing directory "
                  f"({parent} is not one)")
    try:
        st = os.lstat(path)
    except OSError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        v.problem("requests.address", address,
                  f"a path that is free or holds a socket ({path} exists and is not a "
                  "socket: trollpush does not replace it)")


def _mode(v: _Validator, value: object, default: int) -> int:
    """Permission bits, as a quoted octal string ("0660", "660", "0o660").  An unquoted
    number is refused: YAML reads 0660 as octal but 440 as decimal (0o670), and the two
    cannot be told apart afterwards; a wrong guess would open the socket to others."""
    if value is None:
        return default
    mode: int | None = None
    if isinstance(value, str) and re.fullmatch(r"(0o?)?[0-7]{1,4}", value.strip()):
        text = value.strip()
        mode = int(text[2:] if text.startswith("0o") else text, 8)
    if mode is None or not 0 <= mode <= 0o777:
        v.problem("requests.mode", value, "permission bits as a quoted octal string like "
                  "'0660' (at most 0777; unquoted, YAML reads a number)")
        return default
    return mode


def _group(v: _Validator, value: object) -> int | None:
    """A group name or gid that exists on this host; its gid."""
    if value is None:
        return None
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            return grp.getgrgid(value).gr_gid
        if isinstance(value, str) and value.strip():
            return grp.getgrnam(value.strip()).gr_gid
    except (KeyError, OverflowError):
        pass
    v.problem("requests.group", value, "the name or gid of a group that exists on this host")
    return None


def _publish(v: _Validator, raw: object) -> PublishConfig | None:
    data = v.mapping(raw, "publish")
    if data is None:
        return None
    v.no_unknown(data, "publish.", _PUBLISH_KEYS)
    settings = {k: val for k, val in data.items() if k not in ("topic", "failure_topic")}
    if not settings.get("name"):
        v.problem("publish.name", settings.get("name"), "a publisher name (a non-empty string)")
    ns = settings.get("nameservers")
    if ns is False:
        addr, port = settings.get("address"), settings.get("port")
        if addr is None and not port:
            v.problem("publish.address", addr,
                      "an address like tcp://127.0.0.1:40001 (or a port) when nameservers is false")
        if addr is not None and (not isinstance(addr, str) or not _ADDRESS_RE.match(addr)):
            v.problem("publish.address", addr, "an address like tcp://127.0.0.1:40001")
    elif ns is not None and not (isinstance(ns, list) and all(isinstance(h, str) for h in ns)):
        v.problem("publish.nameservers", ns, "false, or a list of nameserver host names")
    topic = v.topic(data.get("topic", PublishConfig.topic), "publish.topic")
    failure = v.topic(data.get("failure_topic", PublishConfig.failure_topic),
                      "publish.failure_topic")
    return PublishConfig(settings=MappingProxyType(settings), topic=topic or PublishConfig.topic,
                         failure_topic=failure or PublishConfig.failure_topic)


_ENDPOINT_KEYS = {"url", "region", "profile", "access_key_id", "secret_access_key",
                  "session_token", "addressing_style", "max_connections", "prewarm",
                  "keepalive_interval", "keepalive_timeout", "tcp_keepalive",
                  "connect_timeout", "max_parallel", "queue_timeout", "multipart_threshold",
                  "multipart_chunksize", "max_parts_in_flight", "attempt_timeout",
                  "min_throughput", "timeout_factor", "tries", "bandwidth_limit", "checksum"}
_MIN_PART = 5 * MiB
_MAX_PART = 5 * 1024 * MiB


def _endpoints(v: _Validator, raw: object) -> dict[str, EndpointConfig]:
    data = v.mapping(raw, "endpoints")
    if not data:
        v.problem("endpoints", raw, "a mapping of at least one named S3 endpoint")
        return {}
    out = {}
    for name, ep in data.items():
        p = f"endpoints.{name}."
        e = v.mapping(ep if ep is not None else {}, f"endpoints.{name}")
        if e is None:
            continue
        v.no_unknown(e, p, _ENDPOINT_KEYS)
        url = v.string(e, "url", p)
        if url and not re.match(r"^https?://[^\s/]+", url):
            v.problem(f"{p}url", url, "an http:// or https:// URL")
        if (e.get("access_key_id") is None) != (e.get("secret_access_key") is None):
            v.problem(f"{p}secret_access_key", e.get("secret_access_key"),
                      "access_key_id and secret_access_key given together, or neither")
        style = v.string(e, "addressing_style", p, default="auto") or "auto"
        if style not in ("auto", "path", "virtual"):
            v.problem(f"{p}addressing_style", style, "one of auto, path, virtual")
        checksum = v.string(e, "checksum", p, default="crc32c") or "crc32c"
        if checksum not in ALGORITHMS:
            v.problem(f"{p}checksum", checksum, f"one of {', '.join(ALGORITHMS)}")
            checksum = "crc32c"
        d = EndpointConfig
        # each defaults to follow the other, so setting either one is enough
        max_connections = v.number(e, "max_connections", p,
                                   max(d.max_connections, e.get("max_parallel") or 0)
                                   if isinstance(e.get("max_parallel"), int) else
                                   d.max_connections, minimum=1, integer=True)
        max_parallel = v.number(e, "max_parallel", p, min(d.max_parallel, max_connections),
                                minimum=1, integer=True)
        if max_connections < max_parallel:
            v.problem(f"{p}max_connections", max_connections,
                      f"at least max_parallel ({max_parallel}): every upload needs a connection")
        prewarm = v.number(e, "prewarm", p, min(d.prewarm, max_connections), integer=True)
        if prewarm > max_connections:
            v.problem(f"{p}prewarm", prewarm, f"at most max_connections ({max_connections})")
        chunk = v.quantity(e, "multipart_chunksize", p, d.multipart_chunksize, _BYTE_UNITS,
                           "16MiB", minimum=_MIN_PART) or d.multipart_chunksize
        if chunk > _MAX_PART:
            v.problem(f"{p}multipart_chunksize", e.get("multipart_chunksize"),
                      "at most 5GiB (S3's largest part)")
        out[str(name)] = EndpointConfig(
            name=str(name), url=url, region=v.string(e, "region", p),
            profile=v.string(e, "profile", p),
            access_key_id=v.string(e, "access_key_id", p),
            secret_access_key=v.string(e, "secret_access_key", p),
            session_token=v.string(e, "session_token", p), addressing_style=style,
            max_connections=max_connections, prewarm=prewarm,
            keepalive_interval=float(v.number(e, "keepalive_interval", p,
                                              d.keepalive_interval)),
            keepalive_timeout=float(v.number(e, "keepalive_timeout", p, d.keepalive_timeout,
                                             minimum=1)),
            tcp_keepalive=v.boolean(e, "tcp_keepalive", p, d.tcp_keepalive),
            connect_timeout=float(v.number(e, "connect_timeout", p, d.connect_timeout,
                                           minimum=0.001)),
            max_parallel=max_parallel,
            queue_timeout=float(v.number(e, "queue_timeout", p, d.queue_timeout,
                                         minimum=0.001)),
            multipart_threshold=int(v.quantity(e, "multipart_threshold", p,
                                               d.multipart_threshold, _BYTE_UNITS, "64MiB",
                                               minimum=_MIN_PART) or d.multipart_threshold),
            multipart_chunksize=int(chunk),
            max_parts_in_flight=v.number(e, "max_parts_in_flight", p, d.max_parts_in_flight,
                                         minimum=1, integer=True),
            attempt_timeout=float(v.number(e, "attempt_timeout", p, d.attempt_timeout,
                                           minimum=0.001)),
            min_throughput=v.quantity(e, "min_throughput", p, d.min_throughput, _BYTE_UNITS,
                                      "1MiB/s", minimum=1, per_second=True) or d.min_throughput,
            timeout_factor=float(v.number(e, "timeout_factor", p, d.timeout_factor,
                                          minimum=1)),
            tries=v.number(e, "tries", p, d.tries, minimum=1, integer=True),
            bandwidth_limit=v.quantity(e, "bandwidth_limit", p, None, _BIT_UNITS, "100Mbit",
                                       minimum=8000),
            checksum=checksum,
        )
    return out


_TARGET_KEYS = {"name", "topics", "pattern", "conditions", "aliases", "destination",
                "endpoint", "publish_topic", "overwrite"}


def _targets(v: _Validator, raw: object,
             endpoints: Mapping[str, EndpointConfig]) -> list[TargetConfig]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        v.problem("targets", raw, "a list of targets")
        return []
    out, names = [], set()
    for i, t in enumerate(raw):
        p = f"targets[{i}]."
        if not isinstance(t, Mapping):
            v.problem(f"targets[{i}]", t, "a mapping with at least `destination`")
            continue
        v.no_unknown(t, p, _TARGET_KEYS)
        name = v.string(t, "name", p, default=f"target{i}") or f"target{i}"
        if name in names:
            v.problem(f"{p}name", name, "a name not used by another target")
        names.add(name)
        pattern = v.string(t, "pattern", p)
        if pattern is not None:
            pattern = _check_pattern(v, pattern, f"{p}pattern")
        destination = v.string(t, "destination", p, required=True)
        if destination is not None:
            _check_destination(v, destination, f"{p}destination")
        endpoint = v.string(t, "endpoint", p, default=default_endpoint(endpoints))
        if endpoint is None:
            v.problem(f"{p}endpoint", None,
                      f"the name of an endpoint (one of: {', '.join(endpoints) or 'none defined'})")
        elif endpoints and endpoint not in endpoints:
            v.problem(f"{p}endpoint", endpoint, f"one of the endpoints: {', '.join(endpoints)}")
        publish_topic = t.get("publish_topic")
        if publish_topic is not None:
            publish_topic = v.topic(publish_topic, f"{p}publish_topic")
            if publish_topic is not None:
                _check_template(v, publish_topic, f"{p}publish_topic")
        conditions, excepts = _conditions(v, t.get("conditions"), f"{p}conditions")
        overwrite = v.string(t, "overwrite", p, default="changed") or "changed"
        if overwrite not in ("changed", "always"):
            v.problem(f"{p}overwrite", overwrite, "changed (the default) or always")
        out.append(TargetConfig(
            name=name, destination=destination or "", endpoint=endpoint or "",
            topics=v.topics(t.get("topics"), f"{p}topics"), pattern=pattern,
            conditions=conditions, excepts=excepts,
            aliases=_aliases(v, t.get("aliases"), f"{p}aliases"), publish_topic=publish_topic,
            overwrite=overwrite))
    return out


def _check_pattern(v: _Validator, pattern: str, key: str) -> str | None:
    try:
        trollsift.parser.get_convert_dict(pattern)
        re.compile(trollsift.parser.regex_format(pattern))
    except (ValueError, re.error, KeyError, IndexError) as err:
        v.problem(key, pattern, f"a valid trollsift pattern ({err})")
        return None
    return pattern


def _check_destination(v: _Validator, destination: str, key: str) -> None:
    if not destination.startswith("s3://"):
        v.problem(key, destination, "an s3://BUCKET/KEY template")
        return
    rest = destination[len("s3://"):]
    bucket = rest.split("/", 1)[0]
    if not bucket:
        v.problem(key, destination, "a bucket name after s3://")
    _check_template(v, destination, key)


def _check_template(v: _Validator, template: str, key: str) -> None:
    """A trollsift template whose fields are all named ({name} or {name:format})."""
    try:
        trollsift.parser.get_convert_dict(template)
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except (ValueError, re.error, KeyError, IndexError) as err:
        v.problem(key, template, f"a valid trollsift template ({err})")
        return
    for name in fields:
        if not _NAMED_FIELD_RE.fullmatch(name):
            v.problem(key, template, f"named fields like {{platform_name}}, not {{{name}}}")
            return


def _scalars(v: _Validator, value: object, key: str) -> tuple[Scalar, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        v.problem(key, value, "a value or a non-empty list of values")
    for i, item in enumerate(items):
        if not isinstance(item, (str, int, float, bool)):
            v.problem(key if len(items) == 1 else f"{key}[{i}]", item,
                      "a string, number or boolean")
    return tuple(x for x in items if isinstance(x, (str, int, float, bool)))


def _conditions(v: _Validator, raw: object, key: str
                ) -> tuple[Mapping[str, tuple[Scalar, ...]], Mapping[str, tuple[Scalar, ...]]]:
    data = v.mapping(raw, key)
    if data is None:
        return {}, {}
    conditions: dict[str, tuple[Scalar, ...]] = {}
    excepts: dict[str, tuple[Scalar, ...]] = {}
    for name, value in data.items():
        if name == "except":
            block = v.mapping(value, f"{key}.except")
            if value is None or (block is not None and not block):
                v.problem(f"{key}.except", value, "a non-empty mapping of field: value(s)")
            for ename, evalue in (block or {}).items():
                excepts[str(ename)] = _scalars(v, evalue, f"{key}.except.{ename}")
        else:
            conditions[str(name)] = _scalars(v, value, f"{key}.{name}")
    return MappingProxyType(conditions), MappingProxyType(excepts)


def _aliases(v: _Validator, raw: object, key: str) -> Mapping[str, Mapping[str, str]]:
    data = v.mapping(raw, key)
    if data is None:
        return {}
    out: dict[str, Mapping[str, str]] = {}
    for fname, table in data.items():
        t = v.mapping(table, f"{key}.{fname}")
        if t is None:
            continue
        bad = [k for k, val in t.items() if not isinstance(val, (str, int))]
        for k in bad:
            v.problem(f"{key}.{fname}.{k}", t[k], "a string alias")
        out[str(fname)] = MappingProxyType({str(k): str(val) for k, val in t.items()})
    return MappingProxyType(out)


def _check_loop(v: _Validator, subscribe: SubscribeConfig | None, publish: PublishConfig | None,
                targets: list[TargetConfig]) -> None:
    """Refuse a daemon that would hear its own announcements: each would come back as input."""
    if subscribe is None or publish is None:
        return
    sub, pub = subscribe.settings, publish.settings
    if sub.get("nameserver") is False:
        hears_self = pub.get("address") in (sub.get("addresses") or [])
    else:
        services = sub.get("services", "")
        services = [services] if isinstance(services, str) else list(services or [])
        hears_self = pub.get("nameservers") is not False and (
            not services or "" in services or pub.get("name") in services)
    if not hears_self:
        return
    outputs = {"publish.topic": publish.topic, "publish.failure_topic": publish.failure_topic}
    outputs.update({f"targets[{i}].publish_topic": t.publish_topic
                    for i, t in enumerate(targets) if t.publish_topic})
    for i, topic in enumerate(subscribe.topics):
        for key, out in outputs.items():
            static = out.split("{", 1)[0]
            if static.startswith(topic) or ("{" in out and topic.startswith(static)):
                v.problem(f"subscribe.topics[{i}]", topic,
                          f"a topic that does not match trollpush's own {key} {out!r} "
                          "(the daemon subscribes to its own publisher: announcements would "
                          "come back as input)")
                break  # one problem per topic is enough


def _daemon(v: _Validator, raw: object) -> DaemonConfig:
    data = v.mapping(raw, "daemon")
    if data is None:
        return DaemonConfig()
    v.no_unknown(data, "daemon.", {"queue_size", "max_in_flight", "shutdown_grace", "max_age",
                                   "max_request_bytes", "allowed_roots", "event_loop",
                                   "file_timeout"})
    roots = data.get("allowed_roots") or []
    if not isinstance(roots, list) or not all(isinstance(r, str) and os.path.isabs(
            os.path.expanduser(r)) for r in roots):
        v.problem("daemon.allowed_roots", roots, "a list of absolute directory paths")
        roots = []
    event_loop = v.string(data, "event_loop", "daemon.", default="uvloop") or "uvloop"
    if event_loop not in EVENT_LOOPS:
        v.problem("daemon.event_loop", event_loop, f"one of {', '.join(EVENT_LOOPS)}")
        event_loop = "uvloop"
    return DaemonConfig(
        queue_size=v.number(data, "queue_size", "daemon.", 10000, minimum=1, integer=True),
        max_in_flight=v.number(data, "max_in_flight", "daemon.", 256, minimum=1, integer=True),
        shutdown_grace=float(v.number(data, "shutdown_grace", "daemon.", 30.0)),
        max_age=float(v.number(data, "max_age", "daemon.", 3600.0, minimum=1)),
        max_request_bytes=int(v.quantity(data, "max_request_bytes", "daemon.", 1024 * 1024,
                                         _BYTE_UNITS, "1MiB", minimum=1024) or 1024 * 1024),
        allowed_roots=tuple(os.path.realpath(os.path.expanduser(r)) for r in roots),
        file_timeout=float(v.number(data, "file_timeout", "daemon.", 30.0, minimum=0.1)),
        event_loop=event_loop,
    )


def _journal(v: _Validator, raw: object) -> JournalConfig:
    """Durable by default (the user's state directory); ``path: memory`` opts out."""
    from .journal import default_journal_path

    data = v.mapping(raw, "journal") or {}
    v.no_unknown(data, "journal.", {"path", "keep_landed_days"})
    path = v.string(data, "path", "journal.", default=str(default_journal_path()))
    return JournalConfig(
        path=None if path == "memory" else os.path.expanduser(path or ""),
        keep_landed_days=float(v.number(data, "keep_landed_days", "journal.", 7.0)))

