"""Every bucket a target's destination names: does it exist, can the daemon write to it?

Through the daemon's own S3 client (``transfer.pool``): a ``HEAD`` of the bucket, then,
unless ``write`` is off, a PUT of a small probe object under ``.trollpush-doctor/`` (with
the checksum the endpoint sends, as an upload would) and its DELETE.  On a versioned
bucket the probe's old version stays, as a noncurrent version, like any deleted object.
A bucket written as a template (``s3://{platform_name}-l1/...``) cannot be checked
before a file names it; the doctor says so.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ..config import Config, EndpointConfig
from ..models import ObjectOptions
from .checks import Check, fail, ms, ok, warn, why

PROBE_PREFIX = ".trollpush-doctor/"
PROBE_BODY = b"trollpush doctor: a probe of write access, safe to delete\n"


def buckets_by_endpoint(config: Config) -> dict[str, dict[str, list[str]]]:
    """endpoint -> bucket (or bucket template) -> the targets that name it."""
    out: dict[str, dict[str, list[str]]] = {name: {} for name in config.endpoints}
    for t in config.targets:
        bucket = t.destination[len("s3://"):].split("/", 1)[0]
        out.setdefault(t.endpoint, {}).setdefault(bucket, []).append(t.name)
    return out


async def bucket_checks(client: Any, ep: EndpointConfig, buckets: Mapping[str, Sequence[str]],
                        *, write: bool, limit: float, reachable: bool) -> list[Check]:
    out = [warn("bucket", f"s3://{b} @{ep.name}", f"a template (targets {', '.join(t)}): "
                "cannot be checked before a file names the bucket",
                "check the buckets it composes to by hand (trollpush match shows them)")
           for b, t in buckets.items() if "{" in b]
    fixed = [(b, t) for b, t in buckets.items() if "{" not in b]
    if reachable:
        out += await asyncio.gather(*(check_bucket(client, ep, b, t, write=write,
                                                   limit=limit) for b, t in fixed))
    return out


async def check_bucket(client: Any, ep: EndpointConfig, bucket: str, targets: Sequence[str],
                       *, write: bool, limit: float) -> Check:
    subject = f"s3://{bucket} @{ep.name}"
    named = f"target {', '.join(targets)}"
    seen = await _head(client, ep, bucket, named, limit)
    if isinstance(seen, Check):
        return seen
    if not write:
        return ok("bucket", subject, f"{seen} (writing not tried: --no-write)")
    key = f"{PROBE_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    try:
        async with asyncio.timeout(limit):
            await client.put_object(Bucket=bucket, Key=key, Body=PROBE_BODY,
                                    ContentLength=len(PROBE_BODY), **_checksum(ep))
    except Exception as err:
        return fail("bucket", subject, f"{seen}, but a PUT of {key} failed: {_error(err)}",
                    f"grant the endpoint's credentials s3:PutObject on "
                    f"arn:aws:s3:::{bucket}/*")
    put = time.monotonic() - start
    try:
        async with asyncio.timeout(limit):
            await client.delete_object(Bucket=bucket, Key=key)
    except Exception as err:
        return warn("bucket", subject, f"writable, but the probe s3://{bucket}/{key} could "
                    f"not be deleted: {_error(err)}",
                    "delete it by hand (trollpush itself never needs DeleteObject, except "
                    "to withdraw a file that kept changing)")
    return ok("bucket", subject, f"{seen}; a probe object written ({ms(put)}) and deleted")


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


def _checksum(ep: EndpointConfig) -> dict[str, Any]:
    """The checksum header the daemon's PUT of this body would carry."""
    from ..transfer import checksum

    h = checksum.new(ep.checksum)
    h.update(PROBE_BODY)
    return ObjectOptions(checksum=ep.checksum).put(checksum.encode(h))


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


def _error(err: BaseException) -> str:
    """botocore's ``ClientError`` as its code and HTTP status; anything else as its text."""
    response = getattr(err, "response", None)
    if isinstance(response, dict) and "Error" in response:
        code = response["Error"].get("Code", "?")
        return f"{code} (HTTP {_status(err)})"
    if isinstance(err, TimeoutError):
        return "no answer in time"
    return why(err)
