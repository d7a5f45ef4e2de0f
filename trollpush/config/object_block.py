"""The ``object:`` block of an endpoint or a target: what uploads give their objects.

A target's block is merged over its endpoint's here, at load, so that routing reads one
finished block per target.  The merge rule (docs/config.md, "Object options"):

- a key the target gives replaces the endpoint's (``null``: back to the default);
- ``metadata`` and ``tags`` merge entry by entry: the target's entries win, and a
  ``null`` entry removes the endpoint's;
- ``encryption``, ``kms_key_id`` and ``sse_c_key_file`` go together: a target that gives
  any of them takes none of the endpoint's three (an ``encryption: sse-s3`` must not
  inherit a KMS key id it would then be refused for).

Literal values are checked against S3's limits here (``trollpush.objects``); templates
only for their syntax, their composed values per file at routing.  An SSE-C key is read
once, here; its file's content never reaches a problem or a summary.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .. import keys, objects
from ..models import SseCKey
from ..templates import fields
from .defaults import OBJECT
from .model import NO_OBJECT, ObjectConfig
from .validator import Validator

_STORAGE_CLASS_RE = re.compile(objects.STORAGE_CLASS_PATTERN)
_MEDIA_TYPE_RE = re.compile(objects.MEDIA_TYPE_PATTERN)
_ENCRYPTION = ("encryption", "kms_key_id", "sse_c_key_file")
_STORAGE_CLASS = ("an S3 storage class: " + ", ".join(objects.STORAGE_CLASSES)
                  + ", or another upper-case name (A-Z, 0-9, _) a store defines")


class KeyFiles:
    """SSE-C key files read during one load: each file is read once, however many
    endpoints and targets name it."""

    def __init__(self) -> None:
        self._read: dict[str, SseCKey | str] = {}

    def load(self, path: str) -> SseCKey | str:
        """The key, or why the file cannot be used (never its content)."""
        if path not in self._read:
            try:
                self._read[path] = keys.load(path)
            except keys.KeyFileError as err:
                self._read[path] = str(err)
        return self._read[path]


def read_object(v: Validator, raw: object, prefix: str, *, base: ObjectConfig = NO_OBJECT,
                key_files: KeyFiles, url: str | None) -> ObjectConfig:
    """The block at ``prefix`` (``endpoints.default.object``) merged over ``base``;
    ``url`` is the endpoint's, to warn of an SSE-C key sent in clear."""
    data = v.mapping(raw, prefix)
    if data is None:
        return base
    p = f"{prefix}."
    v.no_unknown(data, p, OBJECT)
    given: dict[str, Any] = {}
    for name, check in (("storage_class", _storage_class), ("content_type", _content_type),
                        ("cache_control", _header), ("content_disposition", _header),
                        ("acl", _acl)):
        if name in data:
            given[name] = check(v, data[name], f"{p}{name}")
    if data.get("if_none_match") is not None:
        given["if_none_match"] = v.boolean(data, "if_none_match", p, False)
    elif "if_none_match" in data:
        given["if_none_match"] = False
    for name, check_pairs in (("metadata", objects.check_metadata),
                              ("tags", objects.check_tags)):
        if name in data:
            given[name] = _entries(v, data[name], f"{p}{name}", getattr(base, name),
                                   check_pairs)
    if any(name in data for name in _ENCRYPTION):
        given.update(_encryption(v, data, p, key_files, url))
    merged = replace(base, **given)
    planned = objects.plan(merged)
    if planned is not None and not planned.templated:  # (composed: checked per file)
        for _, value, expected in objects.check_headers(planned.base):
            v.problem(prefix, value, expected)
    return NO_OBJECT if merged == NO_OBJECT else merged


def _storage_class(v: Validator, value: object, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _STORAGE_CLASS_RE.match(value):
        v.problem(key, value, _STORAGE_CLASS)
        return None
    return value


def _content_type(v: Validator, value: object, key: str) -> str | None:
    if value is None or value == "auto":
        return value
    if not isinstance(value, str) or not _MEDIA_TYPE_RE.match(value):
        v.problem(key, value, "auto, or a media type like application/x-hdf5 (type/subtype, "
                  "optionally ; name=value parameters, printable ASCII)")
        return None
    return value


def _header(v: Validator, value: object, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        v.problem(key, value, "a non-empty string (a header value)")
        return None
    if (why := objects.header_value(value)) is not None:
        v.problem(key, value, why)
        return None
    return value


def _acl(v: Validator, value: object, key: str) -> str | None:
    if value is None:
        return None
    if value not in objects.CANNED_ACLS:
        v.problem(key, value, f"a canned ACL: {', '.join(objects.CANNED_ACLS)}")
        return None
    return str(value)


def _entries(v: Validator, raw: object, key: str, inherited: tuple[tuple[str, str], ...],
             check: Any) -> tuple[tuple[str, str], ...]:
    """``metadata`` or ``tags`` merged entry by entry over ``inherited``; the literal
    values (and every key) checked against S3's limits, templates for their syntax.
    ``null`` is the default, none at all, as for every key (a target drops its
    endpoint's entries so)."""
    if raw is None:
        return ()
    data = v.mapping(raw, key)
    if data is None:
        return inherited
    merged = dict(inherited)
    for name, value in data.items():
        where = f"{key}.{name}"
        if not isinstance(name, str):
            v.problem(where, name, "a string key")
        elif value is None:
            merged.pop(name, None)
        elif not isinstance(value, str):
            v.problem(where, value, "a string: a value or a trollsift template (quote "
                      "numbers and dates)")
        elif v.template(value, where):
            merged[name] = value
    # a template counts as empty here: its composed value is checked per file
    shown = [(k, "" if fields(val) else objects.literal(val)) for k, val in merged.items()]
    for entry, value, expected in check(shown):
        v.problem(f"{key}.{entry}" if entry is not None else key, value, expected)
    return tuple(merged.items())


def _encryption(v: Validator, data: Mapping[str, Any], p: str, key_files: KeyFiles,
                url: str | None) -> dict[str, Any]:
    """``encryption``, ``kms_key_id`` and ``sse_c_key_file``, which go together; the
    SSE-C key read from its file."""
    rules = OBJECT["encryption"]
    mode = v.choice(data, "encryption", p, rules.choices, rules.default,
                    f"one of {', '.join(rules.choices)}")
    kms = v.string(data, "kms_key_id", p)
    if kms is not None and mode != "sse-kms":
        v.problem(f"{p}kms_key_id", kms, f"no kms_key_id unless encryption is sse-kms "
                  f"(it is {mode})")
        kms = None
    path = v.string(data, "sse_c_key_file", p)
    out: dict[str, Any] = {"encryption": mode, "kms_key_id": kms, "sse_c_key_file": None,
                           "sse_c": None}
    if mode != "sse-c":
        if path is not None:
            v.problem(f"{p}sse_c_key_file", path, f"no sse_c_key_file unless encryption "
                      f"is sse-c (it is {mode})")
        return out
    if path is None:
        v.problem(f"{p}sse_c_key_file", None, "the path of a file holding the 32-byte "
                  "SSE-C key (required with encryption: sse-c)")
        return out
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        v.problem(f"{p}sse_c_key_file", path, "an absolute path")
        return out
    key = key_files.load(path)
    if isinstance(key, str):
        v.problem(f"{p}sse_c_key_file", path, f"a file holding a 32-byte SSE-C key, raw "
                  f"or in base64 ({key})")
        return out
    if url is not None and url.startswith("http://"):
        v.warnings.append(f"{p}encryption: sse-c over {url}: the SSE-C key travels in "
                          "clear with every request (use an https:// endpoint)")
    return {**out, "sse_c_key_file": path, "sse_c": key}
