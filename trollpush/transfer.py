"""Transfer: one warm aiobotocore client per endpoint, concurrent bounded uploads.

The client (and its connection pool) lives as long as the daemon.  botocore's
``Expect: 100-continue`` is removed (it costs one round trip per PUT) and botocore's
own retries are off: the tries and per-attempt time budget here are the policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import botocore.exceptions
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.handlers import add_expect_header

from .config import EndpointConfig
from .errors import PermanentTransferError, Reason, RetriesExhausted, TransferError, TransferTimeout
from .models import Upload, UploadResult

logger = logging.getLogger(__name__)

#: S3 error codes that no retry can fix
PERMANENT_CODES = frozenset({
    "NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "InvalidBucketName", "AllAccessDisabled", "AccountProblem", "InvalidRequest",
    "NotImplemented", "KeyTooLongError", "EntityTooLarge", "MethodNotAllowed",
})


def client_config(ep: EndpointConfig) -> AioConfig:
    """aiobotocore settings for a warm, long-lived pool that trollpush retries itself."""
    return AioConfig(
        max_pool_connections=ep.max_connections,
        connect_timeout=ep.connect_timeout,
        read_timeout=ep.attempt_timeout,
        retries={"total_max_attempts": 1},
        s3={"addressing_style": ep.addressing_style},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connector_args={"keepalive_timeout": ep.keepalive_timeout},
    )


def _open(path: Path) -> tuple[BinaryIO, int]:
    """Open for streaming (off the event loop: a slow disk must not stall it)."""
    body = open(path, "rb")  # noqa: SIM115 - the caller closes it
    try:
        return body, os.fstat(body.fileno()).st_size
    except BaseException:
        body.close()
        raise


class _Endpoint:
    """A client and the slot counter bounding concurrent uploads through it."""

    def __init__(self, config: EndpointConfig, client: Any) -> None:
        self.config = config
        self.client = client
        self.slots = asyncio.Semaphore(config.max_connections)
        self.active = 0


class TransferEngine:
    """Uploads files to S3; ``start()`` opens one client per endpoint, ``close()`` ends them."""

    def __init__(self, endpoints: Mapping[str, EndpointConfig]) -> None:
        self._configs = dict(endpoints)
        self._endpoints: dict[str, _Endpoint] = {}
        self._stack = contextlib.AsyncExitStack()
        self.completed = 0
        self.failed = 0
        self.retried = 0

    @property
    def active(self) -> int:
        """Uploads in progress now, over all endpoints."""
        return sum(e.active for e in self._endpoints.values())

    def __repr__(self) -> str:
        return (f"<TransferEngine endpoints={len(self._endpoints)} active={self.active} "
                f"completed={self.completed} failed={self.failed} retried={self.retried}>")

    async def start(self) -> None:
        for name, ep in self._configs.items():
            session = AioSession(profile=ep.profile) if ep.profile else AioSession()
            client = await self._stack.enter_async_context(session.create_client(
                "s3", endpoint_url=ep.url, region_name=ep.region,
                aws_access_key_id=ep.access_key_id, aws_secret_access_key=ep.secret_access_key,
                aws_session_token=ep.session_token, config=client_config(ep)))
            client.meta.events.unregister("before-call.s3", add_expect_header)
            self._endpoints[name] = _Endpoint(ep, client)
            logger.info("endpoint %s ready", ep.summary())

    async def close(self) -> None:
        await self._stack.aclose()
        self._endpoints.clear()

    def client(self, endpoint: str) -> Any:
        """The endpoint's live client (for tools and tests that inspect the store)."""
        return self._endpoints[endpoint].client

    async def upload(self, upload: Upload, endpoint: str) -> UploadResult:
        """Upload one file with tries and a per-attempt time budget; never raises."""
        ep = self._endpoints[endpoint]
        start = time.monotonic()
        attempts = 0
        size = -1
        async with ep.slots:
            ep.active += 1
            try:
                while True:
                    attempts += 1
                    try:
                        size, etag = await self._attempt(ep, upload)
                    except TransferError as err:
                        if isinstance(err, PermanentTransferError) or attempts >= ep.config.tries:
                            final = err if attempts == 1 else RetriesExhausted(err,
                                                                              attempts=attempts)
                            self.failed += 1
                            logger.warning("upload failed %s -> %s after %d attempt(s): %s",
                                           upload.source.uri, upload.url, attempts, err.detail)
                            return UploadResult(upload, size, attempts,
                                                time.monotonic() - start,
                                                error=final.detail, reason=final.reason)
                        self.retried += 1
                        logger.info("upload retry %s -> %s (attempt %d): %s",
                                    upload.source.uri, upload.url, attempts, err.detail)
                        if not isinstance(err, TransferTimeout):
                            await asyncio.sleep(min(0.2 * 2 ** (attempts - 1), 5.0))
                        continue
                    self.completed += 1
                    seconds = time.monotonic() - start
                    logger.info("upload complete %s -> %s (%d bytes, %.3f s, %d attempt(s))",
                                upload.source.uri, upload.url, size, seconds, attempts)
                    return UploadResult(upload, size, attempts, seconds, etag=etag)
            finally:
                ep.active -= 1

    async def _attempt(self, ep: _Endpoint, upload: Upload) -> tuple[int, str | None]:
        try:
            body, size = await asyncio.to_thread(_open, upload.source.path)
        except OSError as err:
            reason = (Reason.FILE_MISSING if isinstance(err, FileNotFoundError)
                      else Reason.FILE_UNREADABLE)
            raise PermanentTransferError(f"cannot read {upload.source.path}: {err.strerror}",
                                         reason=reason) from err
        try:
            async with asyncio.timeout(ep.config.attempt_timeout):
                response = await ep.client.put_object(Bucket=upload.bucket, Key=upload.key,
                                                      Body=body, ContentLength=size)
            return size, response.get("ETag")
        except TimeoutError as err:
            raise TransferTimeout(f"attempt exceeded {ep.config.attempt_timeout:g} s") from err
        except botocore.exceptions.ClientError as err:
            code = err.response.get("Error", {}).get("Code", "?")
            detail = f"{code}: {err.response.get('Error', {}).get('Message', err)}"
            if code in PERMANENT_CODES:
                raise PermanentTransferError(detail) from err
            raise TransferError(detail) from err
        except (botocore.exceptions.NoCredentialsError,
                botocore.exceptions.PartialCredentialsError,
                botocore.exceptions.ParamValidationError) as err:
            raise PermanentTransferError(f"{type(err).__name__}: {err}") from err
        except (botocore.exceptions.BotoCoreError, aiohttp.ClientError, OSError) as err:
            raise TransferError(f"{type(err).__name__}: {err}") from err
        finally:
            body.close()
