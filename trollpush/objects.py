"""Object options: what each upload gives its object besides key and body, composed per
file from an endpoint's or target's ``object`` block, and S3's limits on them.

The limits are checked here, before any upload: S3 would refuse such an object only
after the body was sent (a 400 per attempt, or once the last part is in), and a
compatible store might silently cut a value instead.  The checks serve both the
validator (literal values, at load) and routing (composed values, per file); a value
beyond a limit fails its target with ``bad_object_options``, a template whose field is
missing with ``compose_error``, as destinations do.

Pure functions, no I/O; nothing from ``trollpush.config`` is imported at run time, so the
validator can use these checks.  The per-file work is planned once per block
(:func:`plan`): a config without ``object`` blocks costs routing nothing, and one whose
options hold no template nor ``content_type: auto`` gives every file the same options.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from .errors import Reason, RouteError
from .models import ObjectOptions
from .templates import compose, fields

if TYPE_CHECKING:
    from .config.model import ObjectConfig

#: AWS's storage classes; any other upper-case name is taken too (a compatible store's
#: own classes, such as Ceph's placement targets)
STORAGE_CLASSES = ("STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA",
                   "INTELLIGENT_TIERING", "GLACIER", "DEEP_ARCHIVE", "GLACIER_IR", "OUTPOSTS",
                   "SNOW", "EXPRESS_ONEZONE")
CANNED_ACLS = ("private", "public-read", "public-read-write", "authenticated-read",
               "aws-exec-read", "bucket-owner-read", "bucket-owner-full-control")
#: what the validator, the JSON Schema and the checks below all match (ECMA-262 and
#: Python alike): a storage class; an HTTP header name (RFC 9110 token); a header value
#: (printable ASCII: no CR, LF or other control character); a media type with optional
#: parameters; the characters of a tag's key and value (``\w``: unicode letters, digits)
STORAGE_CLASS_PATTERN = r"^[A-Z][A-Z0-9_]*$"
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
HEADER_NAME_PATTERN = rf"^{_TOKEN}$"
HEADER_VALUE_PATTERN = r"^[ -~]*$"
MEDIA_TYPE_PATTERN = (rf'^{_TOKEN}/{_TOKEN}( *; *{_TOKEN}=({_TOKEN}|"[ !#-\[\]-~]*"))* *$')
TAG_PATTERN = r"^[\w +\-=.:/@]*$"
#: the JSON Schema's form of it: ECMA-262's ``\w`` is ASCII only, so every character
#: beyond ASCII is let through there (the validator checks them as letters)
TAG_SCHEMA_CHARS = r"\w\u0080-\uffff +\-=.:/@"
#: S3's limits: user metadata (keys and values, UTF-8 bytes), tags per object, and the
#: length of a tag's key and value (characters)
MAX_METADATA_BYTES = 2048
MAX_TAGS = 10
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
#: ``content_type: auto`` for a compressed file: the compressed type, never a
#: Content-Encoding (a client would otherwise unpack it on download)
COMPRESSED = {"gzip": "application/gzip", "bzip2": "application/x-bzip2",
              "xz": "application/x-xz"}
UNKNOWN_TYPE = "application/octet-stream"
#: the headers an upload's options may make: S3 takes 8 KiB of request headers, and
#: the rest (signature, checksums, host, length, SSE) needs up to about 1.5 KiB
MAX_OPTION_HEADERS = 6 * 1024
#: what ``auto`` knows: Python's own table, never the host's mime.types (a file gets the
#: same type on every host), and the formats of Earth-observation data
_TYPES = mimetypes.MimeTypes()
for _ext, _kind in {".h5": "application/x-hdf5", ".hdf5": "application/x-hdf5",
                    ".he5": "application/x-hdf5", ".hdf": "application/x-hdf",
                    ".nc": "application/x-netcdf", ".nc4": "application/x-netcdf",
                    ".grib": "application/x-grib", ".grib2": "application/x-grib",
                    ".grb": "application/x-grib", ".grb2": "application/x-grib",
                    ".bufr": "application/x-bufr", ".tif": "image/tiff",
                    ".tiff": "image/tiff"}.items():
    _TYPES.add_type(_kind, _ext)

_HEADER_NAME_RE = re.compile(HEADER_NAME_PATTERN)
_HEADER_VALUE_RE = re.compile(HEADER_VALUE_PATTERN)
_TAG_RE = re.compile(TAG_PATTERN)

HEADER_VALUE = "printable ASCII (no CR, LF or other control character)"

#: one thing beyond a limit: the entry's key (None: the whole mapping), its value, and
#: what was expected
Problem = tuple[str | None, object, str]


def header_value(text: str) -> str | None:
    """Why ``text`` cannot be sent as a header value, or None."""
    return None if _HEADER_VALUE_RE.match(text) else HEADER_VALUE


def check_metadata(pairs: Sequence[tuple[str, str]]) -> list[Problem]:
    """What in this user metadata S3 would refuse (or a store would mangle)."""
    out: list[Problem] = []
    seen: dict[str, str] = {}
    for key, value in pairs:
        if not _HEADER_NAME_RE.match(key):
            out.append((key, key, "a metadata key that is an HTTP header name: letters, "
                        "digits and !#$%&'*+-.^_`|~"))
        elif (twin := seen.setdefault(key.lower(), key)) != key:
            out.append((key, key, f"a metadata key unlike {twin!r} ignoring case (S3 "
                        "lowercases the keys: one would replace the other)"))
        if _HEADER_VALUE_RE.match(value) is None:
            out.append((key, value, f"a metadata value of {HEADER_VALUE}"))
        elif value != value.strip(" "):
            out.append((key, value, "a metadata value without leading or trailing blanks "
                        "(HTTP drops them: the store would keep another value)"))
    size = sum(len(k.encode()) + len(v.encode()) for k, v in pairs)
    if size > MAX_METADATA_BYTES:
        out.append((None, f"{size} bytes", f"user metadata of at most {MAX_METADATA_BYTES} "
                    "bytes (S3's limit: the UTF-8 bytes of every key and value)"))
    return out


def headers_size(opts: ObjectOptions) -> int:
    """The bytes of the headers an upload's options make (tags URL-encoded, as sent)."""
    size = sum(len(f"x-amz-meta-{k}: {v}\r\n".encode()) for k, v in opts.metadata)
    if opts.tags:
        size += len(f"x-amz-tagging: {urlencode(opts.tags, quote_via=quote)}\r\n")
    for name, value in (("content-type", opts.content_type),
                        ("cache-control", opts.cache_control),
                        ("content-disposition", opts.content_disposition)):
        if value is not None:
            size += len(f"{name}: {value}\r\n")
    return size


def check_headers(opts: ObjectOptions) -> list[Problem]:
    """Whether the headers the options make fit in a request S3 takes (8 KiB of headers
    in all, the signature and checksums included): tags, one by one within their limits,
    can still make a header far longer once URL-encoded."""
    size = headers_size(opts)
    if size <= MAX_OPTION_HEADERS:
        return []
    return [(None, f"{size} bytes of headers", f"at most {MAX_OPTION_HEADERS} bytes of "
             "headers for the tags (URL-encoded), metadata, content type, cache control and "
             "disposition (S3 takes 8 KiB of request headers in all)")]


def check_tags(pairs: Sequence[tuple[str, str]]) -> list[Problem]:
    """What in these object tags S3 would refuse."""
    out: list[Problem] = []
    if len(pairs) > MAX_TAGS:
        out.append((None, f"{len(pairs)} tags", f"at most {MAX_TAGS} tags (S3's limit)"))
    chars = "letters, digits, spaces and + - = . _ : / @"
    for key, value in pairs:
        if not key or len(key) > MAX_TAG_KEY or not _TAG_RE.match(key):
            out.append((key, key, f"a tag key of 1 to {MAX_TAG_KEY} characters: {chars}"))
        elif key.lower().startswith("aws:"):
            out.append((key, key, "a tag key not starting with aws: (reserved by AWS)"))
        if len(value) > MAX_TAG_VALUE or not _TAG_RE.match(value):
            out.append((key, value, f"a tag value of at most {MAX_TAG_VALUE} characters: "
                        f"{chars}"))
    return out


def content_type_of(name: str) -> str:
    """``content_type: auto``: the type of the object's name (the last part of its key:
    a destination may rename the file); a compressed file's is the compressed type
    (``x.nc.gz`` is application/gzip)."""
    # its suffixes only: a name is no URL (``data:text/html,x.nc`` is a NetCDF file)
    kind, encoding = _TYPES.guess_type("f" + "".join(PurePosixPath(name).suffixes),
                                       strict=False)
    if encoding is not None:
        return COMPRESSED.get(encoding, UNKNOWN_TYPE)
    return kind or UNKNOWN_TYPE


@dataclass(frozen=True)
class Plan:
    """An ``object`` block made ready for routing: ``base`` holds every option that is
    the same for all files; the rest is composed per file."""

    base: ObjectOptions
    auto_type: bool
    metadata: tuple[tuple[str, str, bool], ...]  # (key, template or literal, a template?)
    tags: tuple[tuple[str, str, bool], ...]
    templated: bool  # some metadata or tag value holds a {field}


def plan(config: ObjectConfig) -> Plan | None:
    """What routing does for each file under this block; None: nothing at all (every
    option at its default, so each upload keeps ``ObjectOptions()``)."""
    meta = _planned(config.metadata)
    tags = _planned(config.tags)
    base = ObjectOptions(
        storage_class=config.storage_class,
        content_type=None if config.content_type == "auto" else config.content_type,
        cache_control=config.cache_control, content_disposition=config.content_disposition,
        metadata=tuple((k, v) for k, v, _ in meta), tags=tuple((k, v) for k, v, _ in tags),
        encryption=config.encryption,
        kms_key_id=config.kms_key_id, sse_c=config.sse_c, acl=config.acl,
        if_none_match=config.if_none_match)
    auto = config.content_type == "auto"
    templated = any(t for _, _, t in (*meta, *tags))
    if base == ObjectOptions() and not auto:
        return None
    return Plan(base, auto, meta, tags, templated)


def compose_options(plan: Plan, meta: Mapping[str, Any], name: str, where: str
                    ) -> ObjectOptions:
    """The options of one file (base name ``name``, fields ``meta``); RouteError with
    ``compose_error`` or ``bad_object_options``."""
    if not plan.templated:
        return replace(plan.base, content_type=content_type_of(name)) if plan.auto_type \
            else plan.base
    metadata = _composed(plan.metadata, meta, f"{where}.metadata")
    tags = _composed(plan.tags, meta, f"{where}.tags")
    _refuse(check_metadata(metadata), f"{where}.metadata")
    _refuse(check_tags(tags), f"{where}.tags")
    if plan.auto_type:
        out = replace(plan.base, content_type=content_type_of(name), metadata=metadata,
                      tags=tags)
    else:
        out = replace(plan.base, metadata=metadata, tags=tags)
    _refuse(check_headers(out), where)
    return out


def options(config: ObjectConfig, meta: Mapping[str, Any], name: str, where: str = "object"
            ) -> ObjectOptions:
    """:func:`plan` and :func:`compose_options` at once (for tests and one-off use)."""
    planned = plan(config)
    return ObjectOptions() if planned is None else compose_options(planned, meta, name, where)


def describe(opts: ObjectOptions) -> str:
    """The options as ``trollpush match`` shows them; an SSE-C key only by its MD5."""
    out = [f"{name}={getattr(opts, name)}" for name in
           ("storage_class", "content_type", "cache_control", "content_disposition",
            "kms_key_id", "acl") if getattr(opts, name) is not None]
    if opts.metadata:
        out.append(f"metadata={dict(opts.metadata)!r}")
    if opts.tags:
        out.append(f"tags={dict(opts.tags)!r}")
    if opts.encryption != "none":
        key = f" (key md5 {opts.sse_c.md5})" if opts.sse_c is not None else ""
        out.append(f"encryption={opts.encryption}{key}")
    if opts.if_none_match:
        out.append("if_none_match=true")
    return " ".join(out) or "defaults"


def literal(value: str) -> str:
    """A value without fields, as composing would give it (``{{`` is ``{``)."""
    return value.replace("{{", "{").replace("}}", "}")


def _planned(pairs: Iterable[tuple[str, str]]) -> tuple[tuple[str, str, bool], ...]:
    """Each entry as a template to compose per file, or its literal value (once)."""
    return tuple((k, v, True) if fields(v) else (k, literal(v), False) for k, v in pairs)


def _composed(planned: Iterable[tuple[str, str, bool]], meta: Mapping[str, Any], where: str
              ) -> tuple[tuple[str, str], ...]:
    return tuple((k, compose(v, meta, f"{where}.{k}") if templated else v)
                 for k, v, templated in planned)


def _refuse(problems: list[Problem], where: str) -> None:
    if problems:
        key, value, expected = problems[0]
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise RouteError(Reason.BAD_OBJECT_OPTIONS,
                         f"{where}{'.' + key if key is not None else ''}: composed {shown}, "
                         f"expected {expected}")
