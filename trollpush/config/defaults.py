"""Every key a config file may hold: its default, what it accepts, and what it means.

The one source of the defaults.  The frozen dataclasses (``model``), the validator
(``load``) and the JSON Schema (``schema``) all read them from here, so none of the three
can drift from the others.  ``client`` and ``cli`` import it for REQUEST_ADDRESS: it
needs nothing but the standard library and ``checksum``'s list of algorithms.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..models import SSE_MODES
from ..objects import CANNED_ACLS, STORAGE_CLASSES
from ..transfer.checksum import ALGORITHMS
from .units import MiB

#: where the REQ/REP input binds, and where ``trollpush send`` connects, unless told
REQUEST_ADDRESS = "tcp://127.0.0.1:15556"
#: where the s3daemon line-protocol input listens unless told (s3daemon's own port,
#: 15555, is s3nd's too, and so the HTTP input's)
S3DAEMON_ADDRESS = "127.0.0.1:15557"
#: where the HTTP input binds unless told: loopback, on s3nd's port
HTTP_ADDRESS = "127.0.0.1:15555"
#: messages a SUB socket may buffer per publisher: a burst of 50,000 in 2 s fits with
#: room to spare while the reader catches up (libzmq's default, 1,000, drops the rest)
RECEIVE_HWM = 100_000
#: where the jetstream input connects unless told (nats-server's own default port)
NATS_SERVER = "nats://127.0.0.1:4222"
#: a NATS server URL: nats:// or tls://, then [user[:password]@]host[:port], no path
NATS_URL_PATTERN = r"^(nats|tls)://[^\s/]+$"
#: a stream or consumer name: no blanks, dots, wildcards or path separators
NATS_NAME_PATTERN = r"^[^\s.*>/\\]+$"
#: a NATS subject to publish on: dot-separated tokens, no wildcards, no blanks
NATS_SUBJECT_PATTERN = r"^[^\s.*>]+(\.[^\s.*>]+)*$"
#: uvloop first: libuv spends less per callback and socket call than asyncio's own loop,
#: and at thousands of small files a second the loop thread is the daemon's bottleneck
EVENT_LOOPS = ("uvloop", "asyncio")
#: socket file modes of an ipc:// request address: only the daemon's user, or its group
IPC_MODE = 0o600
IPC_GROUP_MODE = 0o660
#: S3's smallest part (but the last) and largest part
MIN_PART = 5 * MiB
MAX_PART = 5 * 1024 * MiB
#: what the validator and the JSON Schema both match (ECMA-262 and Python alike)
ADDRESS_PATTERN = r"^(tcp://[^\s:]+:\d+|ipc://\S+|inproc://\S+)$"
URL_PATTERN = r"^https?://[^\s/]+"
MODE_PATTERN = r"(0o?)?0?[0-7]{1,3}"  # octal, at most 0777; surrounding blanks allowed
#: HOST:PORT, the host a name, an IPv4 address or a bracketed IPv6 address
HOST_PORT_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]/]+):\d{1,5}$"
#: a numeric condition as trollmoves' dispatcher writes it ('<30', '>= 5', '!=-2.5e3'):
#: the operator first, then a decimal number; blanks (no newline) between and after
COMPARISON_PATTERN = (r"^(<=|>=|==|!=|<|>)[ \t]*([+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)"
                      r"([eE][+-]?[0-9]+)?)[ \t]*$")
#: a condition string that starts (maybe after blanks) like an operator: a comparison,
#: or a mistake (the dispatcher raises on '<abc', '=2', '<'; compares ' <30' as text)
OPERATOR_START = r"^\s*[<>=!]"


def default_journal_path() -> Path:
    """``$XDG_STATE_HOME/trollpush/journal.sqlite``, else under ``~/.local/state``."""
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "state"
    return root / "trollpush" / "journal.sqlite"


class Kind(enum.Enum):
    """What a key accepts.  The first eight are read by the validator's one generic
    reader; the others have rules of their own, written out in ``load``."""

    STRING = "string"
    CHOICE = "choice"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    SIZE = "size"  # bytes: a number or a string with a unit (16MiB)
    BYTE_RATE = "byte rate"  # bytes per second: a number or 1MiB/s
    BIT_RATE = "bit rate"  # bits per second: a number or 100Mbit
    ADDRESS = "address"  # tcp://HOST:PORT, ipc:///PATH, inproc://NAME
    ADDRESSES = "addresses"
    HOST_PORT = "host:port"  # a TCP listening address without a scheme
    TOPIC = "topic"  # a posttroll subject (or subject template)
    TOPICS = "topics"  # one subject or a list of them
    NAMES = "names"  # a string or a list of strings
    NAMESERVER = "nameserver"  # false or a host
    NAMESERVERS = "nameservers"  # false or a list of hosts
    PORT = "port"
    URL = "url"
    VERIFY = "verify"  # true, false or the path of a CA bundle
    MODE = "mode"  # permission bits as a quoted octal string
    GROUP = "group"  # a group name or gid
    PATH = "path"
    PATHS = "paths"  # a list of absolute directories
    PATTERN = "pattern"  # a trollsift pattern
    DESTINATION = "destination"  # an s3://BUCKET/KEY trollsift template
    CONDITIONS = "conditions"
    ALIASES = "aliases"
    OBJECT = "object"  # an endpoint's or target's object options (the OBJECT table)
    STORAGE_CLASS = "storage class"  # an upper-case name (AWS's, or a store's own)
    MEDIA_TYPE = "media type"  # auto, or type/subtype with optional parameters
    HEADER = "header value"  # printable ASCII
    METADATA = "metadata"  # key: trollsift template, sent as x-amz-meta-KEY
    TAGS = "tags"  # key: trollsift template, object tags
    NATS_URLS = "NATS URLs"  # one nats:// URL or a list of them
    NATS_NAME = "NATS name"  # a stream or consumer name
    NATS_SUBJECT = "NATS subject"  # a subject without wildcards


@dataclass(frozen=True)
class Key:
    """One key of a section.  ``default`` None means "absent" (or a default that depends
    on other keys or on the host, told in ``doc``); ``minimum`` and ``maximum`` bound
    numbers, sizes and rates; ``example`` is the unit-bearing example a size or rate
    problem shows."""

    kind: Kind
    doc: str
    default: Any = None
    minimum: float = 0.0
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    example: str = ""
    required: bool = False


def _section(**keys: Key) -> Mapping[str, Key]:
    return MappingProxyType(keys)


#: posttroll's subscriber keys, read by trollpush too, plus its own receive_hwm
SUBSCRIBE = _section(
    topics=Key(Kind.TOPICS, "Subject prefixes to subscribe to.", required=True),
    nameserver=Key(Kind.NAMESERVER, "false: connect to `addresses` only; a host: ask that "
                   "posttroll nameserver for the producers (default: localhost)."),
    addresses=Key(Kind.ADDRESSES, "Publishers to connect to; required when nameserver is "
                  "false, extra ones otherwise."),
    services=Key(Kind.NAMES, "Nameserver mode: the service names to subscribe to "
                 "(default: all)."),
    addr_listener=Key(Kind.BOOLEAN, "Nameserver mode: also connect to publishers "
                      "announced later.", default=False),
    timeout=Key(Kind.NUMBER, "Nameserver mode: seconds one question to the nameserver "
                "waits.", default=10.0, minimum=0.1),
    receive_hwm=Key(Kind.INTEGER, "Messages each subscriber socket may hold per publisher "
                    "(0: no limit).", default=RECEIVE_HWM),
)

REQUESTS = _section(
    address=Key(Kind.ADDRESS, "Where the REQ/REP input binds (port 0: a free port).",
                default=REQUEST_ADDRESS),
    mode=Key(Kind.MODE, "ipc:// only: the socket file's permission bits, quoted "
             "(default: \"0600\", or \"0660\" with group)."),
    group=Key(Kind.GROUP, "ipc:// only: the group given to the socket file (default: the "
              "daemon's group)."),
)

S3DAEMON = _section(
    address=Key(Kind.HOST_PORT, "Where the s3daemon line-protocol input listens, "
                "HOST:PORT (port 0: a free port).", default=S3DAEMON_ADDRESS),
    endpoint=Key(Kind.STRING, "The endpoint its uploads go through (default: `default`, "
                 "else the only endpoint)."),
    line_timeout=Key(Kind.NUMBER, "Seconds a client has, once connected, to send its "
                     "whole line.", default=10.0, minimum=0.1),
    max_connections=Key(Kind.INTEGER, "Clients served at once (each until its answer); "
                        "more wait in the kernel's listen queue.", default=64, minimum=1),
)

HTTP = _section(
    address=Key(Kind.HOST_PORT, "Where the HTTP API listens, HOST:PORT (port 0: a free "
                "port).", default=HTTP_ADDRESS),
    endpoint=Key(Kind.STRING, "The endpoint that uploads requests giving a `uri` "
                 "(default: `default`, else the only endpoint)."),
    token_file=Key(Kind.PATH, "A file holding a bearer token, read once at start: then "
                   "every request needs `Authorization: Bearer TOKEN` (default: none)."),
    read_timeout=Key(Kind.NUMBER, "Seconds a client has to send its request, head and "
                     "body; a slower one is answered 408 and disconnected.", default=10.0,
                     minimum=0.1),
    upload=Key(Kind.BOOLEAN, "Serve the upload API (POST /upload); false: only GET "
               "/metrics, /status and /version (then another input takes the requests).",
               default=True),
)

#: the shared work queue of several instances (NATS JetStream); ``bridge`` comes later
JETSTREAM = _section(
    servers=Key(Kind.NATS_URLS, "The NATS servers to connect to (nats:// or tls:// URLs; "
                "one is enough, the others are tried when it is down).",
                default=(NATS_SERVER,)),
    stream=Key(Kind.NATS_NAME, "The stream that holds the requests; created if missing "
               "(work-queue retention, file storage).", default="TROLLPUSH"),
    subject=Key(Kind.NATS_SUBJECT, "The subject the requests are published on (the "
                "stream's only subject when trollpush creates it).",
                default="trollpush.requests"),
    consumer=Key(Kind.NATS_NAME, "The durable pull consumer every instance shares; "
                 "created if missing.", default="trollpush"),
    ack_wait=Key(Kind.NUMBER, "Seconds a request may go without news from its instance "
                 "before JetStream gives it to another (a running request says it is alive "
                 "every third of this).", default=60.0, minimum=1),
    max_deliver=Key(Kind.INTEGER, "Deliveries of one request at most: a file missing on "
                    "every instance that tried fails with file_missing at the last.",
                    default=10, minimum=1),
    replicas=Key(Kind.INTEGER, "Copies of the stream a NATS cluster keeps, when trollpush "
                 "creates it.", default=1, minimum=1, maximum=5),
    bridge=Key(Kind.BOOLEAN, "Publish what the other inputs take into the stream instead of "
               "doing it here; any instance's jetstream input then does it (only a restart "
               "switches it).", default=False),
)

#: posttroll's publisher keys, passed on as they are, plus trollpush's two topics
PUBLISH = _section(
    name=Key(Kind.STRING, "The publisher's name (for the nameserver).", required=True),
    address=Key(Kind.ADDRESS, "Bind address when nameservers is false (or give port)."),
    port=Key(Kind.PORT, "Port to bind; 0: a random one."),
    nameservers=Key(Kind.NAMESERVERS, "false: a plain publisher; a list of hosts: register "
                    "with them (default: multicast)."),
    aliases=Key(Kind.NAMES, "Extra names to register (nameserver modes)."),
    broadcast_interval=Key(Kind.NUMBER, "Seconds between address announcements "
                           "(nameserver modes).", default=2.0),
    min_port=Key(Kind.PORT, "Lowest port for a random port."),
    max_port=Key(Kind.PORT, "Highest port for a random port."),
    topic=Key(Kind.TOPIC, "Subject of completions (targets without publish_topic, direct "
              "requests).", default="/trollpush/uploaded/"),
    failure_topic=Key(Kind.TOPIC, "Subject of every failure message.",
                      default="/trollpush/failed"),
)

ENDPOINT = _section(
    url=Key(Kind.URL, "The S3 endpoint URL, for non-AWS stores (default: AWS)."),
    region=Key(Kind.STRING, "Region name (default: botocore's)."),
    profile=Key(Kind.STRING, "A named profile of ~/.aws/config and ~/.aws/credentials."),
    access_key_id=Key(Kind.STRING, "Explicit key, given together with secret_access_key."),
    secret_access_key=Key(Kind.STRING, "Explicit secret, given together with access_key_id."),
    session_token=Key(Kind.STRING, "Explicit session token."),
    verify=Key(Kind.VERIFY, "TLS certificates: true checks them against AWS_CA_BUNDLE "
               "(or the profile's ca_bundle) else the system's CAs; false does not check "
               "them; a path checks them against that CA bundle (PEM).", default=True),
    addressing_style=Key(Kind.CHOICE, "Bucket addressing; many non-AWS stores need path.",
                         default="auto", choices=("auto", "path", "virtual")),
    announce_filesystem=Key(Kind.BOOLEAN, "Completions give each file `filesystem` (the "
                            "fsspec JSON of an s3fs S3FileSystem for this endpoint, no "
                            "credentials) and `path`, so that consumers can open it.",
                            default=True),
    public_url=Key(Kind.URL, "The endpoint URL announced to consumers, when theirs differs "
                   "from `url` (default: `url`)."),
    max_connections=Key(Kind.INTEGER, "Pool size, at least max_parallel (and follows it "
                        "when that is larger).", default=32, minimum=1),
    prewarm=Key(Kind.INTEGER, "Connections opened at start and kept warm, at most "
                "max_connections (0: none).", default=8),
    keepalive_interval=Key(Kind.NUMBER, "Seconds idle before the warm connections are "
                           "touched again (0: never).", default=15.0),
    keepalive_timeout=Key(Kind.NUMBER, "Seconds an idle pooled connection is kept.",
                          default=3600.0, minimum=1),
    tcp_keepalive=Key(Kind.BOOLEAN, "TCP keep-alive on every pool socket.", default=True),
    connect_timeout=Key(Kind.NUMBER, "TCP/TLS connect timeout, seconds.", default=5.0,
                        minimum=0.001),
    max_parallel=Key(Kind.INTEGER, "Requests in flight through this endpoint (at most "
                     "max_connections when only that is set).", default=32, minimum=1),
    queue_timeout=Key(Kind.NUMBER, "Seconds a file may wait for a slot.", default=300.0,
                      minimum=0.001),
    multipart_threshold=Key(Kind.SIZE, "Files this large or larger go as multipart uploads.",
                            default=64 * MiB, minimum=MIN_PART),
    multipart_chunksize=Key(Kind.SIZE, "Part size, at most 5GiB (raised so that no file "
                            "needs more than 10,000 parts).", default=16 * MiB,
                            minimum=MIN_PART, maximum=MAX_PART),
    max_parts_in_flight=Key(Kind.INTEGER, "Parts of one file uploaded at once.", default=8,
                            minimum=1),
    attempt_timeout=Key(Kind.NUMBER, "Base seconds allowed for one attempt of one request.",
                        default=10.0, minimum=0.001),
    min_throughput=Key(Kind.BYTE_RATE, "The budget grows by the body size divided by this.",
                       default=1 * MiB, minimum=1),
    timeout_factor=Key(Kind.NUMBER, "Each retry's budget is the previous one times this.",
                       default=1.5, minimum=1),
    tries=Key(Kind.INTEGER, "Attempts per request (per part), counting the first.",
              default=4, minimum=1),
    bandwidth_limit=Key(Kind.BIT_RATE, "Aggregate limit for the endpoint, in bits per "
                        "second (Linux; default: none).", minimum=8000, example="100Mbit"),
    checksum=Key(Kind.CHOICE, "Checksum the store verifies on every body.",
                 default="crc32c", choices=ALGORITHMS),
    object=Key(Kind.OBJECT, "What uploads through this endpoint give their objects "
               "(storage class, content type, metadata, tags, encryption, ACL, "
               "if_none_match); targets override it key by key."),
)

#: what an upload gives its object (an ``object:`` block of an endpoint or a target)
OBJECT = _section(
    storage_class=Key(Kind.STORAGE_CLASS, "S3 storage class: " + ", ".join(STORAGE_CLASSES)
                      + ", or a store's own upper-case name (default: the bucket's)."),
    content_type=Key(Kind.MEDIA_TYPE, "auto: from the object's name (a compressed file "
                     "gets the compressed type); or a type/subtype (default: the store's)."),
    cache_control=Key(Kind.HEADER, "Cache-Control stored with the object."),
    content_disposition=Key(Kind.HEADER, "Content-Disposition stored with the object."),
    metadata=Key(Kind.METADATA, "User metadata (x-amz-meta-KEY): KEY: trollsift template "
                 "over the message's metadata; in a target, an entry null removes the "
                 "endpoint's entry, metadata: null all of them."),
    tags=Key(Kind.TAGS, "Object tags: KEY: trollsift template (at most 10); in a target, "
             "an entry null removes the endpoint's entry, tags: null all of them."),
    encryption=Key(Kind.CHOICE, "Server-side encryption asked for (none: the bucket's "
                   "default applies).", default="none", choices=tuple(SSE_MODES)),
    kms_key_id=Key(Kind.STRING, "sse-kms only: the KMS key (default: the account's AWS "
                   "managed key)."),
    sse_c_key_file=Key(Kind.PATH, "sse-c only, and required with it: an absolute path of "
                       "a file holding the 32-byte key, raw or base64 (read once at load, "
                       "never shown)."),
    acl=Key(Kind.CHOICE, "A canned ACL (default: none sent).", choices=CANNED_ACLS),
    if_none_match=Key(Kind.BOOLEAN, "true: create only; an object already at the key is "
                      "never overwritten (the same file there counts as done, another "
                      "fails the upload with reason exists).",
                      default=False),
)

TARGET = _section(
    name=Key(Kind.STRING, "Used in logs, failures and `trollpush match`; unique "
             "(default: target0, target1, ... by position)."),
    topics=Key(Kind.TOPICS, "Subject prefixes this target takes (default: any)."),
    pattern=Key(Kind.PATTERN, "trollsift pattern matched against the file's base name."),
    conditions=Key(Kind.CONDITIONS, "field: value(s) or a comparison ('<30') the "
                   "metadata must hold, with an optional except: block; or a list of such "
                   "sets, any one of which is enough (trollmoves' dispatcher form)."),
    aliases=Key(Kind.ALIASES, "field: {value: alias}, used only when composing."),
    destination=Key(Kind.DESTINATION, "Where the file goes: an s3://BUCKET/KEY trollsift "
                    "template.", required=True),
    endpoint=Key(Kind.STRING, "Which endpoint uploads it (default: `default`, else the "
                 "only endpoint)."),
    publish_topic=Key(Kind.TOPIC, "Subject template of this target's completions "
                      "(default: publish.topic)."),
    overwrite=Key(Kind.CHOICE, "changed: answer an unchanged file that already landed "
                  "from the journal; always: upload every time.", default="changed",
                  choices=("changed", "always")),
    object=Key(Kind.OBJECT, "Object options: the endpoint's, overridden key by key "
               "(metadata and tags entry by entry; encryption, kms_key_id and "
               "sse_c_key_file together)."),
)

DAEMON = _section(
    queue_size=Key(Kind.INTEGER, "Accepted requests waiting to be dispatched.",
                   default=10000, minimum=1),
    max_in_flight=Key(Kind.INTEGER, "Requests processed at the same time.", default=256,
                      minimum=1),
    shutdown_grace=Key(Kind.NUMBER, "Seconds queued and running requests may take to "
                       "finish after SIGINT or SIGTERM.", default=30.0),
    max_age=Key(Kind.NUMBER, "Seconds a request may keep retrying while the store is "
                "down.", default=3600.0, minimum=1),
    max_request_bytes=Key(Kind.SIZE, "A larger message or request is refused.",
                          default=MiB, minimum=1024),
    allowed_roots=Key(Kind.PATHS, "Only files really under one of these directories may "
                      "be uploaded (default: any local file)."),
    file_timeout=Key(Kind.NUMBER, "Bound in seconds on one file-system call on a source "
                     "file.", default=30.0, minimum=0.1),
    event_loop=Key(Kind.CHOICE, "The event loop `trollpush run` uses.",
                   default=EVENT_LOOPS[0], choices=EVENT_LOOPS),
    watch_config=Key(Kind.BOOLEAN, "Reload the config when its file changes (as on "
                     "SIGHUP); the file is looked at every second.", default=False),
)

JOURNAL = _section(
    path=Key(Kind.PATH, "The SQLite journal, or memory (default: "
             "$XDG_STATE_HOME/trollpush/journal.sqlite, else under ~/.local/state)."),
    keep_landed_days=Key(Kind.NUMBER, "Days landed files are remembered, to answer an "
                         "unchanged repeat without uploading.", default=7.0),
)

#: the directory watcher: one entry per watched directory (a list, like targets)
WATCH = _section(
    path=Key(Kind.PATH, "The directory to watch: an absolute path (it may appear later: "
             "a missing or unreadable directory is retried).", required=True),
    subject=Key(Kind.TOPIC, "Subject of the file messages it makes (targets' topics select "
                "on it).", required=True),
    pattern=Key(Kind.PATTERN, "A trollsift pattern or a glob on the base name; other files "
                "are ignored (default: every file)."),
    recursive=Key(Kind.BOOLEAN, "Watch the subdirectories too (symlinks are never "
                  "followed).", default=False),
    poll_interval=Key(Kind.NUMBER, "Seconds between looks: poll instead of inotify (NFS, "
                      "Lustre, GPFS, CephFS see no remote inotify events).", minimum=0.05),
    settle=Key(Kind.NUMBER, "Seconds a polled (or scanned) file must stay unchanged before "
               "it counts as ready.", default=0.0),
    scan_existing=Key(Kind.BOOLEAN, "At start, files already there are taken too (the "
                      "journal answers those that already landed).", default=True),
)

#: the top-level sections, in the order the reference documents them
SECTIONS: Mapping[str, Mapping[str, Key]] = MappingProxyType({
    "subscribe": SUBSCRIBE, "requests": REQUESTS, "s3daemon": S3DAEMON, "http": HTTP,
    "watch": WATCH, "jetstream": JETSTREAM, "publish": PUBLISH, "endpoints": ENDPOINT,
    "targets": TARGET, "daemon": DAEMON, "journal": JOURNAL})
SECTION_DOCS: Mapping[str, str] = MappingProxyType({
    "subscribe": "posttroll pub-sub input (at least one input section is required).",
    "requests": "ZeroMQ REQ/REP input, also for `trollpush send` (with nothing under it: "
                "on at the default address).",
    "s3daemon": "lsst-dm/s3daemon's line protocol over TCP, for its unchanged clients "
                "(with nothing under it: on at the default address).",
    "http": "HTTP submission API, compatible with s3nd (POST /upload); off unless "
            "present (with nothing under it: on at the default address).",
    "watch": "Directory watcher input: a list of directories whose ready files are "
             "uploaded.",
    "jetstream": "Requests shared by several instances through a NATS JetStream work "
                 "queue (needs `pip install 'trollpush[jetstream]'`; with nothing under "
                 "it: on with the defaults).",
    "publish": "posttroll output for completions and failures (default: none published).",
    "endpoints": "S3 connection profiles by a name you choose; at least one.",
    "targets": "Routing rules; at least one when subscribe, watch or jetstream is set.",
    "daemon": "Queue and concurrency limits, shutdown grace, the event loop.",
    "journal": "Where accepted requests are recorded, and how long landed files are "
               "remembered.",
})
