"""Routing: which targets a request goes to, and the exact objects it becomes.

Pure functions of the config and the request: no I/O, so ``trollpush match`` shows
exactly what the daemon would do.
"""

from __future__ import annotations

import logging
import math
import operator
import posixpath
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import trollsift

from . import objects
from .config import Choice, Comparison, Condition, ConditionSet, Config, Scalar, TargetConfig
from .errors import Reason, RouteError
from .logsafe import short
from .messages import parse_destination
from .models import NO_OPTIONS, Job, Request, SourceFile, Upload
from .templates import compose as _compose
from .templates import fields as template_fields

__all__ = ["DEFAULT_TOPIC", "Field", "RouteFailure", "RouteResult", "Router", "Routing",
           "provenance", "template_fields"]

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
    """Jobs to run, failures to announce, and why the other targets were skipped;
    ``held`` names, for a target with several condition sets, the ones that took its
    files (``conditions[1]``), for ``trollpush match``."""

    jobs: tuple[Job, ...]
    failures: tuple[RouteFailure, ...]
    skipped: Mapping[str, str]
    held: Mapping[str, str] = MappingProxyType({})


class Router:
    """Turns a Request into Jobs according to the config's targets."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._default_topic = config.publish.topic if config.publish else DEFAULT_TOPIC
        # object options planned once per block; None (no block) costs a file nothing
        self._targets_plan = {t.name: objects.plan(t.object) for t in config.targets}
        self._endpoints_plan = {name: objects.plan(ep.object)
                                for name, ep in config.endpoints.items()}

    def route(self, request: Request) -> RouteResult:
        """Every job and failure for this request; a request nobody takes is a failure."""
        if request.destination is not None:
            return self._direct(request)
        jobs: list[Job] = []
        failures: list[RouteFailure] = []
        skipped: dict[str, str] = {}
        held: dict[str, str] = {}
        for target in self._config.targets:
            outcome = self._apply(target, request)
            if isinstance(outcome, tuple):
                jobs.append(outcome[0])
                if len(target.conditions) > 1:
                    held[target.name] = ", ".join(f"conditions[{i}]" for i in outcome[1])
            elif isinstance(outcome, RouteFailure):
                failures.append(outcome)
            else:
                skipped[target.name] = outcome
        if not jobs and not failures:
            why = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "no targets configured"
            failures.append(RouteFailure(None, Reason.NO_ROUTE, f"no target matches ({why})",
                                         request.files[0] if request.files else None))
        return RouteResult(tuple(jobs), tuple(failures), skipped, held)

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
        plan = self._endpoints_plan[endpoint]
        uploads = []
        for f in request.files:
            try:
                bucket, key = parse_destination(dest, f.path.name)
                options = NO_OPTIONS if plan is None else objects.compose_options(
                    plan, _merged({}, request, f), posixpath.basename(key),
                    f"endpoints.{endpoint}.object")
                uploads.append(Upload(f, bucket, key, options))
            except RouteError as err:
                fail = RouteFailure(None, err.reason, err.detail, f, dest)
                return RouteResult((), (fail,), {})
        job = Job(request=request, target=None, endpoint=endpoint, uploads=tuple(uploads),
                  metadata=request.metadata, publish_topic=self._default_topic)
        return RouteResult((job,), (), {})

    def _apply(self, target: TargetConfig, request: Request
               ) -> tuple[Job, list[int]] | RouteFailure | str:
        """A Job (with the condition sets that held), a RouteFailure, or the reason (str)
        why the target does not apply."""
        if target.topics and not any(request.subject.startswith(t) for t in target.topics):
            return f"subject {request.subject} is not under {list(target.topics)}"
        metas: list[dict[str, Any]] = []
        misses: list[str] = []
        held: set[int] = set()
        for f in request.files:
            parsed = _parsed(target, f)
            if parsed is None:
                misses.append(f"{f.path.name} does not match pattern {target.pattern}")
                continue
            meta = _merged(parsed, request, f)
            if target.conditions:
                which = _held_set(target.conditions, meta)
                if isinstance(which, str):
                    misses.append(which)
                    continue
                held.add(which)
            metas.append(meta)
        if misses and not metas:
            return misses[0]
        if misses:
            return RouteFailure(target.name, Reason.NO_ROUTE,
                                f"target {target.name} takes {len(metas)} of "
                                f"{len(request.files)} files of the {request.type}: {misses[0]}",
                                request.files[0])
        uploads = []
        plan = self._targets_plan[target.name]
        for f, meta in zip(request.files, metas, strict=True):
            named = _aliased(meta, target.aliases)
            try:
                dest = _compose(target.destination, named, f"targets[{target.name}].destination")
                bucket, key = parse_destination(dest, f.path.name)
                # content_type auto: from the object's name, which a destination may change
                options = NO_OPTIONS if plan is None else objects.compose_options(
                    plan, named, posixpath.basename(key), f"targets[{target.name}].object")
                uploads.append(Upload(f, bucket, key, options))
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
                   uploads=tuple(uploads), metadata=job_meta, publish_topic=topic), sorted(held)


def _parsed(target: TargetConfig, f: SourceFile) -> dict[str, Any] | None:
    """The fields the target's pattern reads from the file's base name ({} without a
    pattern), or None when the name does not match it."""
    if not target.pattern:
        return {}
    try:
        return dict(trollsift.parse(target.pattern, f.path.name))
    except ValueError:
        return None


def _merged(parsed: Mapping[str, Any], request: Request, f: SourceFile) -> dict[str, Any]:
    """The fields a target sees for one file.  The producer's metadata wins (it may
    have normalised what the name says: trollstalker's aliases); the fields parsed from
    the name fill in what it lacks."""
    return {**parsed, **request.metadata, **f.meta, "uid": f.uid}


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
    meta = _merged(parsed, request, f)
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


_OPERATORS: Mapping[str, Callable[[float, float], bool]] = MappingProxyType({
    "<": operator.lt, ">": operator.gt, "<=": operator.le, ">=": operator.ge,
    "==": operator.eq, "!=": operator.ne})


def _held_set(sets: tuple[ConditionSet, ...], meta: Mapping[str, Any]) -> int | str:
    """The index of the first condition set that holds, else why none does (the sets
    are ORed, as trollmoves' dispatcher does)."""
    whys: list[str] = []
    for i, one in enumerate(sets):
        why = _check_set(one, meta)
        if why is None:
            return i
        whys.append(why)
    if len(whys) == 1:
        return whys[0]
    return "no condition set holds: " + "; ".join(
        f"conditions[{i}]: {why}" for i, why in enumerate(whys))


def _check_set(conditions: ConditionSet, meta: Mapping[str, Any]) -> str | None:
    """None if every condition holds and the except block does not, else the reason.

    A key missing from the metadata, or a comparison with a value that is not a number,
    fails the set, in ``except`` too: the dispatcher does the same (or raises)."""
    for key, condition in conditions.conditions.items():
        if key not in meta:
            return f"condition on {key!r}: the message has no {key!r}"
        held = _holds(meta[key], condition)
        if held is None:
            return f"condition {key} {_shown(condition)}: got {short(meta[key])}, not a number"
        if not held:
            return f"condition {key} {_shown(condition)}: got {short(meta[key])}"
    if not conditions.excepts:
        return None
    excepted = True  # every key is looked at: a missing one fails the set in any order
    for key, condition in conditions.excepts.items():
        if key not in meta:
            return f"except on {key!r}: the message has no {key!r}"
        held = _holds(meta[key], condition)
        if held is None:
            return f"except {key} {_shown(condition)}: got {short(meta[key])}, not a number"
        excepted = excepted and held
    if not excepted:
        return None
    return "excepted by " + ", ".join(f"{k} {_shown(c)}" for k, c in conditions.excepts.items())


def _holds(actual: Any, condition: Condition) -> bool | None:
    """Whether the value meets the condition; None: a comparison on a value that is not
    a number."""
    if isinstance(condition, Comparison):
        number = _number(actual)
        return None if number is None else _OPERATORS[condition.op](number, condition.number)
    return _matches(actual, condition)


def _number(value: Any) -> float | None:
    """The value as the dispatcher reads it (``float(value)``: numbers and numeric
    strings such as ``"77.1"``), or None where it would raise: not a number, a boolean,
    a list, NaN or infinite (its ``eval`` fails on those too)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _matches(actual: Any, allowed: Iterable[Choice]) -> bool:
    """One of the allowed values; a list-valued field matches an allowed list equal to it,
    or an allowed value equal to any of its elements."""
    values = actual if isinstance(actual, (list, tuple, set, frozenset)) else (actual,)
    for b in allowed:
        if isinstance(b, tuple):
            if (isinstance(actual, (list, tuple)) and len(actual) == len(b)
                    and all(_equal(x, y) for x, y in zip(actual, b, strict=True))):
                return True
        elif any(_equal(a, b) for a in values):
            return True
    return False


def _equal(a: Any, b: Scalar) -> bool:
    return bool(a == b) or str(a) == str(b)


def _shown(condition: Condition) -> str:
    if isinstance(condition, Comparison):
        return repr(condition.text)
    return "in " + repr([list(c) if isinstance(c, tuple) else c for c in condition])


def _aliased(meta: Mapping[str, Any], aliases: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    out = dict(meta)
    for key, table in aliases.items():
        if key in out and str(out[key]) in table:
            out[key] = table[str(out[key])]
    return out


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
