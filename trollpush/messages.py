"""The posttroll wire, both ways: frames in, Requests (or Rejections) out; messages out.

Decoding never raises: every frame becomes either a Request or a Rejection that carries
the reason, so one bad publisher or client cannot stop an input.  The file checks made
here (allowed roots, lstat, access) never open the file and never follow a final symlink;
bounding their time is the inputs' business.  Encoding builds the completion, failure,
ack and combined replies documented in ``docs/messages.md``, and the frame that answers
a REQ/REP requester (with the daemon's ``version``).  No sockets, no threads:
``trollpush send`` and ``trollpush match`` use this module without the daemon.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import os
import posixpath
import socket
import stat
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from posttroll.message import Message

from . import __version__
from .access import Access
from .errors import MessageError, Reason, RouteError
from .models import (
    FILE_KEYS,
    RESERVED_KEYS,
    Job,
    Rejection,
    Replier,
    Request,
    SourceFile,
    UploadResult,
)
from .transfer.source import under

logger = logging.getLogger("trollpush.receive")  # the name users' log configs know

#: the types a request may have
MESSAGE_TYPES = ("file", "dataset", "collection")
#: the inputs whose requests may steer trollpush (``destination``, ``endpoint``,
#: ``overwrite``): the requester names where its file goes
DIRECT_ORIGINS = frozenset({"request", "s3daemon"})
#: the types trollpush announces besides the requests' own
FAILURE_TYPE = "failure"
ACK_TYPE = "ack"
MULTIPLE_TYPE = "multiple"
#: a frame sent to a REQ/REP requester that asked to watch its request (never published)
PROGRESS_TYPE = "progress"


# --- frames in -------------------------------------------------------------------------


def _local_names() -> frozenset[str]:
    names = {"", "localhost", "127.0.0.1", "::1"}
    for fn in (socket.gethostname, socket.getfqdn):
        with contextlib.suppress(OSError):  # depends on the host's resolver
            names.add(fn().lower())
    return frozenset(names)


LOCAL_NAMES = _local_names()


def local_path(uri: str) -> Path:
    """The local path a uri names; MessageError if it is remote or not a path."""
    if not isinstance(uri, str) or not uri:
        raise MessageError(Reason.MISSING_URI, f"uri must be a non-empty string, got {uri!r}")
    if "\x00" in uri:
        raise MessageError(Reason.BAD_MESSAGE, f"{uri!r}: NUL in the uri")
    if "://" not in uri:
        path = uri
    else:
        try:
            parts = urlsplit(uri)
            host = (parts.hostname or "").lower()
        except ValueError as err:
            raise MessageError(Reason.BAD_MESSAGE, f"{uri!r}: not a valid URI ({err})") from err
        if parts.scheme not in ("file", "ssh", "scp", "sftp"):
            raise MessageError(Reason.REMOTE_FILE,
                               f"{uri}: scheme {parts.scheme!r} is not a local file")
        if host not in LOCAL_NAMES:
            raise MessageError(Reason.REMOTE_FILE,
                               f"{uri}: the file is on host {host!r}, not on this host")
        path = unquote(parts.path)
        if "\x00" in path:
            raise MessageError(Reason.BAD_MESSAGE, f"{uri!r}: NUL in the path")
    if not os.path.isabs(path):
        raise MessageError(Reason.BAD_MESSAGE, f"{uri}: the path must be absolute")
    return Path(os.path.normpath(path))


def parse_destination(dest: str, basename: str, *, empty_alias: bool = False
                      ) -> tuple[str, str]:
    """Split ``s3://bucket/key`` or mc-style ``alias/bucket/key`` into (bucket, key).

    A key that is empty or ends in ``/`` gets ``basename`` appended.  ``empty_alias``:
    ``/bucket/key`` is taken too (s3daemon's wire, which ignores the alias).
    """
    if dest.startswith("s3://"):
        rest = dest[len("s3://"):]
    elif "://" in dest:
        raise RouteError(Reason.BAD_DESTINATION, f"{dest!r}: expected s3://BUCKET/KEY")
    else:
        parts = dest.split("/", 1)
        if len(parts) < 2 or not (parts[0] or empty_alias) or not parts[1]:
            raise RouteError(Reason.BAD_DESTINATION,
                             f"{dest!r}: expected s3://BUCKET/KEY or ALIAS/BUCKET/KEY")
        rest = parts[1]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise RouteError(Reason.BAD_DESTINATION, f"{dest!r}: no bucket name")
    if not key or key.endswith("/"):
        key += basename
    key = key.lstrip("/")
    if not key:
        raise RouteError(Reason.BAD_DESTINATION, f"{dest!r}: no object key")
    return bucket, key


def check_file(path: Path, uri: str) -> tuple[int, int, int]:
    """Refuse what is not an existing, readable regular file; its (size, mtime, inode).

    Nothing here opens the file (an open of a FIFO blocks until a writer comes), and a
    final symlink is not followed: the upload opens the file without following one.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError as err:
        raise MessageError(Reason.FILE_MISSING, f"{uri}: no such file") from err
    except OSError as err:
        raise MessageError(Reason.FILE_UNREADABLE, f"{uri}: {err.strerror}") from err
    except ValueError as err:  # e.g. a lone surrogate the file system cannot encode
        raise MessageError(Reason.BAD_MESSAGE, f"{uri!r}: not a usable path ({err})") from err
    if stat.S_ISLNK(st.st_mode):
        raise MessageError(Reason.NOT_A_FILE, f"{uri}: a symbolic link: trollpush does not "
                           "follow a final symlink")
    if not stat.S_ISREG(st.st_mode):
        raise MessageError(Reason.NOT_A_FILE, f"{uri}: not a regular file")
    if not os.access(path, os.R_OK):
        raise MessageError(Reason.FILE_UNREADABLE, f"{uri}: permission denied")
    return st.st_size, st.st_mtime_ns, st.st_ino


@dataclass(frozen=True)
class Limits:
    """What any message or request may ask for, and how long checking its files may take."""

    max_bytes: int | None = None  # a larger frame is refused (too_large)
    roots: tuple[str, ...] = ()  # real paths; files elsewhere are refused (not_allowed)
    #: seconds the file-system checks of one file may take on receipt (daemon.file_timeout)
    file_timeout: float = 30.0

    def check_path(self, path: Path, uri: str) -> None:
        if not self.roots:
            return
        real = os.path.realpath(path)  # symlinks and .. resolved: no way out of a root
        if not under(real, self.roots):
            raise MessageError(Reason.NOT_ALLOWED, f"{uri}: outside the allowed roots")


NO_LIMITS = Limits()


def _source(item: Mapping[str, Any], *, check: bool, limits: Limits) -> SourceFile:
    uri = item.get("uri")
    if uri is None:
        raise MessageError(Reason.MISSING_URI, "the message has no 'uri'")
    path = local_path(uri)
    stat = None
    if check:  # not_allowed first: a symlink out of the roots is refused as such
        limits.check_path(path, uri)
        stat = check_file(path, uri)
    uid = item.get("uid")
    extras = {k: v for k, v in item.items() if k not in ("uri", "uid")}
    return SourceFile(uri=uri, path=path, uid=uid if isinstance(uid, str) and uid else path.name,
                      meta=extras, stat=stat)


def _items(kind: str, data: Mapping[str, Any], *, check: bool, limits: Limits
           ) -> list[SourceFile]:
    """The files a message names, in order: a collection's datasets are flattened, and
    the completion walks ``data`` in the same order to rebuild its shape."""
    if kind == "file":
        return [_source({"uri": data.get("uri"), "uid": data.get("uid")}, check=check,
                        limits=limits)]
    if kind == "dataset":
        return _dataset(data, "dataset", {}, check=check, limits=limits)
    out: list[SourceFile] = []
    spread = 0  # bytes of datasets' metadata copied to their files
    for where, item in _collection_items(data.get("collection")):
        if "dataset" not in item:
            out.append(_source(item, check=check, limits=limits))
            continue
        # the dataset's own metadata goes with each of its files, for routing
        group = {k: v for k, v in item.items() if k not in FILE_KEYS}
        if group and limits.max_bytes is not None and isinstance(item["dataset"], list):
            # a small frame must not grow into a huge request (in memory, in the journal)
            spread += len(item["dataset"]) * len(json.dumps(group, default=str))
            if spread > limits.max_bytes:
                raise MessageError(Reason.TOO_LARGE, "the datasets' own metadata, copied to "
                                   "each of their files, comes to more than max_request_bytes "
                                   f"({limits.max_bytes}) by {where}")
        out.extend(_dataset(item, f"{where}.dataset", group, check=check, limits=limits,
                            empty=True))
    if not out:
        raise MessageError(Reason.MISSING_URI, "the collection names no file")
    return out


def _collection_items(collection: object) -> list[tuple[str, Mapping[str, Any]]]:
    """(where, item) of each item of a collection: a list (geographic_gatherer), or a
    mapping of named datasets (segment_gatherer with several patterns).  Every item is
    checked to be a mapping before any file is looked at."""
    if isinstance(collection, list) and collection:
        items = [(f"collection[{i}]", item) for i, item in enumerate(collection)]
    elif isinstance(collection, Mapping) and collection:
        items = [(f"collection[{name!r}]", item) for name, item in collection.items()]
    else:
        raise MessageError(Reason.MISSING_URI, "a collection message needs a non-empty "
                           "'collection' list, or a mapping of named datasets")
    for where, item in items:
        if not isinstance(item, Mapping):
            raise MessageError(Reason.BAD_MESSAGE, f"{where} is not a mapping")
    return items


def _dataset(data: Mapping[str, Any], where: str, group: Mapping[str, Any], *, check: bool,
             limits: Limits, empty: bool = False) -> list[SourceFile]:
    """The files of a dataset; ``group``: the metadata of a dataset inside a collection,
    under each file's own keys.  ``empty``: a dataset of a collection may have no file
    (segment_gatherer publishes a pattern that got none as an empty one)."""
    items = data.get("dataset")
    if not isinstance(items, list) or not (items or empty):
        got = "an empty list" if isinstance(items, list) else type(items).__name__
        raise MessageError(Reason.MISSING_URI, f"{where}: got {got}, expected a "
                           f"{'' if empty else 'non-empty '}list of file items")
    out: list[SourceFile] = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise MessageError(Reason.BAD_MESSAGE, f"{where}[{i}] is not a mapping")
        source = _source(item, check=check, limits=limits)
        out.append(replace(source, meta={**group, **source.meta}) if group else source)
    return out


def build_request(message: Message, *, origin: str, reply: Replier | None = None,
                  check: bool = True, limits: Limits = NO_LIMITS, direct: bool = False
                  ) -> Request:
    """A Request from a decoded posttroll message; MessageError says why not.
    ``check=False`` touches no file system (no allowed_roots, no stat).  ``direct``: the
    requester may steer it although ``origin`` is not a DIRECT_ORIGIN (the JetStream
    input, for a request bridged from an input whose requests name their destination)."""
    direct = direct or origin in DIRECT_ORIGINS
    kind = message.type
    if kind not in MESSAGE_TYPES:
        raise MessageError(Reason.UNSUPPORTED_TYPE,
                           f"message type {kind!r} is not one of {', '.join(MESSAGE_TYPES)}")
    data = message.data
    if not isinstance(data, Mapping):
        raise MessageError(Reason.BAD_MESSAGE, "the message data is not a mapping")
    destination = endpoint = None
    overwrite = False
    if direct:
        destination = data.get("destination")
        endpoint = data.get("endpoint")
        if destination is not None and not isinstance(destination, str):
            raise MessageError(Reason.BAD_DESTINATION,
                               f"destination {destination!r} is not a string")
        if endpoint is not None and not isinstance(endpoint, str):
            raise MessageError(Reason.BAD_DESTINATION, f"endpoint {endpoint!r} is not a string")
        overwrite = data.get("overwrite", False)
        if not isinstance(overwrite, bool):
            raise MessageError(Reason.BAD_MESSAGE, f"overwrite {overwrite!r} is not true or false")
    files = _items(kind, data, check=check, limits=limits)
    hidden = FILE_KEYS | (RESERVED_KEYS if direct else frozenset())
    metadata = {k: v for k, v in data.items() if k not in hidden}
    return Request(id=uuid.uuid4().hex[:12], subject=message.subject, type=kind, data=data,
                   metadata=metadata, files=tuple(files), origin=origin,
                   destination=destination, endpoint=endpoint, overwrite=overwrite, reply=reply)


def decode_message(text: str) -> Message:
    """Parse one posttroll wire string (``Message.decode`` of posttroll 1.16 emits a
    PendingDeprecationWarning on every call; the pickle protocol runs the same parser)."""
    message: Message = Message.__new__(Message)
    message.__setstate__(text)
    return message


def decode(raw: bytes, *, origin: str, reply: Replier | None = None,
           limits: Limits = NO_LIMITS, check: bool = True, direct: bool = False
           ) -> Request | Rejection:
    """Turn one frame into a Request or a Rejection; never raises.  ``check=False``: no
    file-system access (to answer a frame whose checks ran out of time); ``direct``: as
    for ``build_request``."""
    if limits.max_bytes is not None and len(raw) > limits.max_bytes:
        return Rejection(Reason.TOO_LARGE, f"{len(raw)} bytes, more than max_request_bytes "
                         f"({limits.max_bytes})", origin, reply=reply)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return Rejection(Reason.BAD_MESSAGE, f"frame is not UTF-8 ({err.reason} at byte "
                         f"{err.start})", origin, reply=reply)
    try:
        message = decode_message(text)
    except Exception as err:  # posttroll raises MessageError, ValueError, IndexError, ...
        return Rejection(Reason.BAD_MESSAGE, f"not a posttroll message ({type(err).__name__}: "
                         f"{str(err)[:200]})", origin, reply=reply)
    return interpret(message, origin=origin, reply=reply, limits=limits, check=check,
                     direct=direct)


def interpret(message: Message, *, origin: str, reply: Replier | None = None,
              limits: Limits = NO_LIMITS, check: bool = True, direct: bool = False
              ) -> Request | Rejection:
    """A decoded message (or one an input built from its own wire) as a Request, or a
    Rejection that says why not; never raises."""
    data = message.data if isinstance(message.data, Mapping) else {}
    try:
        return build_request(message, origin=origin, reply=reply, limits=limits,
                             check=check, direct=direct)
    except MessageError as err:
        uri = data.get("uri") if isinstance(data.get("uri"), str) else None
        dest = data.get("destination") if isinstance(data.get("destination"), str) else None
        meta = {k: v for k, v in data.items() if k not in FILE_KEYS | RESERVED_KEYS}
        return Rejection(err.reason, err.detail, origin, subject=message.subject, uri=uri,
                         destination=dest, metadata=meta, reply=reply, message_type=message.type)
    except Exception as err:  # last line of defence: one frame must never stop a loop
        logger.exception("unexpected error decoding a %s message", origin)
        return Rejection(Reason.BAD_MESSAGE, f"cannot read the message ({type(err).__name__})",
                         origin, subject=message.subject, reply=reply,
                         message_type=message.type)


def parts(message: Message) -> list[tuple[str, Mapping[str, Any]]]:
    """(type, data) of each message a reply holds: itself, or those it combines."""
    if message.type == MULTIPLE_TYPE:
        return [(m["type"], m["data"]) for m in message.data["messages"]]
    return [(message.type, message.data)]


def failures_of(message: Message) -> list[Mapping[str, Any]]:
    """The failures a reply carries: itself, those of a combined reply, or none."""
    return [data for kind, data in parts(message) if kind == FAILURE_TYPE]


def refused(item: Request, reason: str, detail: str) -> Rejection:
    """A Rejection standing for a decoded request that cannot go on."""
    return Rejection(reason, detail, item.origin, subject=item.subject, uri=item.files[0].uri,
                     destination=item.destination, metadata=item.metadata, reply=item.reply,
                     message_type=item.type)


def not_accepted(item: Request | Rejection) -> Request | Rejection:
    """What a request that never reached the journal becomes at stop: a ``shutdown``
    failure (announced, and answered), not a request believed to be journaled."""
    if isinstance(item, Rejection):
        return item
    return refused(item, Reason.SHUTDOWN, "the daemon stopped before accepting this request")


def overdue(item: Request | Rejection, timeout: float, *, stuck: int = 0) -> Request | Rejection:
    """What a request whose file checks ran out of time becomes."""
    if isinstance(item, Rejection):
        return item
    why = (f"{stuck} earlier file check(s) have not returned (a hung mount?)" if stuck else
           f"checking the file took longer than daemon.file_timeout ({timeout:g} s)")
    return refused(item, Reason.FILE_UNREADABLE, why)


# --- messages out ----------------------------------------------------------------------


@functools.cache
def _sender() -> str:
    return str(Message("/trollpush", "info").sender)


def new_message(subject: str, atype: str, data: dict[str, Any]) -> Message:
    """A posttroll ``Message`` with the sender looked up once per process: ``Message()``
    asks the password database and the host name for every message (a busy daemon paid
    that thousands of times a second).  The message is the same (``tests/test_announce.py``
    holds the two side by side) and is still validated by posttroll when it is encoded."""
    message = Message.__new__(Message)
    message.__dict__.update(subject=subject, type=atype, sender=_sender(), data=data,
                            time=dt.datetime.now(dt.UTC), binary=False, version=None)
    return message


def completion(job: Job, results: Sequence[UploadResult], access: Access | None = None
               ) -> Message:
    """The message announcing that every file of a job landed; ``access``: how consumers
    reach the job's endpoint (None: nothing is said about it)."""
    request = job.request
    data: dict[str, Any] = dict(job.metadata)
    produced = iter(results)
    if request.type == "file":
        data.update(_object_fields(next(produced), access))
    elif request.type == "dataset":
        data["dataset"] = _rebuild_items(request.data["dataset"], produced, access)
    else:  # the shape it came in: a list, or a mapping of named datasets
        collection = request.data["collection"]
        if isinstance(collection, Mapping):
            data["collection"] = {name: _rebuild_entry(item, produced, access)
                                  for name, item in collection.items()}
        else:
            data["collection"] = [_rebuild_entry(item, produced, access)
                                  for item in collection]
    data["endpoint"] = job.endpoint
    if access is not None and access.endpoint_url:
        data["endpoint_url"] = access.endpoint_url
    return new_message(job.publish_topic, request.type, data)


def _object_fields(result: UploadResult, access: Access | None) -> dict[str, Any]:
    """The keys of one file item: where it landed, and how a consumer opens it."""
    fields: dict[str, Any] = {"uri": result.upload.url,
                              "uid": posixpath.basename(result.upload.key), "size": result.size}
    if result.checksum:
        fields["checksum"] = f"{result.checksum_algorithm}:{result.checksum}"
    if result.etag:
        fields["etag"] = result.etag.strip('"')
    fields.update({k: v for k in ("version_id", "storage_class") if (v := getattr(result, k))})
    fields["encryption"] = result.encryption or "none"
    if access is not None:
        fields.update(access.item_fields(result.upload.url))
    return fields


def _rebuild_items(items: Sequence[Mapping[str, Any]], produced: Iterator[UploadResult],
                   access: Access | None) -> list[dict[str, Any]]:
    return [{**item, **_object_fields(next(produced), access)} for item in items]


def _rebuild_entry(item: Mapping[str, Any], produced: Iterator[UploadResult],
                   access: Access | None) -> dict[str, Any]:
    """One item of a collection: a dataset (with its own metadata) or a file item."""
    if "dataset" in item:
        return {**item, "dataset": _rebuild_items(item["dataset"], produced, access)}
    return {**item, **_object_fields(next(produced), access)}


def failure(topic: str, *, uri: str | None, destination: str | None, error: str, reason: str,
            attempts: int = 0, target: str | None = None, endpoint: str | None = None,
            metadata: Mapping[str, Any] | None = None, request_type: str | None = None
            ) -> Message:
    """The message announcing that one file (or one message) could not be delivered."""
    data: dict[str, Any] = dict(metadata or {})
    data.update({"uri": uri, "destination": destination, "error": error, "reason": reason,
                 "attempts": attempts})
    extras = {"target": target, "endpoint": endpoint, "request_type": request_type}
    data.update({k: v for k, v in extras.items() if v is not None})
    return new_message(topic, FAILURE_TYPE, data)


def ack(request: Request, destinations: Sequence[str]) -> Message:
    """The early reply that a request was accepted (REQ/REP ``reply: accepted|both``)."""
    return new_message(request.subject or "/trollpush/ack", ACK_TYPE,
                   {"id": request.id, "uri": request.files[0].uri, "files": len(request.files),
                    "destinations": list(destinations)})


def progress(request: Request, done: int, total: int) -> Message:
    """A progress frame (REQ/REP ``progress: true``): bytes read to be sent so far."""
    return new_message(request.subject or "/trollpush/progress", PROGRESS_TYPE,
                       {"id": request.id, "uri": request.files[0].uri, "bytes": done,
                        "size": total})


def reply_frame(message: Message) -> bytes:
    """The frame that answers a REQ/REP requester: a copy of ``message`` (it may be
    announced too) with the daemon's ``version`` added to its data, unless the data has
    one (a producer's metadata)."""
    data = message.data
    if isinstance(data, Mapping) and "version" not in data:
        message, original = Message.__new__(Message), message
        message.__dict__.update(original.__dict__, data={**data, "version": __version__})
    return str(message.encode()).encode()


def combine(messages: Sequence[Message], subject: str) -> Message:
    """One reply for a request that fanned out to several targets."""
    if len(messages) == 1:
        return messages[0]
    return new_message(subject, MULTIPLE_TYPE, {"messages": [
        {"subject": m.subject, "type": m.type, "data": m.data} for m in messages]})
