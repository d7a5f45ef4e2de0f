"""``trollpush convert-dispatch``: a trollmoves dispatcher config as a trollpush config.

Pure: the dispatcher's YAML text in, a trollpush config's text out.  Whatever the two
do differently is said where it happens, as a comment in the output, and what changes
behaviour is also a warning, so that a user reviews the differences instead of meeting
them in production.  The rules, and why, are in docs/migrating.md; the keys are checked
against trollmoves' own ``Dispatcher.get_destinations`` in tests/test_convert.py.
"""
# shape: one pure step read top to bottom (destinations, aliases, endpoints, sections); the
# dispatcher's rules stay next to each other rather than in modules nothing else imports

from __future__ import annotations

import json
import posixpath
import re
import string
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import yaml

from .errors import ConfigError, ConfigProblem
from .route import template_fields

SUBSCRIBER = "posttroll_subscriber"
#: what the dispatcher reads from a destination, and from one of its dispatch_configs
CLIENT_KEYS = frozenset({"host", "directory", "filepattern", "connection_parameters",
                         "aliases", "dispatch_configs", "publish_topic"})
ITEM_KEYS = frozenset({"topics", "conditions", "host", "directory", "filepattern",
                       "connection_parameters", "aliases"})
#: why trollpush does not take a destination, by the scheme of its host
UNSERVED = {
    "ftp": "trollpush uploads to S3 only; keep trollmoves for FTP",
    "scp": "trollpush uploads to S3 only; keep trollmoves for scp",
    "sftp": "trollpush uploads to S3 only; keep trollmoves for sftp",
    "ssh": "trollpush uploads to S3 only; keep trollmoves for ssh/scp",
    "file": "a local copy: trollpush uploads to S3 only",
    "": "a local copy (empty host): trollpush uploads to S3 only",
}
#: fields the dispatcher composes with that trollpush's metadata never holds
NO_SUCH_FIELD = {
    "file_creation_time": "the file's ctime, which the dispatcher adds and trollpush does not",
    "uri": "the source path, which trollpush keeps out of the metadata",
}
#: connection_parameters that need nothing in trollpush: its objects appear whole anyway
ATOMIC_KEYS = frozenset({"use_tmp_on_transfer", "s3_use_multipart", "s3_use_copy",
                         "tmp_prefix", "s3_multipart_chunksize"})
SECRET_KEYS = frozenset({"key", "secret", "token", "aws_access_key_id",
                         "aws_secret_access_key", "aws_session_token"})
#: what trollmoves' S3 mover passes on; anything else it drops (and so do we, saying so)
S3_KEYS = frozenset({"anon", "endpoint_url", "key", "secret", "token", "use_ssl",
                     "s3_additional_kwargs", "client_kwargs", "requester_pays",
                     "default_block_size", "default_fill_cache", "default_cache_type",
                     "version_aware", "cache_regions", "asynchronous", "config_kwargs",
                     "kwargs", "session", "max_concurrency", "fixed_upload_size",
                     "profile"}) | ATOMIC_KEYS
_BASE_NAME_RE = re.compile(r"[.\[]")


@dataclass(frozen=True)
class Conversion:
    """The converted config's text, and what a caller shows or checks besides it."""

    text: str
    warnings: tuple[str, ...]  # each is also a ``# WARNING:`` comment in text
    skipped: tuple[str, ...]  # destinations not converted, with the reason
    origins: Mapping[str, tuple[str, int]]  # target name -> (client, dispatch_configs index)


@dataclass
class _Draft:
    """One target being built, with the comments that go above it."""

    name: str
    client: str
    index: int
    body: dict[str, Any]
    params: Any
    comments: list[str] = field(default_factory=list)


@dataclass
class _Out:
    """Warnings and skipped destinations, collected while converting."""

    warnings: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def warn(self, where: str, text: str, comments: list[str]) -> None:
        self.warnings.append(f"{where}: {text}")
        comments.append(f"WARNING: {text}")


def convert_dispatch_text(text: str, *, source: str = "dispatch.yaml",
                          publish_port: int | None = None,
                          publish_nameservers: list[str] | None = None) -> Conversion:
    """Convert a dispatcher config given as YAML text; ConfigError says what is unusable."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([ConfigProblem("<file>", source, f"valid YAML (error{at})")],
                          source) from err
    return convert_dispatch(raw, source=source, publish_port=publish_port,
                            publish_nameservers=publish_nameservers)


def convert_dispatch(raw: object, *, source: str = "dispatch.yaml",
                     publish_port: int | None = None,
                     publish_nameservers: list[str] | None = None) -> Conversion:
    """Convert a parsed dispatcher config: every S3 destination becomes a target."""
    clients = _clients(raw, source)
    out = _Out()
    drafts: list[_Draft] = []
    names: set[str] = set()
    for client, conf in clients.items():
        items = conf["dispatch_configs"]
        for j, item in enumerate(items):
            name = client if len(items) == 1 else f"{client}-{j}"
            base, n = name, 2
            while name in names:  # a client named like another's item: "a-0"
                name, n = f"{base}-{n}", n + 1
            names.add(name)
            draft = _target(out, client, j, name, conf, item)
            if draft is not None:
                drafts.append(draft)
    if not drafts:
        raise ConfigError([ConfigProblem(
            "<destinations>", [_shown(str(c.get("host"))) for c in clients.values()],
            "at least one s3:// destination trollpush can serve (not converted: "
            + "; ".join(out.skipped) + ")")], source)
    assert isinstance(raw, Mapping)
    sections = [
        _subscribe_section(out, raw.get(SUBSCRIBER), drafts),
        _publish_section(publish_port, publish_nameservers, drafts),
        _endpoints_section(out, drafts),
        _targets_section(drafts),
    ]
    text = "\n".join([_header(source, out), *sections])
    return Conversion(text, tuple(out.warnings), tuple(out.skipped),
                      MappingProxyType({d.name: (d.client, d.index) for d in drafts}))


def _clients(raw: object, source: str) -> dict[str, Mapping[str, Any]]:
    """The destinations ("clients"), checked for what the dispatcher itself needs."""
    if not isinstance(raw, Mapping):
        raise ConfigError([ConfigProblem("<root>", raw, "a mapping of destinations")], source)
    problems: list[ConfigProblem] = []
    clients: dict[str, Mapping[str, Any]] = {}
    for client, conf in raw.items():
        if client == SUBSCRIBER:
            if conf is not None and not isinstance(conf, Mapping):
                problems.append(ConfigProblem(SUBSCRIBER, conf, "a mapping"))
            continue
        items = conf.get("dispatch_configs") if isinstance(conf, Mapping) else None
        if not isinstance(conf, Mapping):
            problems.append(ConfigProblem(str(client), conf,
                                          "a mapping with host and dispatch_configs"))
        elif not isinstance(items, list) or not items:
            problems.append(ConfigProblem(f"{client}.dispatch_configs", items,
                                          "a non-empty list of mappings with topics"))
        else:
            problems += _item_problems(str(client), conf, items)
            clients[str(client)] = conf
    if problems:
        raise ConfigError(problems, source)
    return clients


def _item_problems(client: str, conf: Mapping[str, Any], items: list[Any]
                   ) -> list[ConfigProblem]:
    problems = []
    for j, item in enumerate(items):
        key = f"{client}.dispatch_configs[{j}]"
        if not isinstance(item, Mapping):
            problems.append(ConfigProblem(key, item, "a mapping with topics"))
            continue
        topics = item.get("topics")
        if not isinstance(topics, list) or not topics or not all(
                isinstance(t, str) and t for t in topics):
            problems.append(ConfigProblem(f"{key}.topics", topics,
                                          "a non-empty list of topic strings"))
        host = item.get("host", conf.get("host"))
        if not isinstance(host, str):
            problems.append(ConfigProblem(f"{client}.host", host, "a URL like s3://BUCKET/"))
    return problems


def _shown(url: str) -> str:
    """A host URL as it may be printed: a password in it (``ftp://user:pw@host``) hidden."""
    parts = urlsplit(url)
    if parts.password is None:
        return url or "(empty host)"
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def _target(out: _Out, client: str, j: int, name: str, conf: Mapping[str, Any],
            item: Mapping[str, Any]) -> _Draft | None:
    """The target for one dispatch item, or None (then ``out.skipped`` says why)."""
    where = f"{client}.dispatch_configs[{j}]"
    eff = {**conf, **item}  # as the dispatcher's config.update(dispatch_config)
    host = urlsplit(eff["host"])
    if host.scheme != "s3":
        reason = UNSERVED.get(host.scheme, f"scheme {host.scheme}: trollpush uploads to S3 only")
        out.skipped.append(f"{where}: {_shown(eff['host'])}: {reason}")
        return None
    draft = _Draft(name, client, j, {"name": name, "topics": list(item["topics"])},
                   eff.get("connection_parameters"))
    pattern = eff.get("filepattern")
    draft.comments.append(f"from {where}: host {_shown(eff['host'])}, directory "
                          f"{eff.get('directory')!r}, filepattern "
                          + ("none (the file's base name)" if pattern is None else repr(pattern)))
    _ignored_keys(out, client, j, conf, item, draft.comments)
    skip = _destination(out, where, host.netloc, host.path, eff, draft)
    if skip is not None:
        out.skipped.append(f"{where}: {_shown(eff['host'])}: {skip}")
        out.warnings.append(f"{where}: not converted: {skip}")
        return None
    _publish_topic(out, where, conf.get("publish_topic"), draft)
    return draft


def _ignored_keys(out: _Out, client: str, j: int, conf: Mapping[str, Any],
                  item: Mapping[str, Any], comments: list[str]) -> None:
    """Keys the dispatcher does not read are left out too; said once, where they stand."""
    if j == 0:
        for key in sorted(set(conf) - CLIENT_KEYS, key=str):
            comments.append(f"{client}.{key} is not read by the dispatcher: left out")
    for key in sorted(set(item) - ITEM_KEYS, key=str):
        text = (f"dispatch_configs[{j}].{key} is not read by the dispatcher (it reads "
                f"{key} of the destination only): left out")
        if key == "publish_topic":
            out.warn(client, text, comments)
        else:
            comments.append(text)


def _destination(out: _Out, where: str, bucket: str, host_path: str,
                 eff: Mapping[str, Any], draft: _Draft) -> str | None:
    """Fill in conditions, aliases and destination; the reason it cannot be, or None."""
    if not bucket:
        return "no bucket after s3://"
    if host_path not in ("", "/"):
        out.warn(where, f"the path of host ({host_path}) is dropped: the dispatcher drops "
                 "it too, so the keys are the same; put it in directory if you meant it",
                 draft.comments)
    if "directory" not in eff:
        return "no directory: the dispatcher stops with a KeyError on every file it takes"
    conditions = eff.get("conditions")
    if conditions == []:
        return "conditions: [] matches nothing in the dispatcher"
    filepattern = eff.get("filepattern")
    # the dispatcher composes os.path.join(directory, filepattern); without a filepattern
    # it uses the file's base name, which trollpush appends to a key ending in "/"
    path = posixpath.join(str(eff["directory"]), "" if filepattern is None else str(filepattern))
    aliased = _aliases(eff.get("aliases"), path)
    if isinstance(aliased, str):
        return aliased
    aliases, path = aliased
    missing = sorted(template_fields(path) & set(NO_SUCH_FIELD))
    if missing:
        return "; ".join(f"{{{f}}} is {NO_SUCH_FIELD[f]}" for f in missing)
    if "conditions" in eff:
        draft.body["conditions"] = conditions
    unused = sorted(set(eff.get("aliases") or {}) - set(aliases), key=str)
    if unused:
        draft.comments.append(f"aliases of {', '.join(map(str, unused))} left out: the key "
                              "does not use them (trollpush would apply them to "
                              "publish_topic, the dispatcher never does)")
    if aliases:
        draft.body["aliases"] = aliases
    draft.body["destination"] = f"s3://{bucket}/{path.lstrip('/')}"
    return None


def _aliases(raw: object, path: str) -> tuple[dict[str, dict[str, str]], str] | str:
    """The alias tables the key template needs, and the template with fields renamed
    by ``_alias_name`` put back to their source; or why trollpush cannot do it.

    The dispatcher sets ``metadata[_alias_name or key] = table.get(value, value)`` for
    each table in order, so the last table for a name wins.  trollpush replaces a
    field's value in place: one table per field, used by every template of the target.
    """
    if raw is None:
        return {}, path
    if not isinstance(raw, Mapping):
        return f"aliases: got {raw!r}, expected a mapping of field: {{value: alias}}"
    made: dict[str, tuple[str, dict[Any, Any]]] = {}  # field -> (source field, table)
    for key, tables in raw.items():
        for table in tables if isinstance(tables, list) else [tables]:
            if not isinstance(table, Mapping):
                return f"aliases.{key}: got {table!r}, expected a mapping of value: alias"
            table = dict(table)
            made[str(table.pop("_alias_name", key))] = (str(key), table)
    need: dict[str, list[tuple[str, dict[Any, Any] | None]]] = {}
    for name in sorted(template_fields(path)):
        source, table = made.get(name, (name, None))
        need.setdefault(source, []).append((name, table))
    out: dict[str, dict[str, str]] = {}
    renames: dict[str, str] = {}
    for source, uses in need.items():
        if any(table != uses[0][1] for _, table in uses):
            names = ", ".join(f"{{{n}}}" for n, _ in uses)
            return (f"the key uses {names}, all from {source!r} through different aliases "
                    "(_alias_name); a trollpush target has one alias table per field")
        name, table = uses[0]
        if table is not None:
            out[source] = {str(k): str(v) for k, v in table.items()}
        renames.update({n: source for n, _ in uses if n != source})
    return out, _renamed(path, renames) if renames else path


def _renamed(template: str, renames: Mapping[str, str]) -> str:
    """The template with fields renamed; literal braces kept escaped."""
    parts = []
    for literal, name, spec, conv in string.Formatter().parse(template):
        parts.append(literal.replace("{", "{{").replace("}", "}}"))
        if name is None:
            continue
        base = _BASE_NAME_RE.split(name, maxsplit=1)[0]
        name = renames.get(base, base) + name[len(base):]
        parts.append("{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "")
                     + "}")
    return "".join(parts)


def _publish_topic(out: _Out, where: str, topic: object, draft: _Draft) -> None:
    if topic is None:
        draft.comments.append("no publish_topic: the dispatcher announced nothing for this "
                              "destination; trollpush announces on publish.topic")
        return
    fields = template_fields(str(topic))
    missing = sorted(fields & set(NO_SUCH_FIELD))
    if missing:
        out.warn(where, f"publish_topic {topic!r} left out: it uses {{{missing[0]}}}, "
                 f"{NO_SUCH_FIELD[missing[0]]}; completions go to publish.topic",
                 draft.comments)
        return
    draft.body["publish_topic"] = topic
    aliased = sorted(fields & set(draft.body.get("aliases", {})))
    if aliased:
        out.warn(where, f"publish_topic uses {', '.join(aliased)}, which trollpush composes "
                 "with its alias and the dispatcher without: the subject differs (see "
                 "docs/migrating.md)", draft.comments)


def _endpoint(out: _Out, where: str, params: object
              ) -> tuple[dict[str, Any], list[str]]:
    """An endpoint's settings from connection_parameters, and the comments it needs."""
    settings: dict[str, Any] = {}
    comments: list[str] = [f"from the connection_parameters of {where}"]
    if params is None:
        return settings, [*comments, "none given: AWS, with the default credential chain"]
    if not isinstance(params, Mapping):
        out.warn(where, f"connection_parameters: got a {type(params).__name__}, expected a "
                 "mapping; left out", comments)
        return settings, comments
    flat = dict(params)
    kwargs = flat.pop("client_kwargs", None)
    if isinstance(kwargs, Mapping):
        flat.update({f"client_kwargs.{k}": v for k, v in kwargs.items()})
    elif kwargs is not None:
        flat["client_kwargs"] = kwargs
    for key, value in flat.items():
        _endpoint_key(out, where, str(key), value, settings, comments)
    order = ["url", "region", "verify", "profile", "addressing_style"]
    settings = {k: settings[k] for k in sorted(settings, key=order.index)}
    secrets = sorted(k for k in flat if str(k).rsplit(".", 1)[-1] in SECRET_KEYS)
    if secrets:
        out.warn(where, f"connection_parameters hold {', '.join(secrets)}: not copied. Put "
                 "the keys in a profile (~/.aws/credentials) and set `profile:` here, or "
                 "give AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to the daemon", comments)
    return settings, comments


def _endpoint_key(out: _Out, where: str, key: str, value: Any, settings: dict[str, Any],
                  comments: list[str]) -> None:
    leaf = key.rsplit(".", 1)[-1]
    if key in ("endpoint_url", "client_kwargs.endpoint_url"):
        if "url" in settings and settings["url"] != value:
            out.warn(where, f"{key}: {value!r} and another endpoint_url "
                     f"{settings['url']!r}: the first is used", comments)
        settings.setdefault("url", value)
    elif key == "client_kwargs.verify":
        settings["verify"] = value
        if value is False:
            comments.append("verify: false as in the dispatcher: prefer a CA bundle path")
    elif key == "client_kwargs.region_name":
        settings["region"] = value
    elif key == "profile":
        settings["profile"] = value
    elif leaf in SECRET_KEYS:
        pass  # said once, after all keys
    elif key in ("use_ssl", "anon"):
        if value is not (key == "use_ssl"):  # use_ssl: true and anon: false change nothing
            out.warn(where, f"{key}: {_plain(value)} not carried over (trollpush signs every "
                     "request; the scheme of url decides TLS)", comments)
    elif key == "config_kwargs" and _addressing(value) is not None:
        settings["addressing_style"] = _addressing(value)
    elif key in ATOMIC_KEYS:
        comments.append(f"{key} not needed: a trollpush object appears only once whole "
                        "(multipart_threshold and multipart_chunksize set how it is sent)")
    elif key in S3_KEYS or key.startswith("client_kwargs."):
        out.warn(where, f"connection_parameters.{key} ({_plain(value)}) has no trollpush "
                 "equivalent: left out", comments)
    else:
        comments.append(f"connection_parameters.{key} is not an S3 setting (trollmoves' S3 "
                        "mover drops it too): left out")


def _plain(value: object) -> str:
    """A left-out setting's value, if it is a plain flag or number; anything else may hold
    a secret (an SSE-C key in s3_additional_kwargs), so only its type is shown."""
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    return f"a {type(value).__name__}"


def _addressing(value: object) -> str | None:
    """``config_kwargs: {s3: {addressing_style: path}}``, the one botocore config we map."""
    if isinstance(value, Mapping) and set(value) == {"s3"}:
        s3 = value["s3"]
        if isinstance(s3, Mapping) and set(s3) == {"addressing_style"}:
            return str(s3["addressing_style"])
    return None


def _endpoints_section(out: _Out, drafts: list[_Draft]) -> str:
    """One endpoint per distinct connection_parameters (keys compared, never copied)."""
    groups: dict[str, list[_Draft]] = {}
    for d in drafts:
        groups.setdefault(json.dumps(d.params, sort_keys=True, default=str), []).append(d)
    lines = ["endpoints:"]
    taken: set[str] = set()
    for users in groups.values():
        first = users[0]
        name = "default" if len(groups) == 1 else (
            first.client if first.client not in taken else first.name)
        taken.add(name)
        where = f"{first.client}.dispatch_configs[{first.index}]"
        settings, comments = _endpoint(out, where, first.params)
        if len(users) > 1:
            comments.append("also used by " + ", ".join(d.name for d in users[1:]))
        lines += _comment(comments, "  ") + _yaml({name: settings}, "  ")
        for d in users:
            d.body["endpoint"] = name
    return "\n".join(lines) + "\n"


def _subscribe_section(out: _Out, raw: object, drafts: list[_Draft]) -> str:
    """The dispatcher's posttroll_subscriber; topics: those of the converted targets."""
    sub = dict(raw) if isinstance(raw, Mapping) else {}
    comments = ["the dispatcher's posttroll_subscriber (its defaults: the nameserver on "
                "localhost, all services, addr_listener on); topics: those of the targets "
                "below, not of the destinations left out (trollpush announces a no_route "
                "failure for every message no target takes)"]
    topics: list[str] = []
    for d in drafts:
        topics += [t for t in d.body["topics"] if t not in topics]
    nameserver = sub.pop("nameserver", "localhost")
    settings: dict[str, Any] = {"topics": topics,
                                "nameserver": nameserver if nameserver else False}
    addresses = sub.pop("subscribe_addresses", None)
    if addresses:
        settings["addresses"] = addresses if isinstance(addresses, list) else [addresses]
    services = sub.pop("subscribe_services", "")
    if services and nameserver:
        settings["services"] = services
    if nameserver:
        settings["addr_listener"] = True
    for key in sorted(sub, key=str):
        out.warn(SUBSCRIBER, f"{key} is not read by the dispatcher: left out", comments)
    return "\n".join(_comment(comments, "") + _yaml({"subscribe": settings}, "")) + "\n"


def _publish_section(port: int | None, nameservers: list[str] | None,
                     drafts: list[_Draft]) -> str:
    """The dispatcher's publisher (its command line: -p PORT, -n NAMESERVER ...)."""
    comments = ["the dispatcher's publisher: name `dispatcher`, so subscribers that "
                "select that service keep working"]
    if port is None:
        comments.append("the dispatcher publishes only with -p/--publish-port; give the "
                        "same -p and -n to convert-dispatch. Port 0: any free port")
    settings: dict[str, Any] = {"name": "dispatcher", "port": 0 if port is None else port}
    if nameservers:
        settings["nameservers"] = list(nameservers)
    else:
        comments.append("no nameservers (as the dispatcher without -n): the address is "
                        "broadcast by multicast")
    if any("publish_topic" not in d.body for d in drafts):
        comments.append("topic: completions of targets without publish_topic")
    settings["topic"] = "/trollpush/uploaded/"
    settings["failure_topic"] = "/trollpush/failed"
    return "\n".join(_comment(comments, "") + _yaml({"publish": settings}, "")) + "\n"


def _targets_section(drafts: list[_Draft]) -> str:
    lines = ["targets:"]
    for d in drafts:
        lines += _comment(d.comments, "  ") + _yaml([d.body], "  ")
    return "\n".join(lines) + "\n"


def _header(source: str, out: _Out) -> str:
    lines = [f"trollpush config written by `trollpush convert-dispatch {source}`.",
             "Review every comment, above all those marked WARNING; then run `trollpush "
             "check` on this file and `trollpush match` with the dispatcher's messages "
             "(docs/migrating.md)."]
    if out.warnings:
        lines.append(f"{len(out.warnings)} warning(s), each marked WARNING below.")
    if out.skipped:
        lines += ["", "Destinations not converted:"] + [f"- {s}" for s in out.skipped]
    return "\n".join(_comment(lines, "")) + "\n"


def _comment(lines: list[str], indent: str) -> list[str]:
    out = []
    for line in lines:
        wrapped = textwrap.wrap(line, 96 - len(indent), subsequent_indent="  ",
                                break_on_hyphens=False, break_long_words=False) or [""]
        out += [f"{indent}# {w}".rstrip() for w in wrapped]
    return out


class _Dumper(yaml.SafeDumper):
    """Block mappings, with lists of plain values on one line (``topics: [/a/, /b/]``)."""

    def represent_list(self, data: Any) -> yaml.SequenceNode:
        flow = all(not isinstance(x, (dict, list)) for x in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)  # list items indented under their key


_Dumper.add_representer(list, _Dumper.represent_list)


def _yaml(data: object, indent: str) -> list[str]:
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=100)
    return [f"{indent}{line}" for line in text.splitlines()]
