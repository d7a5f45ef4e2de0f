"""The fields of ``POST /upload``: read from a form or a JSON object, and checked.

Reading and checking never raise anything but ``MessageError`` (with its reason code),
so that a malformed, huge or hostile body becomes a Rejection answered 4xx like any
refused request.  The file itself is checked later, by ``messages.build_request``.
"""

from __future__ import annotations

import json
import math
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..errors import MessageError, Reason, RouteError
from ..messages import parse_destination
from ..models import Rejection, Replier

#: the fields that steer the request; every other one is metadata
CONTROL = ("file", "uri", "slug", "wait", "subject")
FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
JSON = "application/json"
#: fields a body may hold
MAX_FIELDS = 1000
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


async def read(request: web.Request, max_bytes: int) -> dict[str, Any]:
    """The body's fields: a form (urlencoded or multipart) or a JSON object."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise MessageError(Reason.TOO_LARGE, f"{length} bytes, more than max_request_bytes "
                           f"({max_bytes})")
    kind = request.content_type if request.headers.get("Content-Type") else FORM
    try:
        if kind == MULTIPART:
            return _multipart(await request.post())
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as err:
        raise MessageError(Reason.TOO_LARGE, f"more than max_request_bytes ({max_bytes} "
                           "bytes)") from err
    except ValueError as err:  # a malformed multipart body
        raise MessageError(Reason.BAD_MESSAGE, f"cannot read the form ({err})") from err
    if kind == FORM:
        return _urlencoded(raw)
    if kind == JSON:
        return _json(raw)
    raise MessageError(Reason.BAD_MESSAGE, f"Content-Type {kind!r}: expected {FORM}, "
                       f"{MULTIPART} or {JSON}")


def _urlencoded(raw: bytes) -> dict[str, Any]:
    try:
        pairs = urllib.parse.parse_qsl(raw.decode("utf-8"), keep_blank_values=True,
                                       strict_parsing=False, errors="strict",
                                       max_num_fields=MAX_FIELDS)
    except UnicodeDecodeError as err:
        raise MessageError(Reason.BAD_MESSAGE, f"the form is not UTF-8 ({err.reason} at "
                           f"byte {err.start})") from err
    except ValueError as err:
        raise MessageError(Reason.BAD_MESSAGE, f"cannot read the form ({err})") from err
    return _unique(pairs)


def _multipart(data: Mapping[str, Any]) -> dict[str, Any]:
    pairs = list(data.items())
    for key, value in pairs:
        if not isinstance(value, str):
            raise MessageError(Reason.BAD_MESSAGE, f"field {key!r} is a file: give the "
                               "file's path as a text field")
    return _unique(pairs)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise MessageError(Reason.BAD_MESSAGE, f"field {key!r} is given twice")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _json(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except RecursionError as err:
        raise MessageError(Reason.BAD_MESSAGE, "the JSON body is nested too deeply") from err
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError too
        raise MessageError(Reason.BAD_MESSAGE, f"the body is not JSON ({err})") from err
    if not isinstance(data, dict):
        raise MessageError(Reason.BAD_MESSAGE, "the JSON body is not an object")
    if len(data) > MAX_FIELDS:
        raise MessageError(Reason.BAD_MESSAGE, f"more than {MAX_FIELDS} fields")
    for key, value in data.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise MessageError(Reason.BAD_MESSAGE, f"field {key!r}: not a finite number")
        if not isinstance(value, (str, int, float, bool)):
            raise MessageError(Reason.BAD_MESSAGE, f"field {key!r}: expected a string, "
                               "number or boolean")
    return data


def _text(fields: Mapping[str, Any], key: str) -> str | None:
    value = fields.get(key)
    if value is None or isinstance(value, str):
        return value
    raise MessageError(Reason.BAD_MESSAGE, f"field {key!r}: expected a string")


def _wait(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise MessageError(Reason.BAD_MESSAGE, f"field 'wait': expected true or false, got "
                       f"{str(value)[:40]!r}")


@dataclass(frozen=True)
class Fields:
    """The checked fields of one upload request."""

    file: str
    uri: str | None = None
    slug: str | None = None
    wait: bool = True
    subject: str = "/"
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, fields: Mapping[str, Any]) -> Fields:
        """The fields, checked (MessageError says what is wrong)."""
        file = _text(fields, "file")
        if not file:
            raise MessageError(Reason.MISSING_URI, "missing field: file")
        uri, slug = _text(fields, "uri"), _text(fields, "slug")
        if uri is not None:
            _check_uri(uri, file)
        subject = _text(fields, "subject")
        if subject is not None and (not subject or any(c.isspace() for c in subject)):
            raise MessageError(Reason.BAD_MESSAGE, "field 'subject': expected a posttroll "
                               "subject (non-empty, no whitespace)")
        if any(not key for key in fields):
            raise MessageError(Reason.BAD_MESSAGE, "a field without a name")
        meta = {k: v for k, v in fields.items() if k not in CONTROL}
        return cls(file=file, uri=uri, slug=slug, wait=_wait(fields.get("wait")),
                   subject=subject or "/", metadata=meta)

    def data(self) -> dict[str, Any]:
        """The data of the posttroll ``file`` message this request stands for."""
        return {**self.metadata, "uri": self.file}

    def rejection(self, err: MessageError, reply: Replier | None) -> Rejection:
        return Rejection(err.reason, err.detail, "http", subject=self.subject, uri=self.file,
                         destination=self.uri, metadata=self.metadata, reply=reply,
                         message_type="file")


def _check_uri(uri: str, file: str) -> None:
    """s3://BUCKET/KEY, as s3nd takes it (a key ending in / gets the file's name)."""
    if not uri.startswith("s3://"):
        raise MessageError(Reason.BAD_DESTINATION, f"uri {uri[:200]!r}: expected "
                           "s3://BUCKET/KEY")
    try:
        parse_destination(uri, os.path.basename(file) or "file")
    except RouteError as err:
        raise MessageError(err.reason, err.detail) from err


def rejection(fields: Mapping[str, Any], err: MessageError) -> Rejection:
    """A request whose fields are wrong, described as far as they can be read."""
    text = {k: v for k, v in fields.items() if isinstance(v, str)}
    subject = text.get("subject", "/")
    meta = {k: v for k, v in fields.items() if k not in CONTROL}
    return Rejection(err.reason, err.detail, "http",
                     subject=subject if subject and not any(c.isspace() for c in subject)
                     else "/", uri=text.get("file"), destination=text.get("uri"),
                     metadata=meta, message_type="file")
