"""The retry policy in one place: which errors are retried at once, which in later
rounds until max_age, which never.

The decisions are checked on the error families themselves and on scripted store calls;
the rounds against a real moto server (a dead port that comes to life, a bucket that
does not exist).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from moto.server import ThreadedMotoServer

from trollpush.config import EndpointConfig
from trollpush.errors import (
    ObjectExists,
    PermanentTransferError,
    Reason,
    RetriesExhausted,
    TransferError,
    TransferTimeout,
)
from trollpush.stats import RETRIES, UPLOADS, Stats
from trollpush.transfer import SourceChanged, classify, retry_later
from trollpush.transfer.files import Files
from trollpush.transfer.policy import AttemptCounter, Endpoint
from trollpush.transfer.pool import EndpointPool

from .helpers import free_port, started_engine, upload_of, wait_until_async


def _client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject")


def _file(tmp_path: Path, name: str, data: bytes = b"x" * 100) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- which errors are retried at once, later, never -------------------------------------


@pytest.mark.parametrize(("err", "permanent", "throttled"), [
    (_client_error("InternalError", 500), False, False),
    (_client_error("RequestTimeout", 400), False, False),  # a 4xx a new attempt can fix
    (_client_error("BadDigest", 400), False, False),  # a body damaged in flight
    (_client_error("SlowDown", 503), False, True),
    (_client_error("Whatever", 429), False, True),
    (_client_error("NoSuchBucket", 404), True, False),
    (_client_error("AccessDenied", 403), True, False),
    (_client_error("SomethingNew", 400), True, False),  # the request itself is wrong
    (ConnectionResetError("reset"), False, False),
    (FileNotFoundError(2, "No such file"), True, False),
    (PermissionError(13, "Permission denied"), True, False),
    (botocore.exceptions.NoCredentialsError(), True, False),
])
def test_classify_decides_what_is_retried_at_once(err: Exception, permanent: bool,
                                                  throttled: bool) -> None:
    """Retried at once (within ``tries``): every transfer error but a permanent one; a
    throttled one after a pause."""
    got = classify(err)
    assert isinstance(got, PermanentTransferError) is permanent
    assert got.throttled is throttled


def test_a_refused_conditional_write_is_object_exists_and_a_conflict_is_retried() -> None:
    """412 (If-None-Match: * found an object) is never retried: the engine compares the
    object there; 409 ConditionalRequestConflict (a race with another write) is, as AWS
    says."""
    refused = classify(_client_error("PreconditionFailed", 412))
    assert isinstance(refused, ObjectExists) and refused.reason == Reason.EXISTS
    assert not retry_later(refused)
    conflict = classify(_client_error("ConditionalRequestConflict", 409))
    assert not isinstance(conflict, PermanentTransferError) and retry_later(conflict)


async def test_a_conflicting_write_is_not_tried_again_in_place_but_in_a_later_round() -> None:
    """409 ConditionalRequestConflict: AWS says to write again from the start (a new
    multipart upload), so the same call is not repeated; a later round does it all."""
    end = _endpoint(tries=4)
    counter = AttemptCounter()
    with pytest.raises(TransferError) as caught:
        await end.tries(0, counter, _script(_client_error("ConditionalRequestConflict", 409),
                                            "never"), "complete x")
    assert counter.attempts == 1 and retry_later(caught.value)
    assert end.stats.count(RETRIES) == 0


def test_classify_raises_what_it_does_not_know() -> None:
    with pytest.raises(ZeroDivisionError):
        classify(ZeroDivisionError())


@pytest.mark.parametrize(("err", "later"), [
    (TransferError("store down"), True),  # upload_failed
    (TransferTimeout("attempt 1 exceeded 2 s"), True),  # timeout
    (TransferError("no slot", reason=Reason.QUEUE_TIMEOUT), True),
    (TransferError("slow down", throttled=True), True),
    (RetriesExhausted(TransferTimeout("t"), attempts=4), True),
    (RetriesExhausted(PermanentTransferError("NoSuchUpload"), attempts=2), False),
    (PermanentTransferError("NoSuchBucket"), False),
    (PermanentTransferError("gone", reason=Reason.FILE_MISSING), False),
    (PermanentTransferError("bug", reason=Reason.INTERNAL), False),
    (PermanentTransferError("kept changing", reason=Reason.FILE_CHANGED), False),
    (SourceChanged("changed"), False),
])
def test_retry_later_follows_the_error_family(err: TransferError, later: bool) -> None:
    """Later (rounds until max_age): what waiting may fix, the store down or overloaded;
    never: a refusal, a file's fault, a bug, a file that kept changing."""
    assert retry_later(err) is later


# --- the attempts of one store call, on scripted calls ------------------------------------


def _endpoint(**kw: Any) -> Endpoint:
    config = EndpointConfig(name="e", attempt_timeout=0.5, min_throughput=1e12, **kw)
    return Endpoint("e", EndpointPool(config), Files(5.0), Stats())


def _script(*steps: BaseException | str) -> Callable[[], Awaitable[str]]:
    """A store call that fails (or answers) as told, one step per attempt."""
    left = list(steps)

    async def call() -> str:
        step = left.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step

    return call


async def test_transient_errors_are_retried_at_once_and_counted() -> None:
    end = _endpoint(tries=3)
    counter = AttemptCounter()
    start = time.monotonic()
    got = await end.tries(0, counter, _script(_client_error("InternalError", 500),
                                              ConnectionResetError("reset"), "ok"), "PUT x")
    assert got == "ok" and counter.attempts == 3
    assert time.monotonic() - start < 0.3  # no pause: not throttled
    assert end.stats.count(RETRIES, endpoint="e") == 2
    assert end.pool.active == 0


async def test_a_throttled_error_pauses_before_the_retry() -> None:
    end = _endpoint(tries=2)
    start = time.monotonic()
    assert await end.tries(0, AttemptCounter(), _script(_client_error("SlowDown", 503), "ok"),
                           "PUT x") == "ok"
    assert time.monotonic() - start >= 0.4  # 0.2 x 2^1


async def test_a_permanent_error_ends_the_attempts_at_once() -> None:
    end = _endpoint(tries=4)
    counter = AttemptCounter()
    with pytest.raises(PermanentTransferError) as caught:
        await end.tries(0, counter, _script(_client_error("NoSuchBucket", 404)), "PUT x")
    assert counter.attempts == 1 and "PUT x: NoSuchBucket" in caught.value.detail
    assert end.stats.count(RETRIES) == 0


async def test_tries_run_out_with_the_last_error() -> None:
    end = _endpoint(tries=2)
    counter = AttemptCounter()

    async def hang() -> str:
        await asyncio.sleep(10)
        return "never"

    with pytest.raises(RetriesExhausted) as caught:
        await end.tries(0, counter, hang, "PUT x")
    assert counter.attempts == 2 and isinstance(caught.value.last, TransferTimeout)
    assert caught.value.reason == "timeout" and retry_later(caught.value)


# --- rounds until max_age, against moto ---------------------------------------------------


async def test_a_dead_store_is_tried_in_rounds_until_the_deadline(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """1 s, then what is left of max_age: three rounds, their attempts added up."""
    caplog.set_level(logging.WARNING, logger="trollpush")
    path = _file(tmp_path, "f.h5")
    engine = await started_engine(f"http://127.0.0.1:{free_port()}", tries=1,
                                  connect_timeout=0.5)
    start = time.monotonic()
    try:
        (result,) = await engine.upload_all([upload_of(path, "b", "k")], "default",
                                            deadline=time.time() + 2.5, what="job j")
    finally:
        await engine.close()
    assert not result.ok and result.reason == "upload_failed" and result.retry_later
    assert result.attempts == 3 and engine.failed == 3
    waits = [r.getMessage() for r in caplog.records if "again in" in r.getMessage()]
    assert len(waits) == 2
    assert waits[0].startswith("1 upload(s) of job j failed (PUT s3://b/k: ")
    assert waits[0].endswith("; again in 1 s (2 s of max_age left)")
    assert time.monotonic() - start >= 2.4


async def test_a_store_that_comes_back_gets_the_file(s3: Any, bucket: str,
                                                     tmp_path: Path) -> None:
    path = _file(tmp_path, "f.h5", b"payload")
    port = free_port()
    engine = await started_engine(f"http://127.0.0.1:{port}", tries=1, connect_timeout=0.5)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    try:
        task = asyncio.create_task(engine.upload_all(
            [upload_of(path, bucket, "back.h5")], "default", deadline=time.time() + 60,
            what="job j"))
        await wait_until_async(lambda: engine.failed >= 1, what="a failed round")
        server.start()  # the same in-process moto backend: the bucket is there
        (result,) = await task
    finally:
        await engine.close()
        server.stop()
    assert result.ok and not result.retry_later and result.attempts >= 2
    assert s3.get_object(Bucket=bucket, Key="back.h5")["Body"].read() == b"payload"


async def test_what_waiting_cannot_fix_gets_no_second_round(
        s3_url: str, bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A missing bucket and a missing file fail at once, however far max_age is; the
    other files of the job land in the same round."""
    caplog.set_level(logging.WARNING, logger="trollpush")
    good = _file(tmp_path, "good.h5")
    engine = await started_engine(s3_url, tries=3)
    start = time.monotonic()
    try:
        results = await engine.upload_all(
            [upload_of(good, bucket, "good.h5"), upload_of(good, "no-such-bucket-x", "k"),
             upload_of(tmp_path / "missing.h5", bucket, "missing.h5")], "default",
            deadline=time.time() + 3600, what="job j")
    finally:
        await engine.close()
    assert [(r.ok, r.reason, r.retry_later) for r in results] == [
        (True, None, False), (False, "permanent_error", False),
        (False, "file_missing", False)]
    assert [r.attempts for r in results] == [1, 1, 0]
    assert not [r for r in caplog.records if "again in" in r.getMessage()]
    assert time.monotonic() - start < 5


async def test_landed_answers_the_first_round_only(s3_url: str, bucket: str,
                                                   tmp_path: Path) -> None:
    """What the journal says landed is checked (content and store) instead of sent."""
    path = _file(tmp_path, "f.h5")
    upload = upload_of(path, bucket, "f.h5")
    engine = await started_engine(s3_url)
    try:
        first = await engine.upload(upload, "default")
        (again,) = await engine.upload_all([upload], "default", deadline=time.time() + 60,
                                           what="job j", landed={0: first})
    finally:
        await engine.close()
    assert again.ok and again.attempts == 0 and again.etag == first.etag
    assert engine.stats.count(UPLOADS, outcome="reused") == 1 and engine.completed == 1


async def test_no_uploads_no_rounds(s3_url: str) -> None:
    engine = await started_engine(s3_url)
    try:
        assert await engine.upload_all([], "default", deadline=0.0, what="job j") == ()
    finally:
        await engine.close()
