"""The HTTP input's OpenAPI 3.1 document: every route, field, reply and status code.

``GET /openapi.json`` serves it; ``docs/http-api.yaml`` is the same document as YAML
(regenerate it with ``python -c "from trollpush.inputs._http_api import main; main()"
> docs/http-api.yaml``), and a test fails when the two differ.  The statuses are those
of ``_http_reply.STATUS``.
"""

from __future__ import annotations

import functools
from typing import Any

from .. import __version__
from ._http_reply import STATUS

Schema = dict[str, Any]

_STRING: Schema = {"type": "string"}
_NUMBER: Schema = {"type": "number", "minimum": 0}
_COUNT: Schema = {"type": "integer", "minimum": 0}
_NULLABLE: Schema = {"type": ["string", "null"]}

#: what each status means, for the document (every one that POST /upload may answer)
_MEANING = {
    200: "The object landed (every destination, for a routed request).",
    202: "`wait=false`: the request is in the journal; its outcome is only announced.",
    400: "A missing or invalid field, a path that is not absolute, a file that is missing, "
         "unreadable, not a regular file or outside `allowed_roots`, a bad `uri`, or no "
         "target matched, or object options that do not compose or are beyond S3's "
         "limits (`bad_object_options`).",
    401: "`http.token_file` is set and the `Authorization: Bearer TOKEN` header is missing "
         "or wrong.",
    404: "The bucket does not exist (`NoSuchBucket`).",
    408: "The request waited longer than the endpoint's `queue_timeout` for an upload "
         "slot, or the client took longer than `http.read_timeout` to send it.",
    409: "`if_none_match`: another object is already at the key, and was kept (`exists`).",
    413: "The body is larger than `daemon.max_request_bytes`.",
    500: "Anything else (`internal_error`, `file_changed`).",
    502: "Another error from the store, after the last try.",
    503: "The daemon is stopping (`shutdown`: a journaled request is finished at the next "
         "start) or cannot write its journal (`journal_unavailable`).",
    504: "The last attempt timed out.",
}


def _object(properties: Schema, required: tuple[str, ...] = (), **more: Any) -> Schema:
    out: Schema = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    out.update(more)
    return out


def _fields(wait: Schema, metadata: Schema) -> Schema:
    return _object({
        "file": {"type": "string", "pattern": "^/", "description": "Absolute path of the "
                 "file on the daemon's host (`daemon.allowed_roots` applies)."},
        "uri": {"type": "string", "pattern": "^s3://[^/]+", "description": "`s3://BUCKET/"
                "KEY`: the file goes exactly there (a key ending in `/` gets the file's "
                "name), through `http.endpoint`. Absent: the file is routed by the "
                "config's targets."},
        "slug": {"type": "string", "description": "A label echoed in the reply and logs."},
        "wait": {**wait, "description": "false: answer 202 once the request is journaled "
                 "(default: true, hold the connection until the outcome)."},
        "subject": {"type": "string", "pattern": r"^\S+$", "description": "Routed "
                    "requests: the subject of the posttroll `file` message the request "
                    "stands for, which targets' `topics` match (default `/`)."},
    }, ("file",), additionalProperties={**metadata, "description": "Metadata, as a "
                                        "posttroll message's fields."})


def _task() -> Schema:
    upload = _object({
        "uri": {**_NULLABLE, "description": "The destination (null: none was found)."},
        "code": {"type": "integer"}, "msg": _STRING, "reason": _STRING,
        "target": {**_NULLABLE, "description": "The target (null: a direct request)."},
        "endpoint": _STRING, "size": _COUNT, "attempts": _COUNT, "seconds": _NUMBER,
        "parts": {**_COUNT, "description": "0: a single PUT."}, "checksum": _STRING,
    }, ("uri", "code", "msg"))
    return _object({
        "id": _STRING, "file": _STRING, "slug": _STRING,
        "uri": {"anyOf": [_STRING, {"type": "array", "items": _STRING}],
                "description": "The destination; a list when routing fanned out."},
        "upload_total": {**_STRING, "description": "Human-friendly upload_total_seconds."},
        "upload_total_seconds": {**_NUMBER, "description": "From receipt to the reply."},
        "upload_queued_seconds": {**_NUMBER, "description": "Waiting: in the queue, for "
                                  "an upload slot, between rounds of retries."},
        "upload_transfer_seconds": {**_NUMBER, "description": "The longest upload, its "
                                    "attempts included."},
        "upload_attempts": _COUNT, "upload_size_bytes": _COUNT,
        "upload_rate": {**_STRING, "description": "Human-friendly, in Mbit/s."},
        "upload_rate_bytes": _NUMBER, "upload_parts": _COUNT,
        "checksum": {**_STRING, "description": "ALGORITHM:VALUE, as the store verified it."},
        "reason": {**_STRING, "description": "trollpush's reason code of a failure, as "
                   "announced on posttroll."},
        "uploads": {"type": "array", "items": upload, "description": "Routed requests: "
                    "each destination with its own outcome."},
    }, ("id",))


def _reply(code: int) -> Schema:
    out: Schema = {"description": _MEANING[code], "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}}
    if code >= 400:
        out["headers"] = {"X-Error": {"$ref": "#/components/headers/X-Error"}}
    return out


def _errors(*codes: int) -> Schema:
    return {str(code): _reply(code) for code in codes}


def _upload() -> Schema:
    scalar = {"type": ["string", "number", "boolean"]}
    return {"post": {
        "summary": "Upload a file to S3 (s3nd-compatible)",
        "description": "Journals the request before any answer, then holds the "
                       "connection until the outcome. A client that disconnects first "
                       "abandons its request (`client_gone`; an upload in progress is "
                       "aborted). Failures are also announced on posttroll with the "
                       "reply's `reason`.",
        "operationId": "upload",
        "requestBody": {"required": True, "content": {
            "application/x-www-form-urlencoded": {"schema": _fields(
                {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no"]},
                _STRING)},
            "application/json": {"schema": _fields({"type": "boolean"}, scalar)}}},
        "responses": _errors(200, 202, 400, 401, 404, 408, 413, 500, 502, 503, 504),
    }}


@functools.cache
def _document() -> Schema:
    assert set(STATUS.values()) - {418} <= set(_MEANING), "a status without a meaning"
    return {
        "openapi": "3.1.0",
        "info": {"title": "trollpush HTTP submission API", "version": __version__,
                 "description": "Compatible with s3nd (lsst-dm/deliverator v2): the same "
                                "fields, reply and status codes; see docs/http-api.md.",
                 "license": {"name": "GPL-3.0-or-later", "identifier": "GPL-3.0-or-later"}},
        "servers": [{"url": "http://127.0.0.1:15555"}],
        "security": [{}, {"bearer": []}],
        "paths": {
            "/upload": _upload(),
            "/version": {"get": {
                "summary": "The version and the effective configuration, secrets hidden",
                "operationId": "version",
                "responses": {"200": {"description": "OK", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Version"}}}},
                              **_errors(401)}}},
            "/status": {"get": {
                "summary": "What the daemon is doing (trollpush status): uptime, inputs, "
                           "requests and rates, queue, endpoints, journal backlog, health",
                "operationId": "status",
                "description": "docs/status.md describes every field. Served with "
                               "upload: false too.",
                "responses": {"200": {"description": "OK", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/DaemonStatus"}}}},
                              **_errors(401)}}},
            "/metrics": {"get": {
                "summary": "Prometheus metrics, text format (docs/metrics.md lists them)",
                "operationId": "metrics",
                "responses": {"200": {"description": "OK", "content": {"text/plain": {
                    "schema": {"type": "string"}}}}, **_errors(401)}}},
            "/openapi.json": {"get": {
                "summary": "This document", "operationId": "openapi", "security": [{}],
                "responses": {"200": {"description": "OK", "content": {
                    "application/json": {"schema": {"type": "object"}}}}}}},
        },
        "components": {
            "schemas": {
                "Status": _object({"version": _STRING, "code": {"type": "integer"},
                                   "msg": _STRING, "task": {"$ref": "#/components/schemas/Task"}},
                                  ("version", "code", "msg")),
                "Task": _task(),
                "Version": _object({"version": _STRING, "config": {"type": "object"}},
                                   ("version", "config")),
                "DaemonStatus": _object({
                    "version": _STRING, "time": {"type": "number"},
                    "uptime_seconds": {"type": "number"}, "inputs": {"type": "array"},
                    "requests": {"type": "object"}, "endpoints": {"type": "object"},
                    "journal": {"type": "object"}, "health": {"type": "object"}},
                    ("version", "time", "uptime_seconds", "inputs", "requests", "endpoints",
                     "journal", "health")),
            },
            "headers": {"X-Error": {"description": "The error message (msg), on every "
                                    "error reply.", "schema": _STRING}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "Needed when http.token_file "
                                                          "is set."}},
        },
    }


def openapi() -> Schema:
    """The document (one shared copy: do not change it)."""
    return _document()


def main() -> None:
    """Print the document as YAML (what docs/http-api.yaml holds)."""
    import yaml

    print("# generated from trollpush/inputs/_http_api.py: do not edit\n"
          + yaml.safe_dump(openapi(), sort_keys=False, width=88, allow_unicode=True),
          end="")

