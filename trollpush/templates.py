"""Composing trollsift templates from a file's metadata: destinations, publish topics and
object options (metadata, tags) alike.

A module of its own so that ``route`` and ``objects`` share one composer without either
importing the other (``objects`` is also read by the config validator).
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Mapping
from typing import Any

import trollsift

from .errors import Reason, RouteError
from .logsafe import short


@functools.cache
def fields(template: str) -> frozenset[str]:
    """The metadata keys a template uses (``{start_time:%Y}`` and ``{a.b}`` use start_time
    and a); templates come from the config, so each is parsed once."""
    try:
        return frozenset(re.split(r"[.\[]", name, maxsplit=1)[0]
                         for _, name, _, _ in string.Formatter().parse(template) if name)
    except ValueError:  # a malformed template: compose says what is wrong
        return frozenset()


def compose(template: str, meta: Mapping[str, Any], where: str) -> str:
    """The template filled in; a one-element list (``sensor: [viirs]``, as trollstalker
    sends it) composes as its element, a longer one cannot name one object."""
    used = meta
    for key in fields(template):
        value = meta.get(key)
        if isinstance(value, (list, tuple)):
            if len(value) != 1:
                raise RouteError(Reason.COMPOSE_ERROR,
                                 f"{where}: field {{{key}}} holds {len(value)} values "
                                 f"({short(value)}); a template needs one")
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
