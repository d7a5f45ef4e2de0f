"""The ``targets`` section: routing rules, with their patterns and templates checked.

A pattern must compile as trollsift does; a destination or publish_topic must be a
template trollsift can compose, with named fields only; conditions (one set, or
trollmoves' list of sets) hold plain values or comparisons, parsed here once; aliases
hold plain values.  Nothing here looks at a message: that is ``trollpush.route``'s work.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, cast

import trollsift

from .defaults import COMPARISON_PATTERN, OPERATOR_START, TARGET
from .model import (
    NO_OBJECT,
    Choice,
    Comparison,
    Condition,
    ConditionSet,
    EndpointConfig,
    Operator,
    Scalar,
    TargetConfig,
    default_endpoint,
)
from .object_block import KeyFiles, read_object
from .validator import Validator


def read_targets(v: Validator, raw: object, endpoints: Mapping[str, EndpointConfig],
                 key_files: KeyFiles) -> list[TargetConfig]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        v.problem("targets", raw, "a list of targets")
        return []
    out: list[TargetConfig] = []
    names: set[str] = set()
    for i, t in enumerate(raw):
        if not isinstance(t, Mapping):
            v.problem(f"targets[{i}]", t, "a mapping with at least `destination`")
            continue
        out.append(_target(v, i, t, endpoints, names, key_files))
    return out


def read_endpoint(v: Validator, data: Mapping[str, Any], prefix: str,
                  endpoints: Mapping[str, EndpointConfig]) -> str | None:
    """``endpoint``: a configured endpoint's name (default: ``default``, else the only one)."""
    endpoint = v.string(data, "endpoint", prefix, default=default_endpoint(endpoints))
    if endpoint is None:
        v.problem(f"{prefix}endpoint", None,
                  f"the name of an endpoint (one of: {', '.join(endpoints) or 'none defined'})")
    elif endpoints and endpoint not in endpoints:
        v.problem(f"{prefix}endpoint", endpoint,
                  f"one of the endpoints: {', '.join(endpoints)}")
    return endpoint


def _target(v: Validator, i: int, t: Mapping[str, Any],
            endpoints: Mapping[str, EndpointConfig], names: set[str],
            key_files: KeyFiles) -> TargetConfig:
    """Target number ``i``; ``names`` holds those of the targets before it."""
    p = f"targets[{i}]."
    v.no_unknown(t, p, TARGET)
    name = v.read(t, p, "name", TARGET["name"], default=f"target{i}")
    if name in names:
        v.problem(f"{p}name", name, "a name not used by another target")
    names.add(name)
    pattern = v.string(t, "pattern", p)
    if pattern is not None:
        pattern = _check_pattern(v, pattern, f"{p}pattern")
    destination = v.string(t, "destination", p, required=True)
    if destination is not None:
        _check_destination(v, destination, f"{p}destination")
    endpoint = read_endpoint(v, t, p, endpoints)
    publish_topic = t.get("publish_topic")
    if publish_topic is not None:
        publish_topic = v.topic(publish_topic, f"{p}publish_topic")
        if publish_topic is not None:
            v.template(publish_topic, f"{p}publish_topic")
    conditions = _conditions(v, t.get("conditions"), f"{p}conditions")
    rules = TARGET["overwrite"]
    overwrite = v.choice(t, "overwrite", p, rules.choices, rules.default,
                         f"{rules.default} (the default) or always")
    ep = endpoints.get(endpoint or "")
    block = read_object(v, t.get("object"), f"{p}object", key_files=key_files,
                        base=ep.object if ep else NO_OBJECT, url=ep.url if ep else None)
    return TargetConfig(
        name=name, destination=destination or "", endpoint=endpoint or "", object=block,
        topics=v.topics(t.get("topics"), f"{p}topics"), pattern=pattern,
        conditions=conditions,
        aliases=_aliases(v, t.get("aliases"), f"{p}aliases"), publish_topic=publish_topic,
        overwrite=overwrite)


def _check_pattern(v: Validator, pattern: str, key: str) -> str | None:
    try:
        trollsift.parser.get_convert_dict(pattern)
        re.compile(trollsift.parser.regex_format(pattern))
    except (ValueError, re.error, KeyError, IndexError) as err:
        v.problem(key, pattern, f"a valid trollsift pattern ({err})")
        return None
    return pattern


def _check_destination(v: Validator, destination: str, key: str) -> None:
    if not destination.startswith("s3://"):
        v.problem(key, destination, "an s3://BUCKET/KEY template")
        return
    rest = destination[len("s3://"):]
    bucket = rest.split("/", 1)[0]
    if not bucket:
        v.problem(key, destination, "a bucket name after s3://")
    v.template(destination, key)


_COMPARISON_RE = re.compile(COMPARISON_PATTERN)
_OPERATOR_START_RE = re.compile(OPERATOR_START)
_VALUES = "a string, number or boolean, a list of them, or a comparison like '<30'"
_ITEM = ("a string, number or boolean, or a list of them (a list-valued field must equal "
         "it as a whole)")
_INNER = "a string, number or boolean"
_COMPARISON = ("a comparison: <, >, <=, >=, == or != right at the start, then a number, "
               "like '<30' or '>= 5' (a string starting with an operator is never text)")


def _conditions(v: Validator, raw: object, key: str) -> tuple[ConditionSet, ...]:
    """``conditions``: one set (a mapping), or trollmoves' list of sets, any of which is
    enough; a dispatcher's block can be copied as it is."""
    if raw is None:
        return ()
    if isinstance(raw, Mapping):
        one = _condition_set(v, raw, key)
        return (one,) if one.conditions or one.excepts else ()
    if not isinstance(raw, list) or not raw:
        v.problem(key, raw, "a mapping of field: value(s), or a non-empty list of such "
                  "mappings (condition sets, any one of which is enough)")
        return ()
    sets = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or not item:
            v.problem(f"{key}[{i}]", item, "a non-empty mapping of field: value(s) (an "
                      "empty set would take every file)")
            continue
        sets.append(_condition_set(v, item, f"{key}[{i}]"))
    return tuple(sets)


def _condition_set(v: Validator, data: Mapping[str, Any], key: str) -> ConditionSet:
    conditions: dict[str, Condition] = {}
    excepts: dict[str, Condition] = {}
    for name, value in data.items():
        if name != "except":
            conditions[str(name)] = _condition(v, value, f"{key}.{name}")
            continue
        block = v.mapping(value, f"{key}.except")
        if value is None or (block is not None and not block):
            v.problem(f"{key}.except", value, "a non-empty mapping of field: value(s)")
        for ename, evalue in (block or {}).items():
            if ename == "except":
                v.problem(f"{key}.except.except", evalue, "no except inside except (write "
                          "another condition set instead)")
                continue
            excepts[str(ename)] = _condition(v, evalue, f"{key}.except.{ename}")
    return ConditionSet(MappingProxyType(conditions), MappingProxyType(excepts))


def _condition(v: Validator, value: object, key: str) -> Condition:
    """One key's condition: a comparison (parsed here, once), or the values one of which
    the field must equal; a list inside the list is a whole list the field must equal."""
    if isinstance(value, str) and _OPERATOR_START_RE.match(value):
        return _comparison(v, value, key)
    items = value if isinstance(value, list) else [value]
    if not items:
        v.problem(key, value, "a value or a non-empty list of values")
    choices: list[Choice] = []
    for i, item in enumerate(items):
        where = key if item is value else f"{key}[{i}]"
        if isinstance(item, list) and item is not value:
            inner = [_plain(v, x, f"{where}[{j}]", _INNER) for j, x in enumerate(item)]
            if not item:
                v.problem(where, item, "a non-empty list a list-valued field must equal")
            elif all(x is not None for x in inner):
                choices.append(tuple(x for x in inner if x is not None))
        elif (plain := _plain(v, item, where, _VALUES if item is value else _ITEM)) is not None:
            choices.append(plain)
    return tuple(choices)


def _plain(v: Validator, item: object, key: str, expected: str) -> Scalar | None:
    """A value to compare for equality; a comparison string in a list is refused (the
    dispatcher would compare ``'<30'`` as text there, which is never what was meant)."""
    if isinstance(item, str) and _OPERATOR_START_RE.match(item):
        v.problem(key, item, "a plain value: a comparison cannot be one of a list (write "
                  "it alone, or in another condition set)")
        return None
    if not isinstance(item, (str, int, float, bool)):
        v.problem(key, item, expected)
        return None
    return item


def _comparison(v: Validator, text: str, key: str) -> Comparison | tuple[Choice, ...]:
    m = _COMPARISON_RE.match(text)
    if m is None:
        v.problem(key, text, _COMPARISON)
        return ()
    literal = m.group(2)
    try:
        number: int | float = int(literal)
    except ValueError:
        number = float(literal)
    return Comparison(cast(Operator, m.group(1)), number, text)


def _aliases(v: Validator, raw: object, key: str) -> Mapping[str, Mapping[str, str]]:
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
