"""The data that flows one way through the stages: Request -> Job -> UploadResult.

These are plain value objects; no stage logic lives here.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote, urlencode

#: (size, mtime_ns, inode) of a source file: "the same file, unchanged"
Stat = tuple[int, int, int]

#: keys of a request's data that steer trollpush and are not passed on as metadata
RESERVED_KEYS = frozenset({"destination", "reply", "endpoint", "overwrite", "progress"})
#: keys that describe the files themselves rather than the product
FILE_KEYS = frozenset({"uri", "uid", "dataset", "collection"})


class Replier(Protocol):
    """Answers the peer that sent a request (REQ/REP); absent for pub-sub messages."""

    @property
    def wants_ack(self) -> bool:
        """Whether the peer asked to hear when the request is accepted."""

    @property
    def wants_final(self) -> bool:
        """Whether the peer waits for the completion or failure."""

    async def send(self, message: Any) -> None:
        """Send one posttroll message back to the peer."""


@runtime_checkable
class ResultReader(Protocol):
    """A Replier that also reads what each job's uploads did, before the final message:
    timings, attempts and parts, which the posttroll messages do not carry (the HTTP
    input's s3nd-style reply reports them)."""

    def results(self, job: Job, results: Sequence[UploadResult]) -> None:
        """What the uploads of ``job`` did (landed or failed)."""


@runtime_checkable
class ProgressReader(Protocol):
    """A Replier whose peer may ask (``progress: true``) for progress frames while its
    request runs, before the final reply (a DEALER peer: a REQ socket takes one reply)."""

    @property
    def wants_progress(self) -> bool:
        """Whether the peer asked for progress frames."""

    async def progress(self, message: Any) -> None:
        """Send one progress frame (never after the final reply)."""


@dataclass(frozen=True)
class SourceFile:
    """One local file named by a message."""

    uri: str  # as the message gave it
    path: Path  # local absolute path
    uid: str  # the message's uid, else the basename
    meta: Mapping[str, Any] = field(default_factory=dict)  # item-level extras (datasets)
    stat: tuple[int, int, int] | None = None  # (size, mtime_ns, inode) when announced


@dataclass(frozen=True)
class Request:
    """A message or request that has been understood and may be accepted."""

    id: str
    subject: str
    type: str  # file | dataset | collection
    data: Mapping[str, Any]  # the original data, for rebuilding the output structure
    metadata: Mapping[str, Any]  # data without file and reserved keys
    files: tuple[SourceFile, ...]  # flattened, in the order of `data`
    origin: str  # "subscribe" | "request" | "cli"
    destination: str | None = None  # explicit s3:// destination: bypasses routing
    endpoint: str | None = None  # explicit endpoint for an explicit destination
    overwrite: bool = False  # upload even if the file already landed there (REQ/REP)
    reply: Replier | None = None
    received: float = field(default_factory=time.monotonic)
    accepted_at: float = field(default_factory=time.time)  # wall clock: survives restarts
    #: it may have been done before (a JetStream message delivered again, or a request
    #: taken up again after a restart): look before writing, and do not write an object
    #: that is there already with the same content
    redelivered: bool = False
    #: where it came from, to know it again after a restart (journaled with it):
    #: ``jetstream:<stream>:<stream sequence>`` for a JetStream message
    ref: str | None = None

    def describe(self) -> str:
        """Short text for logs."""
        first = self.files[0].uri if self.files else "?"
        more = f" (+{len(self.files) - 1} files)" if len(self.files) > 1 else ""
        return f"{self.type} {first}{more} [{self.id}]"


#: the S3 parameter that carries a checksum's value, per algorithm (md5: Content-MD5,
#: checked on upload, never stored); and the algorithms the store keeps with the object
_CHECKSUM_VALUE = {"crc32c": "ChecksumCRC32C", "sha256": "ChecksumSHA256", "md5": "ContentMD5"}
_CHECKSUM_KEPT = {"crc32c": "CRC32C", "sha256": "SHA256"}
_VALUES = frozenset({"ChecksumCRC32C", "ChecksumSHA256", "ContentMD5"})
#: what the object is given at creation (a PUT, or CreateMultipartUpload)
_OBJECT = frozenset({"StorageClass", "ContentType", "CacheControl", "ContentDisposition",
                     "Metadata", "Tagging", "ACL", "ServerSideEncryption", "SSEKMSKeyId"})
#: the SSE-C key: every call that writes or reads the object's bytes must carry it
_SSE_C = frozenset({"SSECustomerAlgorithm", "SSECustomerKey", "SSECustomerKeyMD5"})
#: which parameters each S3 call takes (as s3transfer filters its extra arguments): an
#: option that a call does not take is left out of it, never sent where it means else
_TAKES = {
    "put_object": _VALUES | _OBJECT | _SSE_C | {"IfNoneMatch"},
    # a ChecksumAlgorithm on a PUT or a part would make botocore hash the body itself
    "create_multipart_upload": frozenset({"ChecksumAlgorithm"}) | _OBJECT | _SSE_C,
    "upload_part": _VALUES | _SSE_C,
    "part_record": frozenset({"ChecksumCRC32C", "ChecksumSHA256"}),
    "complete_multipart_upload": _SSE_C | {"IfNoneMatch"},
    "head_object": frozenset({"ChecksumMode"}) | _SSE_C,
    "list_parts": _SSE_C,
}
#: encryption modes and what S3 calls them (``none``: nothing sent, the bucket's default
#: encryption applies); and back, for what a store reports
SSE_MODES = {"none": None, "sse-s3": "AES256", "sse-kms": "aws:kms", "sse-c": None}
_SSE_REPORTED = {"AES256": "sse-s3", "aws:kms": "sse-kms", "aws:kms:dsse": "sse-kms"}


def encryption_found(head: Mapping[str, Any]) -> str:
    """The encryption mode a store reports of an object (a HeadObject, or the answer to
    the call that wrote it): ``sse-c``, ``sse-s3``, ``sse-kms`` or ``none``."""
    if head.get("SSECustomerAlgorithm"):
        return "sse-c"
    return _SSE_REPORTED.get(str(head.get("ServerSideEncryption")), "none")


@dataclass(frozen=True)
class SseCKey:
    """An SSE-C key (32 bytes), named by ``md5`` (base64 of its MD5, S3's
    ``SSECustomerKeyMD5``): the journal, logs and ``match`` show only that name; the key
    itself is never printed (``repr`` hides it) nor recorded (``trollpush.keys`` finds it
    again by its name after a restart)."""

    md5: str
    key: bytes | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class ObjectOptions:
    """Everything an upload gives its object besides the key and the body, composed per
    file by routing (``trollpush.objects``) and completed with the endpoint's checksum
    by the engine; each S3 call takes its share of it from one method here, filtered by
    what that call accepts (one place, instead of arguments built at each call site), so
    a single PUT and a multipart upload carry exactly the same options."""

    checksum: str = "none"  # the algorithm; its value is computed per body
    storage_class: str | None = None
    content_type: str | None = None
    cache_control: str | None = None
    content_disposition: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()  # x-amz-meta-*, composed
    tags: tuple[tuple[str, str], ...] = ()  # object tags, composed
    encryption: str = "none"  # none | sse-s3 | sse-kms | sse-c
    kms_key_id: str | None = None
    sse_c: SseCKey | None = None
    acl: str | None = None
    if_none_match: bool = False

    def put(self, value: str | None) -> dict[str, Any]:
        """For PutObject, whose body has the checksum ``value``."""
        return self._for("put_object", value)

    def create(self) -> dict[str, Any]:
        """For CreateMultipartUpload."""
        return self._for("create_multipart_upload")

    def part(self, value: str | None) -> dict[str, Any]:
        """For UploadPart, whose body has the checksum ``value``."""
        return self._for("upload_part", value)

    def part_record(self, value: str | None) -> dict[str, Any]:
        """What CompleteMultipartUpload's list says of a part, besides number and ETag."""
        return self._for("part_record", value)

    def complete(self) -> dict[str, Any]:
        """For CompleteMultipartUpload."""
        return self._for("complete_multipart_upload")

    def head(self) -> dict[str, Any]:
        """For the HeadObject that checks an object which landed earlier."""
        return self._for("head_object")

    def list_parts(self) -> dict[str, Any]:
        """For the ListParts that checks the parts of an upload to resume."""
        return self._for("list_parts")

    @functools.cached_property
    def fingerprint(self) -> str:
        """What the object is given, as a short text that changes when any of it changes
        (``""``: nothing beyond the defaults): the journal keeps it with each landed
        object, so a file is not answered from the journal once its options changed.
        Not the checksum (compared on its own) nor ``if_none_match`` (how it is written,
        not what it is); an SSE-C key by its name only."""
        given = (self.storage_class, self.content_type, self.cache_control,
                 self.content_disposition, self.metadata, self.tags, self.encryption,
                 self.kms_key_id, self.sse_c.md5 if self.sse_c is not None else None,
                 self.acl)
        if given == _NOTHING_GIVEN:
            return ""
        text = json.dumps(given, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    @property
    def missing_key(self) -> str | None:
        """The name (MD5) of the SSE-C key these options need and this process has not
        loaded (a journaled upload resumed under a config without it); None: none.
        ``sse-c`` without any key (a damaged record) is one missing too: never written
        unencrypted."""
        sse_c = self.sse_c
        if sse_c is None:
            return "(none recorded)" if self.encryption == "sse-c" else None
        return sse_c.md5 if sse_c.key is None else None

    def stored(self, head: Mapping[str, Any]) -> str | None:
        """The checksum a HeadObject reports, if the store keeps one of this algorithm."""
        field_ = _CHECKSUM_VALUE[self.checksum] if self.checksum in _CHECKSUM_KEPT else None
        value = head.get(field_) if field_ else None
        return str(value) if value else None

    def encryption_of(self, response: Mapping[str, Any]) -> str:
        """The encryption mode to announce for an object this upload wrote: the one asked
        for, else what the store says it applied (a bucket's default), else ``none``."""
        if self.encryption != "none":
            return self.encryption
        return encryption_found(response)

    def _for(self, call: str, value: str | None = None) -> dict[str, Any]:
        takes = _TAKES[call]
        offered: dict[str, Any] = {"ChecksumMode": "ENABLED"}
        if self.checksum in _CHECKSUM_KEPT:
            offered["ChecksumAlgorithm"] = _CHECKSUM_KEPT[self.checksum]
        if value is not None and self.checksum in _CHECKSUM_VALUE:
            offered[_CHECKSUM_VALUE[self.checksum]] = value
        if takes is not _TAKES["part_record"]:
            offered.update(self._object_params)
        return {k: v for k, v in offered.items() if k in takes}

    @functools.cached_property
    def _object_params(self) -> dict[str, Any]:
        """Built once per upload, not per call (read-only: each call copies its share)."""
        out: dict[str, Any] = {}
        for name, param in (("storage_class", "StorageClass"),
                            ("content_type", "ContentType"),
                            ("cache_control", "CacheControl"),
                            ("content_disposition", "ContentDisposition"),
                            ("acl", "ACL"), ("kms_key_id", "SSEKMSKeyId")):
            given = getattr(self, name)
            if given is not None:
                out[param] = given
        if self.metadata:
            out["Metadata"] = dict(self.metadata)
        if self.tags:
            out["Tagging"] = urlencode(self.tags, quote_via=quote)
        sse = SSE_MODES.get(self.encryption)
        if sse is not None:
            out["ServerSideEncryption"] = sse
        if self.sse_c is not None:
            if self.sse_c.key is None:
                raise KeyError(f"the SSE-C key with MD5 {self.sse_c.md5} is not loaded")
            # encoded here as botocore would (it does so for some calls only: not for
            # ListParts), once per upload rather than per call; with its MD5 given,
            # botocore leaves it as it is
            out.update(SSECustomerAlgorithm="AES256",
                       SSECustomerKey=base64.b64encode(self.sse_c.key).decode(),
                       SSECustomerKeyMD5=self.sse_c.md5)
        if self.if_none_match:
            out["IfNoneMatch"] = "*"
        return out


#: ObjectOptions' fields that go into its fingerprint, as the defaults have them
_NOTHING_GIVEN = (None, None, None, None, (), (), "none", None, None, None)
#: the options of an upload that was given none (shared: its S3 parameters built once)
NO_OPTIONS = ObjectOptions()


@dataclass(frozen=True)
class Upload:
    """One local file to one object."""

    source: SourceFile
    bucket: str
    key: str
    #: what the object is given (the endpoint's checksum is added by the engine)
    options: ObjectOptions = NO_OPTIONS

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class Job:
    """One request sent to one target: every file of it, and where to announce."""

    request: Request
    target: str | None  # None for explicit destinations
    endpoint: str
    uploads: tuple[Upload, ...]
    metadata: Mapping[str, Any]  # request metadata plus fields parsed from the filename
    publish_topic: str

    def describe(self) -> str:
        return f"{self.request.describe()} -> {self.target or 'direct'}@{self.endpoint}"


@dataclass(frozen=True)
class UploadResult:
    """What happened to one Upload."""

    upload: Upload
    size: int
    attempts: int
    seconds: float
    etag: str | None = None
    error: str | None = None  # None when the object landed
    reason: str | None = None
    checksum: str | None = None  # base64, as the store verified it ("-N": multipart)
    checksum_algorithm: str | None = None
    parts: int = 0  # 0: a single PUT
    part_size: int | None = None  # of a multipart upload: to compute its checksum again
    source_stat: tuple[int, int, int] | None = None  # (size, mtime_ns, inode) as uploaded
    #: failed in a way that waiting may fix (the store down or overloaded): worth another
    #: round until the request's max_age (see transfer.policy)
    retry_later: bool = False
    version_id: str | None = None  # when the store returned one (a versioned bucket)
    storage_class: str | None = None  # the one configured (None: none configured)
    #: none | sse-s3 | sse-kms | sse-c: asked for, else what the store said it applied
    encryption: str | None = None
    #: ``ObjectOptions.fingerprint`` of what the object was written with (None: not
    #: known, as for an object found already there)
    written_with: str | None = ""
    #: a conditional write found the same content already at the key: nothing written
    already_there: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class MultipartState:
    """A multipart upload in progress: enough to continue it instead of starting over."""

    upload_id: str
    parts: Mapping[int, tuple[str, str | None]]  # number -> (etag, checksum) of parts done
    part_size: int | None = None  # as recorded at the start: resume only with the same
    source_stat: Stat | None = None  # the file as it was when the upload started


@dataclass(frozen=True)
class Rejection:
    """A message or request refused before it became a Request, with the reason."""

    reason: str
    detail: str
    origin: str
    subject: str | None = None
    uri: str | None = None
    destination: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    reply: Replier | None = None
    message_type: str | None = None  # the posttroll type, when the frame decoded that far
