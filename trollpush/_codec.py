"""How journal records are written: tagged JSON that restores datetimes and tuples exactly,
and the (de)serialisation of requests, jobs and results."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import UnrecordableError
from .models import Job, Request, SourceFile, Upload, UploadResult

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


def _loads(text: str) -> Any:
    return json.loads(text, object_hook=_unpack)


def _file(f: SourceFile) -> dict[str, Any]:
    return {"uri": f.uri, "path": str(f.path), "uid": f.uid, "meta": f.meta,
            "stat": list(f.stat) if f.stat else None}


def _unfile(d: Mapping[str, Any]) -> SourceFile:
    stat = d.get("stat")
    return SourceFile(uri=d["uri"], path=Path(d["path"]), uid=d["uid"], meta=d["meta"],
                      stat=(int(stat[0]), int(stat[1]), int(stat[2])) if stat else None)


def _request_body(r: Request) -> str:
    return _dumps({"subject": r.subject, "type": r.type, "data": r.data,
                   "metadata": r.metadata, "files": [_file(f) for f in r.files],
                   "origin": r.origin, "destination": r.destination, "endpoint": r.endpoint,
                   "overwrite": r.overwrite},
                  f"request {r.id}")


def _request(rid: str, accepted_at: float, body: str) -> Request:
    d = _loads(body)
    return Request(id=rid, subject=d["subject"], type=d["type"], data=d["data"],
                   metadata=d["metadata"], files=tuple(_unfile(f) for f in d["files"]),
                   origin=d["origin"], destination=d["destination"], endpoint=d["endpoint"],
                   overwrite=bool(d.get("overwrite", False)), accepted_at=accepted_at)


def _job_body(job: Job) -> str:
    index = {id(f): i for i, f in enumerate(job.request.files)}
    uploads: list[list[Any]] = []
    for u in job.uploads:
        i = index.get(id(u.source))
        uploads.append([i if i is not None else _file(u.source), u.bucket, u.key])
    return _dumps({"endpoint": job.endpoint, "topic": job.publish_topic,
                   "metadata": job.metadata, "uploads": uploads},
                  f"request {job.request.id} job {job.target or 'direct'}")


def _job(request: Request, target: str | None, body: str) -> Job:
    d = _loads(body)
    uploads = tuple(Upload(request.files[src] if isinstance(src, int) else _unfile(src),
                           bucket, key) for src, bucket, key in d["uploads"])
    return Job(request=request, target=target, endpoint=d["endpoint"], uploads=uploads,
               metadata=d["metadata"], publish_topic=d["topic"])


def _results_body(job: Job, results: Sequence[UploadResult]) -> str:
    index = {id(u): i for i, u in enumerate(job.uploads)}
    out = [{"upload": index[id(r.upload)] if id(r.upload) in index else
            {"source": _file(r.upload.source), "bucket": r.upload.bucket,
             "key": r.upload.key},
            "size": r.size, "attempts": r.attempts, "seconds": r.seconds, "etag": r.etag,
            "error": r.error, "reason": r.reason, "checksum": r.checksum,
            "algorithm": r.checksum_algorithm, "parts": r.parts, "stat": r.source_stat}
           for r in results]
    return _dumps(out, f"request {job.request.id} job {job.target or 'direct'} results")


def _results(job: Job, body: str) -> tuple[UploadResult, ...]:
    out = []
    for d in _loads(body):
        u = d["upload"]
        upload = job.uploads[u] if isinstance(u, int) else Upload(
            _unfile(u["source"]), u["bucket"], u["key"])
        stat = d["stat"]
        out.append(UploadResult(upload, d["size"], d["attempts"], d["seconds"], etag=d["etag"],
                                error=d["error"], reason=d["reason"], checksum=d["checksum"],
                                checksum_algorithm=d["algorithm"], parts=d["parts"],
                                source_stat=None if stat is None else (stat[0], stat[1], stat[2])))
    return tuple(out)


def _i64(n: int) -> int:
    """An unsigned 64-bit value (an inode) as SQLite's signed INTEGER."""
    return n - (1 << 64) if n >= 1 << 63 else n


def _u64(n: int) -> int:
    return n + (1 << 64) if n < 0 else n
