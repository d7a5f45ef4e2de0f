"""Every bucket a target's destination names: does it exist, can the daemon write to it,
with the object options its uploads carry?

Through the daemon's own S3 client (``transfer.pool``): a ``HEAD`` of the bucket, then,
unless ``write`` is off, a PUT of a small probe object under ``.trollpush-doctor/`` and its
DELETE.  The PUT carries what an upload to that bucket would: the checksum the endpoint
sends and the target's object options (``object:``, merged with its endpoint's), one probe
per distinct set of options among the targets naming the bucket.  Metadata and tag
entries composed per file are left out (there is no file); ``content_type: auto`` gives
the probe's name its type.  A store that refuses the options (SSE-KMS without a KMS, a
storage class it does not have, an ACL its bucket forbids, SSE-C) is told apart from one
that refuses every write by a plain probe, and each option is tried alone to name the
ones refused.  On a versioned bucket the probe's old version stays, as a noncurrent
version, like any deleted object.  A bucket written as a template
(``s3://{platform_name}-l1/...``) cannot be checked before a file names it; the doctor
says so.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .. import objects
from ..config import Config, EndpointConfig, ObjectConfig
from ..models import NO_OPTIONS, ObjectOptions
from .checks import Check, fail, ms, ok, warn, why

PROBE_PREFIX = ".trollpush-doctor/"
PROBE_BODY = b"trollpush doctor: a probe of write access, safe to delete\n"


@dataclass(frozen=True)
class Probe:
    """One probe PUT into a bucket: the object options of ``targets`` (the same for each,
    without the checksum), less what only a file gives: ``content_type: auto``
    (``auto_type``: the probe's name gives it) and the metadata and tag entries composed
    per file (``left_out``, as ``metadata.KEY`` and ``tags.KEY``)."""

    targets: tuple[str, ...]
    options: ObjectOptions = NO_OPTIONS
    auto_type: bool = False
    left_out: tuple[str, ...] = ()

    @property
    def plain(self) -> bool:
        return self.options == NO_OPTIONS and not self.auto_type


def probe_options(block: ObjectConfig) -> tuple[ObjectOptions, bool, tuple[str, ...]]:
    """What a probe for this (merged) ``object`` block carries: the options every file
    gets, whether ``content_type`` is ``auto``, and the entries composed per file."""
    planned = objects.plan(block)
    if planned is None:
        return NO_OPTIONS, False, ()
    fixed = replace(planned.base,
                    metadata=tuple((k, v) for k, v, t in planned.metadata if not t),
                    tags=tuple((k, v) for k, v, t in planned.tags if not t))
    left = tuple(f"{name}.{k}" for name, entries in (("metadata", planned.metadata),
                                                     ("tags", planned.tags))
                 for k, _, t in entries if t)
    return fixed, planned.auto_type, left


def buckets_by_endpoint(config: Config) -> dict[str, dict[str, list[Probe]]]:
    """endpoint -> bucket (or bucket template) -> one probe per distinct set of object
    options among the targets that name it (in the targets' order)."""
    found: dict[str, dict[str, dict[tuple[ObjectOptions, bool], Probe]]] = {
        name: {} for name in config.endpoints}
    for t in config.targets:
        bucket = t.destination[len("s3://"):].split("/", 1)[0]
        options, auto, left = probe_options(t.object)
        probes = found.setdefault(t.endpoint, {}).setdefault(bucket, {})
        was = probes.get((options, auto), Probe((), options, auto))
        probes[(options, auto)] = replace(
            was, targets=(*was.targets, t.name),
            left_out=tuple(dict.fromkeys((*was.left_out, *left))))
    return {ep: {b: list(p.values()) for b, p in buckets.items()}
            for ep, buckets in found.items()}


async def bucket_checks(client: Any, ep: EndpointConfig, buckets: Mapping[str, Sequence[Probe]],
                        *, write: bool, limit: float, reachable: bool) -> list[Check]:
    out = [warn("bucket", f"s3://{b} @{ep.name}", f"a template (targets "
                f"{', '.join(_names(p))}): cannot be checked before a file names the bucket",
                "check the buckets it composes to by hand (trollpush match shows them)")
           for b, p in buckets.items() if "{" in b]
    fixed = [(b, p) for b, p in buckets.items() if "{" not in b]
    if reachable:
        found = await asyncio.gather(*(check_bucket(client, ep, b, p, write=write,
                                                    limit=limit) for b, p in fixed))
        out += [c for checks in found for c in checks]
    return out


async def check_bucket(client: Any, ep: EndpointConfig, bucket: str, probes: Sequence[Probe],
                       *, write: bool, limit: float) -> list[Check]:
    """One check when the bucket is missing, not written (``--no-write``) or has one
    probe; else one for each probe."""
    subject = f"s3://{bucket} @{ep.name}"
    named = f"target {', '.join(_names(probes))}"
    seen = await _head(client, ep, bucket, named, limit)
    if isinstance(seen, Check):
        return [seen]
    if not write:
        return [ok("bucket", subject, f"{seen} (writing not tried: --no-write)")]
    return list(await asyncio.gather(*(
        _probe(client, ep, bucket, p, seen, several=len(probes) > 1, limit=limit)
        for p in probes)))


async def _probe(client: Any, ep: EndpointConfig, bucket: str, probe: Probe, seen: str, *,
                 several: bool, limit: float) -> Check:
    subject = f"s3://{bucket} @{ep.name}"
    key = _key()
    options = _typed(probe, key)
    start = time.monotonic()
    err = await _put(client, ep, bucket, key, options, limit)
    if err is not None:
        if probe.plain:
            return fail("bucket", subject, f"{seen}, but a PUT of {key} failed: {_error(err)}",
                        _grant(bucket))
        return await _refused(client, ep, bucket, probe, options, key, err, seen, limit)
    put = time.monotonic() - start
    gone = await _delete(client, bucket, key, limit)
    if gone is not None:
        return warn("bucket", subject, f"writable, but the probe s3://{bucket}/{key} could "
                    f"not be deleted: {_error(gone)}",
                    "delete it by hand (trollpush itself never needs DeleteObject, except "
                    "to withdraw a file that kept changing)")
    if probe.plain:
        which = f" for target {', '.join(probe.targets)}" if several else ""
    else:
        which = f" with the object options of target {', '.join(probe.targets)} " \
                f"({' '.join(label for _, label, _ in _groups(options))})"
    return ok("bucket", subject, f"{seen}; a probe object{which} written ({ms(put)}) and "
              f"deleted{_untried(probe)}")


async def _refused(client: Any, ep: EndpointConfig, bucket: str, probe: Probe,
                   options: ObjectOptions, key: str, err: BaseException, seen: str,
                   limit: float) -> Check:
    """A PUT with the object options failed: a plain probe tells "no write access" from
    "the store refuses the options", and a probe with each option alone names them."""
    subject = f"s3://{bucket} @{ep.name}"
    await _remove_if_there(client, bucket, key, err, limit)
    groups = _groups(options)
    plain, *alone = await asyncio.gather(
        _try(client, ep, bucket, NO_OPTIONS, limit),
        *(_try(client, ep, bucket, only, limit) for _, _, only in groups))
    targets = ", ".join(probe.targets)
    failed = (f"{seen}, but a PUT of {key} with the object options of target {targets} "
              f"failed: {_error(err)}")
    if plain is not None:
        return fail("bucket", subject, f"{failed}; a PUT without them failed too: "
                    f"{_error(plain)}", _grant(bucket))
    refused = [(name, label, e) for (name, label, _), e in zip(groups, alone, strict=True)
               if e is not None]
    where = f"; in the object block of target {targets} or endpoints.{ep.name}.object"
    if not refused:
        return fail("bucket", subject, f"{failed}; a plain PUT and a PUT with each option "
                    "alone succeed: the store refuses them together, or the first answer "
                    "was a passing fault",
                    "run the doctor again; if it fails again, leave options out one by "
                    f"one to find those the store refuses together{where}")
    said = ", ".join(f"{label} ({_error(e, nested=True)})" for _, label, e in refused)
    hints = list(dict.fromkeys(_hint(name, options, ep) for name, _, _ in refused))
    return fail("bucket", subject, f"{failed}; a plain PUT succeeds: the store refuses "
                f"{said}{_consequence(err)}", "; ".join(hints) + where)


def _groups(options: ObjectOptions) -> list[tuple[str, str, ObjectOptions]]:
    """Each option these carry: its name, how it is shown (an SSE-C key by its MD5
    only), and the options with it alone."""
    out = []
    for name in ("storage_class", "content_type", "cache_control", "content_disposition",
                 "acl"):
        if (value := getattr(options, name)) is not None:
            out.append((name, f"{name}={value}", ObjectOptions(**{name: value})))
    for name in ("metadata", "tags"):
        if entries := getattr(options, name):
            out.append((name, f"{name}=[{', '.join(k for k, _ in entries)}]",
                        ObjectOptions(**{name: entries})))
    if options.encryption != "none":
        shown = f"encryption={options.encryption}"
        if options.kms_key_id:
            shown += f" kms_key_id={options.kms_key_id}"
        if options.sse_c is not None:
            shown += f" (key md5 {options.sse_c.md5})"
        out.append(("encryption", shown, ObjectOptions(
            encryption=options.encryption, kms_key_id=options.kms_key_id,
            sse_c=options.sse_c)))
    if options.if_none_match:
        out.append(("if_none_match", "if_none_match=true", ObjectOptions(if_none_match=True)))
    return out


def _hint(name: str, options: ObjectOptions, ep: EndpointConfig) -> str:
    """What to do about an option the store refuses."""
    if name == "encryption":
        return {
            "sse-kms": "configure the store's KMS (or give kms_key_id a key these "
                       "credentials may use: kms:GenerateDataKey), or choose another "
                       "encryption (sse-s3, or none: the bucket's default)",
            "sse-s3": "enable the store's server-side encryption, or set encryption: none "
                      "(the bucket's default)",
            "sse-c": "use a store that supports SSE-C" + (
                " over https (AWS refuses SSE-C over http)"
                if (ep.url or "https:").startswith("http:") else "")
                     + ", or choose another encryption",
        }.get(options.encryption, "choose another encryption")
    return {
        "storage_class": f"use one of the store's storage classes instead of "
                         f"{options.storage_class} (or leave storage_class out: the "
                         "bucket's default)",
        "acl": "leave acl out, or allow it (s3:PutObjectAcl for these credentials, ACLs "
               "enabled on the bucket: Object Ownership not 'bucket owner enforced')",
        "tags": "grant s3:PutObjectTagging (AWS asks it for tags on a PUT), or leave tags "
                "out on a store without tagging",
        "metadata": "shorten the metadata (this store's limit may be below S3's 2 KiB) or "
                    "leave it out",
        "if_none_match": "set if_none_match: false (the store does not take conditional "
                         "writes)",
    }.get(name, f"correct {name}, or leave it out")


def _consequence(err: BaseException) -> str:
    """What the daemon would do with such an answer: a refusal fails each file at once;
    anything else is retried until ``max_age``."""
    from ..errors import PermanentTransferError
    from ..transfer.policy import classify

    try:
        permanent = isinstance(classify(err), PermanentTransferError)
    except Exception:
        return ""
    return "" if permanent else (" (the daemon would try each upload again until "
                                 "daemon.max_age before failing it)")


def _untried(probe: Probe) -> str:
    """Said only when it matters: entries composed per file were left out and the probe
    then carried no metadata (or no tags) at all, so the store's taking them is untried."""
    out = []
    for name in ("metadata", "tags"):
        left = [k.split(".", 1)[1] for k in probe.left_out if k.startswith(f"{name}.")]
        if left and not getattr(probe.options, name):
            out.append(f"{name} not tried (composed per file: {', '.join(left)})")
    return f"; {'; '.join(out)}" if out else ""


def _typed(probe: Probe, key: str) -> ObjectOptions:
    """The probe's options, with ``content_type: auto`` made from its name."""
    if probe.auto_type:
        return replace(probe.options, content_type=objects.content_type_of(key))
    return probe.options


def _key() -> str:
    return f"{PROBE_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


async def _put(client: Any, ep: EndpointConfig, bucket: str, key: str,
               options: ObjectOptions, limit: float) -> BaseException | None:
    try:
        async with asyncio.timeout(limit):
            await client.put_object(Bucket=bucket, Key=key, Body=PROBE_BODY,
                                    ContentLength=len(PROBE_BODY), **_params(ep, options))
    except Exception as err:
        return err
    return None


async def _delete(client: Any, bucket: str, key: str, limit: float) -> BaseException | None:
    """No SSE-C key needed: a DELETE does not read the object (a HEAD would)."""
    try:
        async with asyncio.timeout(limit):
            await client.delete_object(Bucket=bucket, Key=key)
    except Exception as err:
        return err
    return None


async def _try(client: Any, ep: EndpointConfig, bucket: str, options: ObjectOptions,
               limit: float) -> BaseException | None:
    """A probe PUT with ``options`` and, once it succeeded, its DELETE: the PUT's error."""
    key = _key()
    err = await _put(client, ep, bucket, key, options, limit)
    if err is None:
        await _delete(client, bucket, key, limit)
    else:
        await _remove_if_there(client, bucket, key, err, limit)
    return err


async def _remove_if_there(client: Any, bucket: str, key: str, err: BaseException,
                           limit: float) -> None:
    """Delete a probe whose PUT got no answer (``err``: a time limit, a connection lost)
    if it landed all the same; a HEAD first, so a versioned bucket gets no delete marker
    for nothing (an SSE-C object answers 400 to a HEAD without its key: there, too).  A
    PUT the store answered with an error wrote nothing."""
    if _status(err) is not None:
        return
    try:
        async with asyncio.timeout(limit):
            await client.head_object(Bucket=bucket, Key=key)
    except Exception as seen:
        if _status(seen) in (403, 404, None):
            return
    await _delete(client, bucket, key, limit)


def _params(ep: EndpointConfig, options: ObjectOptions) -> dict[str, Any]:
    """What the daemon's PUT of this body with these options would carry (its checksum
    header included)."""
    from ..transfer import checksum

    h = checksum.new(ep.checksum)
    h.update(PROBE_BODY)
    return replace(options, checksum=ep.checksum).put(checksum.encode(h))


def _names(probes: Sequence[Probe]) -> list[str]:
    return [t for p in probes for t in p.targets]


def _grant(bucket: str) -> str:
    return f"grant the endpoint's credentials s3:PutObject on arn:aws:s3:::{bucket}/*"


async def _head(client: Any, ep: EndpointConfig, bucket: str, named: str, limit: float
                ) -> str | Check:
    """``exists`` (a text for the final line), or the Check that ends this bucket's test."""
    subject = f"s3://{bucket} @{ep.name}"
    try:
        async with asyncio.timeout(limit):
            await client.head_bucket(Bucket=bucket)
        return "exists"
    except TimeoutError:
        return fail("bucket", subject, f"no answer to HEAD within {limit:g} s",
                    "is the store overloaded, or a proxy holding requests?")
    except Exception as err:
        status = _status(err)
        if status == 404:
            where = f" --endpoint-url {ep.url}" if ep.url else ""
            return fail("bucket", subject, "does not exist (404 on HEAD)",
                        f"create it (aws s3 mb s3://{bucket}{where}) or correct the "
                        f"destination of {named}")
        if status == 403:  # a write-only key may not HEAD; the probe decides
            return "HEAD refused (403: no s3:ListBucket, which uploads do not need)"
        if status == 301:
            region = _header(err, "x-amz-bucket-region")
            return fail("bucket", subject, f"in another region ({region or 'unknown'})",
                        f"set endpoints.{ep.name}.region to {region or 'its region'}")
        return fail("bucket", subject, f"HEAD failed: {_error(err)}",
                    f"check endpoints.{ep.name} and the credentials (see the other checks)")


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status if isinstance(status, int) else None
    return None


def _header(err: BaseException, name: str) -> str | None:
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        value = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get(name)
        return str(value) if value else None
    return None


def _error(err: BaseException, *, nested: bool = False) -> str:
    """botocore's ``ClientError`` as its code and HTTP status (``nested``: without
    parentheses, for a text already in them); anything else as its text."""
    response = getattr(err, "response", None)
    if isinstance(response, dict) and "Error" in response:
        code = response["Error"].get("Code", "?")
        return f"{code}, HTTP {_status(err)}" if nested else f"{code} (HTTP {_status(err)})"
    if isinstance(err, TimeoutError):
        return "no answer in time"
    return why(err)
