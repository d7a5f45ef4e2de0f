"""The validator's core: it collects problems, and reads every plain key by its rules.

A plain key is one of ``PLAIN_KINDS``: its type and bounds in ``defaults`` say all there
is to check.  Getters never raise: a wrong value is reported (key, value, expected) and a
usable default returned, so that one run finds every problem of a file.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Collection, Mapping
from typing import Any

import trollsift

from ..errors import ConfigProblem
from .defaults import Key, Kind
from .units import BIT_UNITS, BYTE_UNITS, human, parse_quantity, rate

#: the kinds ``Validator.read`` knows; the others are checked by the section readers
PLAIN_KINDS = frozenset({Kind.STRING, Kind.CHOICE, Kind.INTEGER, Kind.NUMBER, Kind.BOOLEAN,
                         Kind.SIZE, Kind.BYTE_RATE, Kind.BIT_RATE})
#: a named field, optionally indexed or with attributes: {sensor[0]}, {start_time.year}
_NAMED_FIELD_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*|\[[^\]]+\])*")


class Validator:
    """Collects problems while reading sections; getters return a usable default on error."""

    def __init__(self) -> None:
        self.problems: list[ConfigProblem] = []
        self.warnings: list[str] = []  # allowed but unwise; the config carries them

    def problem(self, key: str, value: object, expected: str) -> None:
        self.problems.append(ConfigProblem(key, value, expected))

    def no_unknown(self, data: Mapping[str, Any], prefix: str, allowed: Collection[str]) -> None:
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

    def read_all(self, data: Mapping[str, Any], prefix: str, section: Mapping[str, Key], *,
                 skip: Collection[str] = ()) -> dict[str, Any]:
        """Every plain key of ``section`` (in its documented order) but those in ``skip``."""
        return {name: self.read(data, prefix, name, key) for name, key in section.items()
                if key.kind in PLAIN_KINDS and name not in skip}

    def read(self, data: Mapping[str, Any], prefix: str, name: str, key: Key, *,
             default: Any = None) -> Any:
        """One plain key by its rules; ``default`` stands in for one that depends on
        other keys.  A wrong value is reported and its default returned."""
        default = key.default if default is None else default
        kind = key.kind
        if kind is Kind.STRING:
            return self.string(data, name, prefix, required=key.required, default=default)
        if kind is Kind.CHOICE:
            return self.choice(data, name, prefix, key.choices, default,
                               f"one of {', '.join(key.choices)}")
        if kind is Kind.BOOLEAN:
            return self.boolean(data, name, prefix, default)
        if kind is Kind.INTEGER:
            return self.number(data, name, prefix, default, minimum=key.minimum, integer=True)
        if kind is Kind.NUMBER:
            return float(self.number(data, name, prefix, default, minimum=key.minimum))
        if kind in (Kind.SIZE, Kind.BYTE_RATE, Kind.BIT_RATE):
            value = self.quantity(data, name, prefix, key, default)
            return int(value) if kind is Kind.SIZE and value is not None else value
        raise TypeError(f"{prefix}{name}: a {kind.value} key is checked by hand")

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

    def choice(self, data: Mapping[str, Any], key: str, prefix: str, choices: Collection[str],
               default: str, expected: str) -> str:
        value = self.string(data, key, prefix, default=default) or default
        if value not in choices:
            self.problem(f"{prefix}{key}", value, expected)
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

    def quantity(self, data: Mapping[str, Any], key: str, prefix: str, rules: Key,
                 default: float | None) -> float | None:
        """A number, or a string with a unit (``16MiB``, ``100Mbit``).

        A problem shows the minimum in the unit the key is written in (5MiB, 8kbit), not
        as a bare number of bytes or bits.
        """
        value = data.get(key)
        if value is None:
            return default
        bits = rules.kind is Kind.BIT_RATE
        number = parse_quantity(value, BIT_UNITS if bits else BYTE_UNITS)
        if number is not None and number >= rules.minimum:
            return number
        per_second = rules.kind is Kind.BYTE_RATE
        if bits:
            least, what = rate(rules.minimum), "bits per second"
        else:
            least = human(rules.minimum) + ("/s" if per_second else "")
            what = "bytes per second" if per_second else "bytes"
        example = rules.example or human(rules.default) + ("/s" if per_second else "")
        noun = "a rate" if per_second or bits else "a size"
        self.problem(f"{prefix}{key}", value, f"{noun} >= {least}: a number of {what} "
                     f"or a string with a unit like {example}")
        return default

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

    def template(self, template: str, key: str) -> bool:
        """A trollsift template whose fields are all named ({name} or {name:format})."""
        try:
            trollsift.parser.get_convert_dict(template)
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except (ValueError, re.error, KeyError, IndexError) as err:
            self.problem(key, template, f"a valid trollsift template ({err})")
            return False
        for name in fields:
            if not _NAMED_FIELD_RE.fullmatch(name):
                self.problem(key, template, f"named fields like {{platform_name}}, not "
                             f"{{{name}}}")
                return False
        return True
