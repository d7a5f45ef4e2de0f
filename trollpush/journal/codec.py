"""How journal records are written: tagged JSON that restores datetimes and tuples exactly,
and the (de)serialisation of requests, jobs and results."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import keys
from ..errors import UnrecordableError
from ..logsafe import short
from ..models import (
    NO_OPTIONS,
    SSE_MODES,
    Job,
    ObjectOptions,
    Request,
    SourceFile,
    Upload,
    UploadResult,
)
from .protocol import JobRecord, State

# --- the tagged JSON encoding ---------------------------------------------------------------


class _Unrecordable(Exception):
    def __init__(self, value: object) -> None:
        self.value = value
        self.path: list[str] = []


def _pack(v: Any) -> Any:
    """JSON-ready form of ``v``: datetimes, dates, times, timedeltas, tuples and
    mappings with keys that are not plain strings become one-key tagged objects."""
    if v is None or isinstance(v, (str, int, float)):
        return v
    if isinstance(v, dt.datetime):
        return {"$dt": v.isoformat()}
    if isinstance(v, dt.date):
        return {"$date": v.isoformat()}
    if isinstance(v, dt.time):
        return {"$time": v.isoformat()}
    if isinstance(v, dt.timedelta):
        return {"$td": [v.days, v.seconds, v.microseconds]}
    if isinstance(v, Mapping):
        if all(isinstance(k, str) and not k.startswith("$") for k in v):
            out: dict[str, Any] = {}
            for k, x in v.items():
                try:
                    out[k] = _pack(x)
                except _Unrecordable as err:
                    err.path.append(f".{k}")
                    raise
            return out
        pairs: list[list[Any]] = []
        for k, x in v.items():
            try:
                pairs.append([_pack(k), _pack(x)])
            except _Unrecordable as err:
                err.path.append(f"[{k!r}]")
                raise
        return {"$map": pairs}
    if isinstance(v, (list, tuple)):
        items: list[Any] = []
        for i, x in enumerate(v):
            try:
                items.append(_pack(x))
            except _Unrecordable as err:
                err.path.append(f"[{i}]")
                raise
        return items if isinstance(v, list) else {"$tuple": items}
    raise _Unrecordable(v)


def _unpack(d: dict[str, Any]) -> Any:
    if len(d) == 1:
        ((tag, v),) = d.items()
        if tag == "$dt":
            return dt.datetime.fromisoformat(v)
        if tag == "$date":
            return dt.date.fromisoformat(v)
        if tag == "$time":
            return dt.time.fromisoformat(v)
        if tag == "$td":
            return dt.timedelta(*v)
        if tag == "$tuple":
            return tuple(v)
        if tag == "$map":
            return {k: x for k, x in v}
    return d


def _dumps(value: Any, what: str) -> str:
    try:
        packed = _pack(value)
    except _Unrecordable as err:
        where = what + "".join(reversed(err.path))
        raise UnrecordableError(f"{where}: cannot record a {type(err.value).__name__} (expected "
                           "JSON values, datetimes, dates, times or timedeltas)") from None
    return json.dumps(packed, ensure_ascii=False, separators=(",", ":"))


def _loads(text: str | bytes) -> Any:
    return json.loads(text, object_hook=_unpack)


class Unreadable(ValueError):
    """A recorded body is not what this trollpush writes: a key is missing or has another
    type (a damaged file, a hand edit, a record from another version)."""


#: what reading a damaged record back can raise (json, the tags, the checks, deep nesting)
UNREADABLE = (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError,
              OverflowError)


def _get(d: object, key: str, where: str, *types: type, optional: bool = False) -> Any:
    """``d[key]`` if it has one of ``types`` (or is None when ``optional``); else
    :class:`Unreadable`, naming the key, the value and what was expected."""
    if type(d) is not dict:  # what _loads gives for every JSON object
        raise Unreadable(f"{where}: got {short(d)}, expected a mapping")
    if key not in d:
        raise Unreadable(f"{where}: no {key!r}")
    value = d[key]
    if isinstance(value, types) and (type(value) is not bool or bool in types):
        return value
    if value is None and optional:
        return None
    names = " or ".join(t.__name__ for t in types) + (" or null" if optional else "")
    raise Unreadable(f"{where}.{key}: got {short(value)}, expected {names}")


def _stat(value: object, where: str) -> tuple[int, int, int] | None:
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in value)):
        raise Unreadable(f"{where}: got {short(value)}, expected 3 integers or null")
    return (value[0], value[1], value[2])


def _file(f: SourceFile) -> dict[str, Any]:
    return {"uri": f.uri, "path": str(f.path), "uid": f.uid, "meta": f.meta,
            "stat": list(f.stat) if f.stat else None}


def _unfile(d: object, where: str) -> SourceFile:
    uri = _get(d, "uri", where, str)
    stat = d.get("stat") if isinstance(d, dict) else None  # older records have none
    return SourceFile(uri=uri, path=Path(_get(d, "path", where, str)),
                      uid=_get(d, "uid", where, str), meta=_get(d, "meta", where, Mapping),
                      stat=_stat(stat, f"{where}.stat"))


def _request_body(r: Request) -> str:
    body = {"subject": r.subject, "type": r.type, "data": r.data, "metadata": r.metadata,
            "files": [_file(f) for f in r.files], "origin": r.origin,
            "destination": r.destination, "endpoint": r.endpoint, "overwrite": r.overwrite}
    if r.ref is not None:  # (absent in older records, and when there is none)
        body["ref"] = r.ref
    return _dumps(body, f"request {r.id}")


def _request(rid: object, accepted_at: object, body: str | bytes) -> Request:
    """A request as recorded; :data:`UNREADABLE` when the row is not one."""
    if not isinstance(rid, str):
        raise Unreadable(f"requests.id: got {short(rid)}, expected text")
    if not isinstance(accepted_at, (int, float)) or isinstance(accepted_at, bool):
        raise Unreadable(f"requests.accepted_at: got {short(accepted_at)}, expected a number")
    d, w = _loads(body), "body"
    files = _get(d, "files", w, list)
    return Request(id=rid, subject=_get(d, "subject", w, str), type=_get(d, "type", w, str),
                   data=_get(d, "data", w, Mapping), metadata=_get(d, "metadata", w, Mapping),
                   files=tuple(_unfile(f, f"{w}.files[{i}]") for i, f in enumerate(files)),
                   origin=_get(d, "origin", w, str),
                   destination=_get(d, "destination", w, str, optional=True),
                   endpoint=_get(d, "endpoint", w, str, optional=True),
                   overwrite=bool(d.get("overwrite", False)), accepted_at=float(accepted_at),
                   ref=_get(d, "ref", w, str) if "ref" in d else None)


#: ObjectOptions' fields that are text or None, recorded as they are
_OPTION_TEXT = ("checksum", "storage_class", "content_type", "cache_control",
                "content_disposition", "kms_key_id", "acl")


def _options(o: ObjectOptions) -> dict[str, Any]:
    """An upload's object options as recorded: what differs from the defaults; an SSE-C
    key by its name (MD5) only, never its bytes."""
    out: dict[str, Any] = {}
    for name in _OPTION_TEXT:
        value = getattr(o, name)
        if value is not None and not (name == "checksum" and value == "none"):
            out[name] = value
    if o.metadata:
        out["metadata"] = [list(pair) for pair in o.metadata]
    if o.tags:
        out["tags"] = [list(pair) for pair in o.tags]
    if o.encryption != "none":
        out["encryption"] = o.encryption
    if o.sse_c is not None:
        out["sse_c"] = o.sse_c.md5
    if o.if_none_match:
        out["if_none_match"] = True
    return out


def _pairs(value: object, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
            for p in value):
        raise Unreadable(f"{where}: got {short(value)}, expected a list of [text, text]")
    return tuple((k, v) for k, v in value)


def _unoptions(d: object, where: str) -> ObjectOptions:
    """Object options as recorded (an SSE-C key found again by its name in the key ring:
    without its bytes when this process has not loaded it)."""
    if type(d) is not dict:
        raise Unreadable(f"{where}: got {short(d)}, expected a mapping")
    known = {*_OPTION_TEXT, "metadata", "tags", "encryption", "sse_c", "if_none_match"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise Unreadable(f"{where}: unknown option(s) {', '.join(unknown)}")
    given: dict[str, Any] = {name: _get(d, name, where, str) for name in _OPTION_TEXT
                             if name in d}
    if "metadata" in d:
        given["metadata"] = _pairs(d["metadata"], f"{where}.metadata")
    if "tags" in d:
        given["tags"] = _pairs(d["tags"], f"{where}.tags")
    if "encryption" in d:
        given["encryption"] = mode = _get(d, "encryption", where, str)
        if mode not in SSE_MODES:
            raise Unreadable(f"{where}.encryption: got {short(mode)}, expected one of "
                             f"{', '.join(SSE_MODES)}")
    if "sse_c" in d:
        given["sse_c"] = keys.find(_get(d, "sse_c", where, str))
    if "if_none_match" in d:
        given["if_none_match"] = _get(d, "if_none_match", where, bool)
    return ObjectOptions(**given)


def _job_body(job: Job) -> str:
    index = {id(f): i for i, f in enumerate(job.request.files)}
    uploads: list[list[Any]] = []
    for u in job.uploads:
        i = index.get(id(u.source))
        item = [i if i is not None else _file(u.source), u.bucket, u.key]
        if u.options is not NO_OPTIONS:
            options = _options(u.options)
            if options:
                item.append(options)
        uploads.append(item)
    return _dumps({"endpoint": job.endpoint, "topic": job.publish_topic,
                   "metadata": job.metadata, "uploads": uploads},
                  f"request {job.request.id} job {job.target or 'direct'}")


def _job(request: Request, target: object, body: str | bytes) -> Job:
    """A job as recorded, rebuilt with its request; :data:`UNREADABLE` when not one."""
    if target is not None and not isinstance(target, str):
        raise Unreadable(f"jobs.target: got {short(target)}, expected text or null")
    d, w = _loads(body), "body"
    uploads = []
    for i, item in enumerate(_get(d, "uploads", w, list)):
        where = f"{w}.uploads[{i}]"
        # (options: absent in records older than object options, and for the defaults)
        if not isinstance(item, list) or len(item) not in (3, 4):
            raise Unreadable(f"{where}: got {short(item)}, expected [source, bucket, key] "
                             "or [source, bucket, key, options]")
        src, bucket, key = item[:3]
        options = _unoptions(item[3], f"{where}[3]") if len(item) == 4 else NO_OPTIONS
        if isinstance(src, int) and not isinstance(src, bool):
            if not 0 <= src < len(request.files):
                raise Unreadable(f"{where}[0]: got {src}, expected a file index below "
                                 f"{len(request.files)}")
            source = request.files[src]
        else:
            source = _unfile(src, f"{where}[0]")
        if not isinstance(bucket, str) or not isinstance(key, str):
            raise Unreadable(f"{where}: got bucket {short(bucket)} and key {short(key)}, "
                             "expected text")
        uploads.append(Upload(source, bucket, key, options))
    return Job(request=request, target=target, endpoint=_get(d, "endpoint", w, str),
               uploads=tuple(uploads), metadata=_get(d, "metadata", w, Mapping),
               publish_topic=_get(d, "topic", w, str))


#: what results record only when set (absent in older records): key -> default
_RESULT_EXTRAS: dict[str, Any] = {"version_id": None, "storage_class": None,
                                  "encryption": None, "written_with": "",
                                  "already_there": False}


def _results_body(job: Job, results: Sequence[UploadResult]) -> str:
    index = {id(u): i for i, u in enumerate(job.uploads)}
    out = []
    for r in results:
        item = {"upload": index[id(r.upload)] if id(r.upload) in index else
                {"source": _file(r.upload.source), "bucket": r.upload.bucket,
                 "key": r.upload.key},
                "size": r.size, "attempts": r.attempts, "seconds": r.seconds, "etag": r.etag,
                "error": r.error, "reason": r.reason, "checksum": r.checksum,
                "algorithm": r.checksum_algorithm, "parts": r.parts, "stat": r.source_stat}
        for name, default in _RESULT_EXTRAS.items():
            value = getattr(r, name)
            if value != default:
                item[name] = value
        out.append(item)
    return _dumps(out, f"request {job.request.id} job {job.target or 'direct'} results")


def _results(job: Job, body: str | bytes) -> tuple[UploadResult, ...]:
    """A job's results as recorded; :data:`UNREADABLE` when they are not."""
    items = _loads(body)
    if not isinstance(items, list):
        raise Unreadable(f"results: got {short(items)}, expected a list")
    out = []
    for i, d in enumerate(items):
        w = f"results[{i}]"
        u = _get(d, "upload", w, int, Mapping)
        if isinstance(u, int):
            if not 0 <= u < len(job.uploads):
                raise Unreadable(f"{w}.upload: got {u}, expected an upload index below "
                                 f"{len(job.uploads)}")
            upload = job.uploads[u]
        else:
            upload = Upload(_unfile(_get(u, "source", f"{w}.upload", Mapping),
                                    f"{w}.upload.source"),
                            _get(u, "bucket", f"{w}.upload", str),
                            _get(u, "key", f"{w}.upload", str))
        text: dict[str, str | None] = {k: _get(d, k, w, str, optional=True) for k in
                                       ("etag", "error", "reason", "checksum", "algorithm")}
        extra: dict[str, Any] = {k: _get(d, k, w, str, optional=True) for k in
                                 ("version_id", "storage_class", "encryption",
                                  "written_with") if k in d}
        if "already_there" in d:
            extra["already_there"] = _get(d, "already_there", w, bool)
        out.append(UploadResult(upload, _get(d, "size", w, int), _get(d, "attempts", w, int),
                                float(_get(d, "seconds", w, int, float)), etag=text["etag"],
                                error=text["error"], reason=text["reason"],
                                checksum=text["checksum"], checksum_algorithm=text["algorithm"],
                                parts=_get(d, "parts", w, int),
                                source_stat=_stat(d["stat"], f"{w}.stat"), **extra))
    return tuple(out)


def _job_record(request: Request, target: object, state: object, reason: object,
                body: str | bytes, results: str | bytes | None) -> JobRecord:
    """A jobs row read back whole; :data:`UNREADABLE` when any part of it is not."""
    if not isinstance(state, str) or state not in tuple(State):
        raise Unreadable(f"jobs.state: got {short(state)}, expected one of "
                         f"{', '.join(State)}")
    if reason is not None and not isinstance(reason, str):
        raise Unreadable(f"jobs.reason: got {short(reason)}, expected text or null")
    job = _job(request, target, body)
    done = () if results is None else _results(job, results)
    return JobRecord(job, State(state), done, reason)


def unreadable(err: BaseException) -> str:
    """What a decoding error says, for a log line and the quarantine."""
    text = str(err) if isinstance(err, Unreadable) else f"{type(err).__name__}: {err}"
    return text if len(text) <= 500 else text[:497] + "..."


def _i64(n: int) -> int:
    """An unsigned 64-bit value (an inode) as SQLite's signed INTEGER."""
    return n - (1 << 64) if n >= 1 << 63 else n


def _u64(n: int) -> int:
    return n + (1 << 64) if n < 0 else n
