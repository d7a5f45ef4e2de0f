"""Routing: which targets a request goes to, and the exact objects it becomes.

Pure functions of the config and the request: no I/O, so ``trollpush match`` shows
exactly what the daemon would do.
"""

from __future__ import annotations

import functools
import logging
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import trollsift

from .config import Config, Scalar, TargetConfig
from .errors import Reason, RouteError
from .messages import parse_destination
from .models import Job, Request, SourceFile, Upload

logger = logging.getLogger(__name__)

DEFAULT_TOPIC = "/trollpush/uploaded/"


@dataclass(frozen=True)
class RouteFailure:
    """A target that applies to a request but cannot be served (bad compose, partial match)."""

    target: str | None
    reason: str
    detail: str
    source: SourceFile | None = None
    destination: str | None = None


@dataclass(frozen=True)
class RouteResult:
    """Jobs to run, failures to announce, and why the other targets were skipped."""

    jobs: tuple[Job, ...]
    failures: tuple[RouteFailure, ...]
    skipped: Mapping[str, str]


class Router:
    """Turns a Request into Jobs according to the config's targets."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._default_topic = config.publish.topic if config.publish else DEFAULT_TOPIC

    def route(self, request: Request) -> RouteResult:
        """Every job and failure for this request; a request nobody takes is a failure."""
        if request.destination is not None:
            return self._direct(request)
        jobs: list[Job] = []
        failures: list[RouteFailure] = []
        skipped: dict[str, str] = {}
        for target in self._config.targets:
            outcome = self._apply(target, request)
            if isinstance(outcome, Job):
                jobs.append(outcome)
            elif isinstance(outcome, RouteFailure):
                failures.append(outcome)
            else:
                skipped[target.name] = outcome
        if not jobs and not failures:
            why = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "no targets configured"
            failures.append(RouteFailure(None, Reason.NO_ROUTE, f"no target matches ({why})",
                                         request.files[0] if request.files else None))
        return RouteResult(tuple(jobs), tuple(failures), skipped)

    def _direct(self, request: Request) -> RouteResult:
        endpoint = request.endpoint or self._config.default_endpoint()
        dest = request.destination or ""
        if endpoint is None or endpoint not in self._config.endpoints:
            known = ", ".join(self._config.endpoints)
            fail = RouteFailure(None, Reason.BAD_DESTINATION,
                                f"endpoint {endpoint!r} is not configured (known: {known})",
                                request.files[0], dest)
            return RouteResult((), (fail,), {})
        if len(request.files) != 1 and not dest.endswith("/"):
            fail = RouteFailure(None, Reason.BAD_DESTINATION,
                                f"{len(request.files)} files need a destination ending in '/'",
                                request.files[0] if request.files else None, dest)
            return RouteResult((), (fail,), {})
        try:
            uploads = tuple(Upload(f, *parse_destination(dest, f.path.name))
                            for f in request.files)
        except RouteError as err:
            fail = RouteFailure(None, err.reason, err.detail, request.files[0], dest)
            return RouteResult((), (fail,), {})
        job = Job(request=request, target=None, endpoint=endpoint, uploads=uploads,
                  metadata=request.metadata, publish_topic=self._default_topic)
        return RouteResult((job,), (), {})

    def _apply(self, target: TargetConfig, request: Request) -> Job | RouteFailure | str:
        """A Job, a RouteFailure, or the reason (str) why the target does not apply."""
        if target.topics and not any(request.subject.startswith(t) for t in target.topics):
            return f"subject {request.subject} is not under {list(target.topics)}"
        metas: list[dict[str, Any]] = []
        misses: list[str] = []
        for f in request.files:
            meta = {**request.metadata, **f.meta, "uid": f.uid}
            parsed = _parsed(target, f)
            if parsed is None:
                misses.append(f"{f.path.name} does not match pattern {target.pattern}")
                continue
            # the producer's metadata wins (it may have normalised what the name says:
            # trollstalker's aliases); parsed fields fill in what it lacks
            meta = {**parsed, **meta}
            why = _check_conditions(target, meta)
            if why:
                misses.append(why)
                continue
            metas.append(meta)
        if misses and not metas:
            return misses[0]
        if misses:
            return RouteFailure(target.name, Reason.NO_ROUTE,
                                f"target {target.name} takes {len(metas)} of "
                                f"{len(request.files)} files of the {request.type}: {misses[0]}",
                                request.files[0])
        uploads = []
        for f, meta in zip(request.files, metas, strict=True):
            named = _aliased(meta, target.aliases)
            try:
                dest = _compose(target.destination, named, f"targets[{target.name}].destination")
                uploads.append(Upload(f, *parse_destination(dest, f.path.name)))
            except RouteError as err:
                return RouteFailure(target.name, err.reason, err.detail, f, target.destination)
        job_meta = dict(metas[0]) if request.type == "file" else dict(request.metadata)
        job_meta.pop("uid", None)
        topic = self._default_topic
        if target.publish_topic:
            try:
                topic = _compose(target.publish_topic, _aliased(metas[0], target.aliases),
                                 f"targets[{target.name}].publish_topic")
                if not topic or any(c.isspace() for c in topic):
                    raise RouteError(Reason.COMPOSE_ERROR,
                                     f"targets[{target.name}].publish_topic: composed "
                                     f"{topic!r}, a subject cannot hold whitespace")
            except RouteError as err:
                return RouteFailure(target.name, err.reason, err.detail, request.files[0],
                                    target.destination)
        return Job(request=request, target=target.name, endpoint=target.endpoint,
                   uploads=tuple(uploads), metadata=job_meta, publish_topic=topic)


def _parsed(target: TargetConfig, f: SourceFile) -> dict[str, Any] | None:
    """The fields the target's pattern reads from the file's base name ({} without a
    pattern), or None when the name does not match it."""
    if not target.pattern:
        return {}
    try:
        return dict(trollsift.parse(target.pattern, f.path.name))
    except ValueError:
        return None


@dataclass(frozen=True)
class Field:
    """Where one metadata field of a routed file came from, for ``trollpush match -v``."""

    name: str
    value: Any
    source: str  # "message", "pattern" or "file name" (uid)
    overruled: tuple[Any, ...] = ()  # what the pattern read, when the message won over it
    aliased: tuple[Any, ...] = ()  # what the target's aliases turn the value into


def provenance(target: TargetConfig, request: Request, f: SourceFile) -> tuple[Field, ...]:
    """Every field a target sees for one file, with its source, in the order the daemon
    merges them: the message, then what the pattern fills in; aliases on the result."""
    parsed = _parsed(target, f) or {}
    given = {**request.metadata, **f.meta}
    meta = {**parsed, **given, "uid": f.uid}
    named = _aliased(meta, target.aliases)
    out = []
    for key in sorted(meta):
        if key == "uid":
            source = "message" if given.get("uid") == f.uid else "file name"
        else:
            source = "message" if key in given else "pattern"
        overruled = ((parsed[key],) if key in parsed and key in given
                     and parsed[key] != given[key] else ())
        aliased = (named[key],) if named[key] != meta[key] else ()
        out.append(Field(key, meta[key], source, overruled, aliased))
    return tuple(out)


def _check_conditions(target: TargetConfig, meta: Mapping[str, Any]) -> str | None:
    """None if the conditions hold, else the reason they don't."""
    for key, allowed in target.conditions.items():
        if key not in meta:
            return f"condition on {key!r}: the message has no {key!r}"
        if not _matches(meta[key], allowed):
            return f"condition {key} in {list(allowed)}: got {meta[key]!r}"
    if target.excepts and all(k in meta and _matches(meta[k], allowed)
                              for k, allowed in target.excepts.items()):
        return f"excepted by {dict(target.excepts)}"
    return None


def _matches(actual: Any, allowed: Iterable[Scalar]) -> bool:
    values = actual if isinstance(actual, (list, tuple, set, frozenset)) else (actual,)
    return any(a == b or str(a) == str(b) for a in values for b in allowed)


def _aliased(meta: Mapping[str, Any], aliases: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    out = dict(meta)
    for key, table in aliases.items():
        if key in out and str(out[key]) in table:
            out[key] = table[str(out[key])]
    return out


@functools.cache
def _fields(template: str) -> frozenset[str]:
    """The metadata keys a template uses (``{start_time:%Y}`` and ``{a.b}`` use start_time
    and a); templates come from the config, so each is parsed once."""
    try:
        return frozenset(re.split(r"[.\[]", name, maxsplit=1)[0]
                         for _, name, _, _ in string.Formatter().parse(template) if name)
    except ValueError:  # a malformed template: compose says what is wrong
        return frozenset()


def _compose(template: str, meta: Mapping[str, Any], where: str) -> str:
    """The template filled in; a one-element list (``sensor: [viirs]``, as trollstalker
    sends it) composes as its element, a longer one cannot name one object."""
    used = meta
    for key in _fields(template):
        value = meta.get(key)
        if isinstance(value, (list, tuple)):
            if len(value) != 1:
                raise RouteError(Reason.COMPOSE_ERROR,
                                 f"{where}: field {{{key}}} holds {len(value)} values "
                                 f"({_short(value)}); a template needs one")
            used = {**used, key: value[0]}
    try:
        return str(trollsift.compose(template, used))
    except KeyError as err:
        have = ", ".join(sorted(str(k) for k in meta))
        raise RouteError(Reason.COMPOSE_ERROR,
                         f"{where}: unknown field {{{err.args[0]}}} (have: {have})") from err
    except Exception as err:  # trollsift/format raise many kinds (Index, Attribute, Value...)
        raise RouteError(Reason.COMPOSE_ERROR, f"{where}: cannot compose {template!r}: "
                         f"{type(err).__name__}: {err}") from err


@dataclass(frozen=True)
class Routing:
    """What a request's run reads from the config, as one immutable snapshot: the router,
    each target's overwrite policy, and how long a request may keep retrying.  The
    service may replace its snapshot between requests (a reload); a request keeps the
    snapshot it started with."""

    router: Router
    overwrite: Mapping[str, str]  # target name -> "changed" | "always"
    max_age: float  # seconds from acceptance

    @classmethod
    def from_config(cls, config: Config) -> Routing:
        return cls(Router(config), MappingProxyType({t.name: t.overwrite for t in config.targets}),
                   config.daemon.max_age)

    def reuse_allowed(self, job: Job) -> bool:
        """Whether a file that already landed at its object may be answered without a
        transfer (not with ``overwrite: always``, nor when the request asks to)."""
        return (self.overwrite.get(job.target or "", "changed") != "always"
                and not job.request.overwrite)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
