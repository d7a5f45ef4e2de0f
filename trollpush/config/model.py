"""The configuration as the daemon sees it: frozen, typed, already validated.

Defaults come from ``defaults`` (the same values the validator and the JSON Schema use);
only a few differ on purpose, where a value built in code means something other than a
key left out of a file: ``JournalConfig.path`` (None: in memory; a file's default is the
user's state directory) and ``RequestsConfig.mode`` (None for tcp; an ipc:// address in a
file gets 0600 or 0660).
"""

from __future__ import annotations

import grp
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..models import SseCKey
from .defaults import (
    DAEMON,
    ENDPOINT,
    HTTP,
    HTTP_ADDRESS,
    JETSTREAM,
    JOURNAL,
    OBJECT,
    PUBLISH,
    RECEIVE_HWM,
    REQUEST_ADDRESS,
    S3DAEMON,
    TARGET,
    WATCH,
)
from .units import human

Scalar = str | int | float | bool
#: one allowed value of a condition: a plain value, or a list the field must equal as a
#: whole (trollmoves' ``sensor: [atms, [atms]]`` takes ``atms`` and ``[atms]``)
Choice = Scalar | tuple[Scalar, ...]
Operator = Literal["<", ">", "<=", ">=", "==", "!="]


@dataclass(frozen=True)
class Comparison:
    """A numeric condition (``daylight: '<30'``), parsed once at load so that no message
    re-reads its text; ``text`` is the value as written, for reasons and ``match``."""

    op: Operator
    number: int | float
    text: str


#: what one key of a condition set asks: one of these values, or a comparison
Condition = tuple[Choice, ...] | Comparison


@dataclass(frozen=True)
class ConditionSet:
    """Conditions that must all hold, unless every key of ``excepts`` holds too: one
    mapping of a target's ``conditions`` (trollmoves' dispatcher ORs a list of them)."""

    conditions: Mapping[str, Condition] = field(default_factory=dict)
    excepts: Mapping[str, Condition] = field(default_factory=dict)


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


@dataclass(frozen=True)
class RequestsConfig:
    """ZeroMQ REQ/REP input; for ``ipc://`` the socket file's mode and group decide who
    may submit (the file is set to them right after bind)."""

    address: str = REQUEST_ADDRESS
    mode: int | None = None  # permission bits of an ipc socket file; None for tcp
    group: int | None = None  # gid given to an ipc socket file; None: the daemon's group

    @property
    def ipc_path(self) -> str | None:
        """The socket file of an ``ipc://`` address (None for tcp, inproc, abstract)."""
        if not self.address.startswith("ipc://") or self.address.startswith("ipc://@"):
            return None
        return self.address[len("ipc://"):]


@dataclass(frozen=True)
class _Listens:
    """HOST:PORT helpers of the TCP inputs."""

    address: str

    @property
    def host(self) -> str:
        """The host to bind, without an IPv6 address's brackets."""
        return self.address.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


@dataclass(frozen=True)
class S3DaemonConfig(_Listens):
    """lsst-dm/s3daemon's line protocol over TCP; ``endpoint`` is resolved at load."""

    address: str = S3DAEMON["address"].default
    endpoint: str | None = None  # None: the config's default endpoint
    line_timeout: float = S3DAEMON["line_timeout"].default
    max_connections: int = S3DAEMON["max_connections"].default


@dataclass(frozen=True)
class HttpConfig(_Listens):
    """The HTTP submission API (s3nd-compatible) and the read-only views (``/metrics``,
    ``/version``; only these with ``upload`` false); ``endpoint`` is resolved at load
    (the one named, else ``default``, else the only one).  The token itself is never
    kept here: the input reads ``token_file`` once when it starts."""

    address: str = HTTP_ADDRESS
    endpoint: str | None = None
    token_file: str | None = None
    read_timeout: float = HTTP["read_timeout"].default
    upload: bool = HTTP["upload"].default


@dataclass(frozen=True)
class JetStreamConfig:
    """The shared work queue of several instances: a NATS JetStream stream with one
    durable pull consumer that every instance reads from."""

    servers: tuple[str, ...] = JETSTREAM["servers"].default
    stream: str = JETSTREAM["stream"].default
    subject: str = JETSTREAM["subject"].default
    consumer: str = JETSTREAM["consumer"].default
    ack_wait: float = JETSTREAM["ack_wait"].default
    max_deliver: int = JETSTREAM["max_deliver"].default
    replicas: int = JETSTREAM["replicas"].default
    #: requests taken by the other inputs go into the stream (see inputs/_bridge.py)
    bridge: bool = JETSTREAM["bridge"].default

    def summary(self) -> str:
        """Servers without their credentials (``user:password@`` is left out)."""
        hosts = ", ".join(s.split("://", 1)[0] + "://" + s.split("://", 1)[-1].rsplit("@", 1)[-1]
                          for s in self.servers)
        return (f"stream {self.stream} ({self.subject}), consumer {self.consumer} on {hosts} "
                f"(ack_wait {self.ack_wait:g} s, max_deliver {self.max_deliver})"
                + (", bridging the other inputs into it" if self.bridge else ""))


@dataclass(frozen=True)
class WatchConfig:
    """A watched directory: each file that is ready there becomes a ``file`` request
    with ``subject`` (inotify close-write or moved-to; polled: unchanged for ``settle``)."""

    path: str
    subject: str
    pattern: str | None = None  # trollsift pattern (with a {field}) or glob on the base name
    recursive: bool = WATCH["recursive"].default
    poll_interval: float | None = None  # seconds between looks; None: inotify
    settle: float = WATCH["settle"].default
    scan_existing: bool = WATCH["scan_existing"].default

    def summary(self) -> str:
        how = (f"polled every {self.poll_interval:g} s" if self.poll_interval is not None
               else "inotify")
        extra = [how, *(["recursive"] if self.recursive else []),
                 *([f"pattern {self.pattern}"] if self.pattern else []),
                 *([f"settle {self.settle:g} s"] if self.settle else []),
                 *([] if self.scan_existing else ["new files only"])]
        return f"{self.path} as {self.subject} ({', '.join(extra)})"


@dataclass(frozen=True)
class PublishConfig:
    """posttroll output; ``settings`` goes to create_publisher_from_dict_config."""

    settings: Mapping[str, Any]
    topic: str = PUBLISH["topic"].default
    failure_topic: str = PUBLISH["failure_topic"].default


@dataclass(frozen=True)
class ObjectConfig:
    """An ``object:`` block: what uploads give their objects, as templates (composed per
    file by ``trollpush.objects``).  A target's is already merged with its endpoint's.
    ``sse_c`` is the key read from ``sse_c_key_file`` at load; its ``repr`` and
    ``summary`` show only its MD5."""

    storage_class: str | None = None
    content_type: str | None = None  # "auto", a literal type, or None (the store's)
    cache_control: str | None = None
    content_disposition: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()  # (key, template), in the file's order
    tags: tuple[tuple[str, str], ...] = ()
    encryption: str = OBJECT["encryption"].default
    kms_key_id: str | None = None
    sse_c_key_file: str | None = None
    sse_c: SseCKey | None = None
    acl: str | None = None
    if_none_match: bool = OBJECT["if_none_match"].default

    def summary(self) -> str:
        """``storage_class=STANDARD_IA metadata=[platform] encryption=sse-c (key md5 …)``;
        empty when every option is at its default."""
        out = [f"{name}={getattr(self, name)}" for name in
               ("storage_class", "content_type", "cache_control", "content_disposition",
                "acl") if getattr(self, name) is not None]
        for name in ("metadata", "tags"):
            if entries := getattr(self, name):
                out.append(f"{name}=[{', '.join(k for k, _ in entries)}]")
        if self.encryption == "sse-c" and self.sse_c is not None:
            out.append(f"encryption=sse-c (key md5 {self.sse_c.md5})")
        elif self.encryption != "none":
            out.append(f"encryption={self.encryption}"
                       + (f" kms_key_id={self.kms_key_id}" if self.kms_key_id else ""))
        if self.if_none_match:
            out.append("if_none_match=true")
        return " ".join(out)


#: no ``object`` block: every option at its default (routing then does nothing at all)
NO_OBJECT = ObjectConfig()


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
    addressing_style: str = ENDPOINT["addressing_style"].default
    verify: bool | str = ENDPOINT["verify"].default  # or the path of a CA bundle
    # what completions tell consumers (trollpush.access)
    announce_filesystem: bool = ENDPOINT["announce_filesystem"].default
    public_url: str | None = None  # None: url
    # pool: connections opened at start and kept warm through idle gaps
    max_connections: int = ENDPOINT["max_connections"].default
    prewarm: int = ENDPOINT["prewarm"].default
    keepalive_interval: float = ENDPOINT["keepalive_interval"].default
    keepalive_timeout: float = ENDPOINT["keepalive_timeout"].default
    tcp_keepalive: bool = ENDPOINT["tcp_keepalive"].default
    connect_timeout: float = ENDPOINT["connect_timeout"].default
    # concurrency and multipart (names as in s3transfer)
    max_parallel: int = ENDPOINT["max_parallel"].default
    queue_timeout: float = ENDPOINT["queue_timeout"].default
    multipart_threshold: int = ENDPOINT["multipart_threshold"].default
    multipart_chunksize: int = ENDPOINT["multipart_chunksize"].default
    max_parts_in_flight: int = ENDPOINT["max_parts_in_flight"].default
    # time budget per attempt: (attempt_timeout + bytes / min_throughput) x factor^(n-1)
    attempt_timeout: float = ENDPOINT["attempt_timeout"].default
    min_throughput: float = ENDPOINT["min_throughput"].default
    timeout_factor: float = ENDPOINT["timeout_factor"].default
    tries: int = ENDPOINT["tries"].default
    bandwidth_limit: float | None = None  # bits per second, shared by all uploads
    checksum: str = ENDPOINT["checksum"].default
    #: what its uploads give their objects (targets' blocks are merged over it)
    object: ObjectConfig = NO_OBJECT

    def attempt_budget(self, size: int, attempt: int) -> float:
        """Seconds allowed for attempt number ``attempt`` (1-based) of a ``size``-byte body."""
        base = self.attempt_timeout + size / self.min_throughput
        return float(base * self.timeout_factor ** (attempt - 1))

    def summary(self) -> str:
        """One line for logs and ``check``: never shows secrets."""
        creds = "explicit keys" if self.access_key_id else (
            f"profile {self.profile}" if self.profile else "default credential chain")
        tls = "" if self.verify is True else (
            " verify=false" if self.verify is False else f" verify={self.verify}")
        limit = (f" bandwidth_limit={self.bandwidth_limit / 1e6:g}Mbit/s"
                 if self.bandwidth_limit else "")
        told = (f" public_url={self.public_url}" if self.public_url else "") + (
            "" if self.announce_filesystem else " announce_filesystem=false")
        return (f"{self.name}: {self.url or 'AWS'} region={self.region or 'default'} "
                f"({creds}) max_parallel={self.max_parallel} prewarm={self.prewarm} "
                f"tries={self.tries} attempt_timeout={self.attempt_timeout:g}s "
                f"multipart>={human(self.multipart_threshold)} "
                f"checksum={self.checksum}{tls}{limit}{told}"
                + (f" object: {options}" if (options := self.object.summary()) else ""))


@dataclass(frozen=True)
class TargetConfig:
    """Where files that match go, and where their completions are announced."""

    name: str
    destination: str
    endpoint: str
    topics: tuple[str, ...] = ()
    pattern: str | None = None
    #: any one set holding is enough; none: every file the target's topics and pattern take
    conditions: tuple[ConditionSet, ...] = ()
    aliases: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    publish_topic: str | None = None
    #: "always": upload even an unchanged file that already landed
    overwrite: str = TARGET["overwrite"].default
    #: the endpoint's object options with this target's merged over them
    object: ObjectConfig = NO_OBJECT


@dataclass(frozen=True)
class DaemonConfig:
    """Bounds of the daemon itself."""

    queue_size: int = DAEMON["queue_size"].default
    max_in_flight: int = DAEMON["max_in_flight"].default
    shutdown_grace: float = DAEMON["shutdown_grace"].default
    #: how long a request may keep retrying while the store is down
    max_age: float = DAEMON["max_age"].default
    max_request_bytes: int = DAEMON["max_request_bytes"].default  # larger is refused
    allowed_roots: tuple[str, ...] = ()  # real paths; empty: any local file
    #: bound on one file-system call (open, stat, a read): a hung NFS mount or a FIFO
    #: fails its request instead of holding a worker thread and the requests behind it
    file_timeout: float = DAEMON["file_timeout"].default
    #: see defaults.EVENT_LOOPS for why uvloop is the default
    event_loop: str = DAEMON["event_loop"].default
    #: reload when the config file changes (SIGHUP always reloads)
    watch_config: bool = DAEMON["watch_config"].default


@dataclass(frozen=True)
class JournalConfig:
    """Where accepted requests are recorded; ``path`` None keeps them in memory only."""

    path: str | None = None
    keep_landed_days: float = JOURNAL["keep_landed_days"].default


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    endpoints: Mapping[str, EndpointConfig]
    targets: tuple[TargetConfig, ...] = ()
    subscribe: SubscribeConfig | None = None
    requests: RequestsConfig | None = None
    s3daemon: S3DaemonConfig | None = None
    http: HttpConfig | None = None
    watch: tuple[WatchConfig, ...] = ()
    jetstream: JetStreamConfig | None = None
    publish: PublishConfig | None = None
    daemon: DaemonConfig = DaemonConfig()
    journal: JournalConfig = JournalConfig()
    source: str = "<config>"
    #: what is allowed but unwise (an SSE-C key sent over http://): logged at start and
    #: reload, shown by ``check``
    warnings: tuple[str, ...] = ()

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
            lines.append(_subscribe_line(self.subscribe))
        if self.requests:
            lines.append(_requests_line(self.requests))
        if self.s3daemon:
            s3d = self.s3daemon
            lines.append(f"input  s3daemon: line protocol on {s3d.address} -> endpoint "
                         f"{s3d.endpoint or self.default_endpoint()} (at most "
                         f"{s3d.max_connections} clients at once)")
        if self.http:
            auth = "bearer token" if self.http.token_file else "no authentication"
            lines.append(f"input  http: POST /upload on {self.http.address} ({auth}; uri "
                         f"uploads through endpoint {self.http.endpoint})"
                         if self.http.upload else f"views  http: GET /metrics, /status and "
                         f"/version on {self.http.address} ({auth}; no upload API)")
        lines += [f"input  watch: {w.summary()}" for w in self.watch]
        if self.jetstream:
            lines.append(f"input  jetstream: {self.jetstream.summary()}")
        lines.append(_publish_line(self.publish))
        for ep in self.endpoints.values():
            lines.append(f"endpoint {ep.summary()}")
        for t in self.targets:
            extra = []
            if t.topics:
                extra.append(f"topics {list(t.topics)}")
            if t.pattern:
                extra.append(f"pattern {t.pattern}")
            if t.conditions:
                extra.append(_conditions_summary(t.conditions))
            if options := t.object.summary():
                extra.append(f"object: {options}")
            lines.append(f"target {t.name}: -> {t.destination} @{t.endpoint}"
                         + (f" ({'; '.join(extra)})" if extra else ""))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _subscribe_line(subscribe: SubscribeConfig) -> str:
    s = subscribe.settings
    where = (f"nameserver {s['nameserver']}" if s.get("nameserver") not in (False, None)
             else ("addresses " + ", ".join(s.get("addresses", []))
                   if s.get("nameserver") is False else "nameserver localhost"))
    return f"input  subscribe: topics {list(subscribe.topics)} via {where}"


def _requests_line(requests: RequestsConfig) -> str:
    access = ""
    if requests.mode is not None:
        group = ""
        if requests.group is not None:
            try:
                group = f", group {grp.getgrgid(requests.group).gr_name}"
            except KeyError:
                group = f", group {requests.group}"
        access = f" (socket file mode {requests.mode:04o}{group})"
    return f"input  requests: REQ/REP on {requests.address}{access}"


def _publish_line(publish: PublishConfig | None) -> str:
    if publish is None:
        return "output publish: disabled (completions are not announced)"
    s = publish.settings
    if s.get("nameservers") is False:
        where = s.get("address") or f"port {s.get('port')}"
    else:
        ns = s.get("nameservers") or "multicast"
        where = f"a random port, registered with {ns}"
    return (f"output publish: {where} as {s.get('name')!r}, default topic "
            f"{publish.topic}, failures on {publish.failure_topic}")


def _conditions_summary(sets: tuple[ConditionSet, ...]) -> str:
    def one(cs: ConditionSet) -> str:
        return f"{len(cs.conditions)} condition(s), {len(cs.excepts)} except"
    if len(sets) == 1:
        return one(sets[0])
    return f"any of {len(sets)} condition sets: " + " | ".join(one(cs) for cs in sets)


def default_endpoint(endpoints: Mapping[str, EndpointConfig]) -> str | None:
    """The one named ``default``, else the only one, else none."""
    if "default" in endpoints:
        return "default"
    return next(iter(endpoints)) if len(endpoints) == 1 else None
