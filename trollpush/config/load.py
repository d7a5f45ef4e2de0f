"""Reading and validating a config file, completely, at load.

Every problem is collected (not just the first) and names the key, the value and what
was expected.  Plain keys (strings, choices, numbers, sizes, rates, booleans) are read by
``Validator.read`` from their rules in ``defaults``; the rest, and every rule that
involves more than one key, are written out here and in ``targets``.  Why this is
hand-written rather than pydantic or msgspec: "Why the validator is hand-written" in
``docs/config.md``.
"""

from __future__ import annotations

import grp
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from ..errors import ConfigError, ConfigProblem
from .defaults import (
    ADDRESS_PATTERN,
    DAEMON,
    ENDPOINT,
    HOST_PORT_PATTERN,
    HTTP,
    HTTP_ADDRESS,
    IPC_GROUP_MODE,
    IPC_MODE,
    JOURNAL,
    MAX_PART,
    MODE_PATTERN,
    PUBLISH,
    REQUEST_ADDRESS,
    REQUESTS,
    S3DAEMON,
    S3DAEMON_ADDRESS,
    SECTIONS,
    SUBSCRIBE,
    URL_PATTERN,
    default_journal_path,
)
from .jetstream import read_jetstream
from .model import (
    Config,
    DaemonConfig,
    EndpointConfig,
    HttpConfig,
    JournalConfig,
    PublishConfig,
    RequestsConfig,
    S3DaemonConfig,
    SubscribeConfig,
    TargetConfig,
    default_endpoint,
)
from .object_block import KeyFiles, read_object
from .targets import read_endpoint, read_targets
from .validator import Validator
from .watched import read_watch

_ADDRESS_RE = re.compile(ADDRESS_PATTERN)
_URL_RE = re.compile(URL_PATTERN)
_HOST_PORT_RE = re.compile(HOST_PORT_PATTERN)
#: sun_path holds 108 bytes with the terminating NUL
_IPC_PATH_MAX = 107


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
    v = Validator()
    if not isinstance(data, Mapping):
        raise ConfigError([ConfigProblem("<root>", data, "a mapping of sections")], source)
    v.no_unknown(data, "", SECTIONS)
    subscribe = _subscribe(v, data.get("subscribe"))
    requests = _requests(v, data.get("requests"), present="requests" in data)
    publish = _publish(v, data.get("publish"))
    key_files = KeyFiles()
    endpoints = _endpoints(v, data.get("endpoints"), key_files)
    s3daemon = _s3daemon(v, data.get("s3daemon"), endpoints, present="s3daemon" in data)
    targets = read_targets(v, data.get("targets"), endpoints, key_files)
    http = _http(v, data.get("http"), endpoints, present="http" in data)
    daemon = _daemon(v, data.get("daemon"))
    journal = _journal(v, data.get("journal"))
    watch = read_watch(v, data.get("watch"), daemon.allowed_roots)
    jetstream = read_jetstream(v, data.get("jetstream"), present="jetstream" in data)
    if (subscribe is None and requests is None and s3daemon is None
            and (http is None or not http.upload) and not watch and jetstream is None):
        v.problem("subscribe/requests", None,
                  "at least one input section (subscribe, requests, s3daemon, http, watch "
                  "or jetstream)"
                  + ("; http with upload: false takes no requests" if http else ""))
    _check_loop(v, subscribe, publish, targets)
    if subscribe is not None and not targets:
        v.problem("targets", data.get("targets"),
                  "at least one target when `subscribe` is set (messages need routes)")
    elif watch and not targets:
        v.problem("targets", data.get("targets"),
                  "at least one target when `watch` is set (its files need routes)")
    elif jetstream is not None and not targets:
        v.problem("targets", data.get("targets"),
                  "at least one target when `jetstream` is set (its messages need routes)")
    if v.problems:
        raise ConfigError(v.problems, source)
    return Config(endpoints=MappingProxyType(endpoints), targets=tuple(targets),
                  subscribe=subscribe, requests=requests, s3daemon=s3daemon, http=http,
                  watch=watch, jetstream=jetstream, publish=publish, daemon=daemon, journal=journal,
                  source=source, warnings=tuple(v.warnings))


# --- inputs and output -------------------------------------------------------------------


def _subscribe(v: Validator, raw: object) -> SubscribeConfig | None:
    data = v.mapping(raw, "subscribe")
    if data is None:
        return None
    v.no_unknown(data, "subscribe.", SUBSCRIBE)
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
    settings["receive_hwm"] = v.read(data, "subscribe.", "receive_hwm", SUBSCRIBE["receive_hwm"])
    if data.get("timeout") is not None:  # posttroll's own default otherwise
        v.read(data, "subscribe.", "timeout", SUBSCRIBE["timeout"])
    return SubscribeConfig(settings=MappingProxyType(settings))


def _requests(v: Validator, raw: object, *, present: bool) -> RequestsConfig | None:
    if raw is None:
        return RequestsConfig() if present else None
    data = v.mapping(raw, "requests")
    if data is None:
        return None
    v.no_unknown(data, "requests.", REQUESTS)
    address = v.string(data, "address", "requests.", default=REQUEST_ADDRESS)
    if address and not _ADDRESS_RE.match(address):
        v.problem("requests.address", address, f"an address like {REQUEST_ADDRESS}")
    address = address or REQUEST_ADDRESS
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
    mode = _mode(v, data.get("mode"), IPC_GROUP_MODE if group is not None else IPC_MODE)
    return RequestsConfig(address=address, mode=mode, group=group)


def _s3daemon(v: Validator, raw: object, endpoints: Mapping[str, EndpointConfig], *,
              present: bool) -> S3DaemonConfig | None:
    """``s3daemon:`` with nothing under it: on at the default address."""
    data = v.mapping(raw, "s3daemon") if raw is not None else ({} if present else None)
    if data is None:
        return None
    v.no_unknown(data, "s3daemon.", S3DAEMON)
    address = _host_port(v, data, "s3daemon", S3DAEMON_ADDRESS,
                         f"HOST:PORT like {S3DAEMON_ADDRESS} (a port up to 65535; an IPv6 "
                         "address in brackets: [::1]:15557)")
    endpoint = read_endpoint(v, data, "s3daemon.", endpoints)
    return S3DaemonConfig(address=address, endpoint=endpoint,
                          **v.read_all(data, "s3daemon.", S3DAEMON, skip=("endpoint",)))


def _host_port(v: Validator, data: Mapping[str, Any], section: str, default: str,
               expected: str) -> str:
    """The section's listening ``address``, HOST:PORT (``default`` when absent or wrong,
    which is reported as not what was ``expected``)."""
    address = v.string(data, "address", f"{section}.", default=default) or default
    if not (_HOST_PORT_RE.match(address) and int(address.rsplit(":", 1)[1]) <= 65535):
        v.problem(f"{section}.address", address, expected)
        return default
    return address


def _check_ipc_path(v: Validator, path: str, address: str) -> None:
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


def _mode(v: Validator, value: object, default: int) -> int:
    """Permission bits, as a quoted octal string ("0660", "660", "0o660").  An unquoted
    number is refused: YAML reads 0660 as octal but 440 as decimal (0o670), and the two
    cannot be told apart afterwards; a wrong guess would open the socket to others."""
    if value is None:
        return default
    if isinstance(value, str) and re.fullmatch(MODE_PATTERN, text := value.strip()):
        return int(text.removeprefix("0o"), 8)
    v.problem("requests.mode", value, "permission bits as a quoted octal string like "
              "'0660' (at most 0777; unquoted, YAML reads a number)")
    return default


def _group(v: Validator, value: object) -> int | None:
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


def _http(v: Validator, raw: object, endpoints: Mapping[str, EndpointConfig], *,
          present: bool) -> HttpConfig | None:
    if raw is None and not present:
        return None
    data = v.mapping(raw if raw is not None else {}, "http")
    if data is None:
        return None
    v.no_unknown(data, "http.", HTTP)
    address = _host_port(v, data, "http", HTTP_ADDRESS,
                         f"HOST:PORT like {HTTP_ADDRESS} (port at most 65535; an IPv6 "
                         "address in brackets)")
    endpoint = v.string(data, "endpoint", "http.")
    plain = v.read_all(data, "http.", HTTP, skip=("endpoint",))
    if endpoint is None:
        endpoint = default_endpoint(endpoints)
        if endpoint is None and endpoints and plain["upload"]:
            v.problem("http.endpoint", None, f"the endpoint for requests that give a uri: "
                      f"one of {', '.join(endpoints)} (none is called default)")
    elif endpoints and endpoint not in endpoints:
        v.problem("http.endpoint", endpoint, f"a defined endpoint ({', '.join(endpoints)})")
    token_file = v.string(data, "token_file", "http.")
    if token_file is not None:
        token_file = os.path.expanduser(token_file)
        _check_token_file(v, token_file)
    return HttpConfig(address=address, endpoint=endpoint, token_file=token_file, **plain)


def _check_token_file(v: Validator, path: str) -> None:
    """A readable file whose first line is the token (it is read again at start)."""
    if not os.path.isabs(path):
        v.problem("http.token_file", path, "an absolute path")
        return
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the open
            v.problem("http.token_file", path, "a regular file")
            return
        with open(path, "rb") as f:
            first = f.readline(4096).strip()
    except OSError as err:
        v.problem("http.token_file", path, f"a readable file ({err.strerror})")
        return
    if not first:
        v.problem("http.token_file", path, "a file whose first line is the token (it is "
                  "empty)")


def _publish(v: Validator, raw: object) -> PublishConfig | None:
    data = v.mapping(raw, "publish")
    if data is None:
        return None
    v.no_unknown(data, "publish.", PUBLISH)
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
    topics = {}
    for key in ("topic", "failure_topic"):
        default = PUBLISH[key].default
        topics[key] = v.topic(data.get(key, default), f"publish.{key}") or default
    return PublishConfig(settings=MappingProxyType(settings), **topics)


# --- endpoints ---------------------------------------------------------------------------

#: pool sizes that default to follow each other, so that setting either one is enough
_POOL = ("max_connections", "max_parallel", "prewarm")


def _endpoints(v: Validator, raw: object, key_files: KeyFiles) -> dict[str, EndpointConfig]:
    data = v.mapping(raw, "endpoints")
    if not data:
        v.problem("endpoints", raw, "a mapping of at least one named S3 endpoint")
        return {}
    out = {}
    for name, ep in data.items():
        e = v.mapping(ep if ep is not None else {}, f"endpoints.{name}")
        if e is not None:
            out[str(name)] = _endpoint(v, str(name), e, key_files)
    return out


def _endpoint(v: Validator, name: str, e: Mapping[str, Any], key_files: KeyFiles
              ) -> EndpointConfig:
    p = f"endpoints.{name}."
    v.no_unknown(e, p, ENDPOINT)
    url, public_url = (_url(v, e, p, key) for key in ("url", "public_url"))
    if (e.get("access_key_id") is None) != (e.get("secret_access_key") is None):
        v.problem(f"{p}secret_access_key", e.get("secret_access_key"),
                  "access_key_id and secret_access_key given together, or neither")
    connections, parallel, prewarm = _pool(v, e, p)
    rest = v.read_all(e, p, ENDPOINT, skip=_POOL)
    if rest["multipart_chunksize"] > MAX_PART:
        v.problem(f"{p}multipart_chunksize", e.get("multipart_chunksize"),
                  "at most 5GiB (S3's largest part)")
    block = read_object(v, e.get("object"), f"{p}object", key_files=key_files, url=url)
    return EndpointConfig(name=name, url=url, public_url=public_url, object=block,
                          max_connections=connections,
                          max_parallel=parallel, prewarm=prewarm,
                          verify=_verify(v, e.get("verify", ENDPOINT["verify"].default),
                                         f"{p}verify"), **rest)


def _url(v: Validator, e: Mapping[str, Any], p: str, key: str) -> str | None:
    """An endpoint URL key: a typo is caught at load, not at the first upload."""
    url: str | None = v.string(e, key, p)
    if url and not _URL_RE.match(url):
        v.problem(f"{p}{key}", url, "an http:// or https:// URL")
    return url


def _verify(v: Validator, value: object, key: str) -> bool | str:
    """true, false, or a CA bundle that is there now: a typo would otherwise surface as
    a TLS error on the first upload, long after ``check`` said the config was fine."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, str) or not value.strip():
        v.problem(key, value, "true, false, or the path of a CA bundle (PEM)")
        return True
    path = os.path.expanduser(value)
    if not os.path.isabs(path):
        v.problem(key, value, "an absolute path of a CA bundle (PEM)")
    elif not os.path.isfile(path) or not os.access(path, os.R_OK):
        v.problem(key, value, "a readable CA bundle file (PEM): there is none")
    return path


def _pool(v: Validator, e: Mapping[str, Any], p: str) -> tuple[int, int, int]:
    """max_connections, max_parallel and prewarm."""
    parallel = e.get("max_parallel")
    connections: int = v.read(
        e, p, "max_connections", ENDPOINT["max_connections"],
        default=max(ENDPOINT["max_connections"].default, parallel or 0)
        if isinstance(parallel, int) else None)
    parallel = v.read(e, p, "max_parallel", ENDPOINT["max_parallel"],
                      default=min(ENDPOINT["max_parallel"].default, connections))
    if connections < parallel:
        v.problem(f"{p}max_connections", connections,
                  f"at least max_parallel ({parallel}): every upload needs a connection")
    prewarm = v.read(e, p, "prewarm", ENDPOINT["prewarm"],
                     default=min(ENDPOINT["prewarm"].default, connections))
    if prewarm > connections:
        v.problem(f"{p}prewarm", prewarm, f"at most max_connections ({connections})")
    return connections, parallel, prewarm


def _check_loop(v: Validator, subscribe: SubscribeConfig | None, publish: PublishConfig | None,
                targets: list[TargetConfig]) -> None:
    """Refuse a daemon that would hear its own announcements: each would come back as input."""
    if subscribe is None or publish is None:
        return
    sub, pub = subscribe.settings, publish.settings
    # read what is there as it is: a wrong `addresses` is reported by _subscribe, and
    # anything but a name or a list of names in `services` counts as all services
    if sub.get("nameserver") is False:
        addresses = sub.get("addresses")
        hears_self = isinstance(addresses, list) and pub.get("address") in addresses
    else:
        services = sub.get("services", "")
        services = [services] if isinstance(services, str) else (
            services if isinstance(services, list) else [])
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


# --- the daemon and its journal ----------------------------------------------------------


def _daemon(v: Validator, raw: object) -> DaemonConfig:
    data = v.mapping(raw, "daemon")
    if data is None:
        return DaemonConfig()
    v.no_unknown(data, "daemon.", DAEMON)
    roots = data.get("allowed_roots") or []
    if not isinstance(roots, list) or not all(isinstance(r, str) and os.path.isabs(
            os.path.expanduser(r)) for r in roots):
        v.problem("daemon.allowed_roots", roots, "a list of absolute directory paths")
        roots = []
    return DaemonConfig(
        allowed_roots=tuple(os.path.realpath(os.path.expanduser(r)) for r in roots),
        **v.read_all(data, "daemon.", DAEMON))


def _journal(v: Validator, raw: object) -> JournalConfig:
    """Durable by default (the user's state directory); ``path: memory`` opts out."""
    data = v.mapping(raw, "journal") or {}
    v.no_unknown(data, "journal.", JOURNAL)
    path = v.string(data, "path", "journal.", default=str(default_journal_path()))
    return JournalConfig(path=None if path == "memory" else os.path.expanduser(path or ""),
                         **v.read_all(data, "journal.", JOURNAL))
