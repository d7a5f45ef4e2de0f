"""The ``watch`` section: a list of watched directories, each checked completely at load.

A path must be absolute, and under ``daemon.allowed_roots`` when those are set; a path
that exists must be a directory (one that does not exist yet is watched once it
appears).  A pattern holding a ``{field}`` must compile as trollsift does; any other
pattern is a glob on the base name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..transfer.source import under
from .defaults import WATCH
from .model import WatchConfig
from .targets import _check_pattern
from .validator import Validator


def read_watch(v: Validator, raw: object, roots: tuple[str, ...]) -> tuple[WatchConfig, ...]:
    """Every entry of ``watch``; ``roots`` are ``daemon.allowed_roots`` (real paths)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        v.problem("watch", raw, "a list of directories to watch, each a mapping with at "
                  "least path and subject")
        return ()
    out: list[WatchConfig] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            v.problem(f"watch[{i}]", entry, "a mapping with at least path and subject")
            continue
        watched = _entry(v, i, entry, roots)
        if watched is None:
            continue
        real = os.path.realpath(watched.path)
        if real in seen:
            v.problem(f"watch[{i}].path", watched.path,
                      f"a directory that watch[{seen[real]}] does not watch already")
        seen.setdefault(real, i)
        out.append(watched)
    return tuple(out)


def _entry(v: Validator, i: int, entry: Mapping[str, Any],
           roots: tuple[str, ...]) -> WatchConfig | None:
    p = f"watch[{i}]."
    v.no_unknown(entry, p, WATCH)
    path = _path(v, entry.get("path"), f"{p}path", roots)
    subject = v.topic(entry.get("subject"), f"{p}subject")
    pattern = v.string(entry, "pattern", p)
    if pattern is not None:
        pattern = _pattern(v, pattern, f"{p}pattern")
    poll = None  # inotify; a wrong value is reported and stands in as 1 s
    if entry.get("poll_interval") is not None:
        poll = float(v.read(entry, p, "poll_interval", WATCH["poll_interval"], default=1.0))
    plain = v.read_all(entry, p, WATCH, skip=("poll_interval",))
    if path is None or subject is None:
        return None
    return WatchConfig(path=path, subject=subject, pattern=pattern, poll_interval=poll,
                       **plain)


def _path(v: Validator, value: object, key: str, roots: tuple[str, ...]) -> str | None:
    if not isinstance(value, str) or not value.strip():
        v.problem(key, value, "the absolute path of a directory (required)")
        return None
    path = os.path.normpath(os.path.expanduser(value))
    if not os.path.isabs(path) or "\x00" in path:
        v.problem(key, value, "the absolute path of a directory")
        return None
    if os.path.lexists(path) and not os.path.isdir(path):
        v.problem(key, value, "a directory (this path exists and is not one)")
    if roots and not under(os.path.realpath(path), roots):
        v.problem(key, value, f"a directory under daemon.allowed_roots ({', '.join(roots)}): "
                  "files elsewhere are refused")
    return path


def _pattern(v: Validator, pattern: str, key: str) -> str | None:
    if "{" in pattern:
        return _check_pattern(v, pattern, key)
    if "/" in pattern:
        v.problem(key, pattern, "a pattern on the base name (without /)")
        return None
    return pattern
