"""Sizes and rates as the config writes them: ``16MiB``, ``1MiB/s``, ``100Mbit``.

Parsing and the wording of limits live together, so that a problem shows its minimum in
the unit the key is written in (``5MiB``, ``8kbit``) and the JSON Schema's string
pattern accepts exactly the units the validator does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

MiB = 1024 * 1024
BYTE_UNITS: Mapping[str, float] = {
    "": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
    "gb": 1000**3, "kib": 1024, "mib": MiB, "gib": 1024**3}
BIT_UNITS: Mapping[str, float] = {
    "": 1, "bit": 1, "bps": 1, "kbit": 1e3, "kbps": 1e3, "mbit": 1e6, "mbps": 1e6,
    "gbit": 1e9, "gbps": 1e9}
_QUANTITY_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*(?:/s)?\s*$")


def parse_quantity(value: object, units: Mapping[str, float]) -> float | None:
    """A number, or a string of a number and one of ``units``; None if it is neither."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and (m := _QUANTITY_RE.match(value)) and \
            m.group(2).lower() in units:
        number = float(m.group(1)) * units[m.group(2).lower()]
    else:
        return None
    return number if math.isfinite(number) else None


def quantity_pattern(units: Mapping[str, float]) -> str:
    """An ECMA-262 pattern for what parse_quantity reads as a string with ``units``
    (no inline flags there, so each letter is spelt in both cases)."""
    spelt = sorted(("".join(f"[{c.lower()}{c.upper()}]" for c in u) for u in units if u),
                   key=len, reverse=True)
    return rf"^\s*[0-9]+(\.[0-9]*)?\s*({'|'.join(spelt)})?\s*(/s)?\s*$"


def human(n: float) -> str:
    """A byte count in the largest binary unit it fills (16777216 -> 16MiB)."""
    for unit, scale in (("GiB", 1024**3), ("MiB", MiB), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:g}{unit}"
    return f"{n:g}B"


def rate(bits: float) -> str:
    """A bit rate in the unit rates are written in (8000 -> 8kbit), for messages."""
    for unit, scale in (("Gbit", 1e9), ("Mbit", 1e6), ("kbit", 1e3)):
        if bits >= scale:
            return f"{bits / scale:g}{unit}"
    return f"{bits:g}bit"
