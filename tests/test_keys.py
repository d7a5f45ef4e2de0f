"""SSE-C keys: read once from a file (raw or base64), named by their MD5, never shown in
a log line, whichever logger prints them and in whichever form."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from trollpush import keys, logsafe
from trollpush.models import ObjectOptions, SseCKey


@pytest.fixture
def safe_records() -> Iterator[None]:
    factory = logging.getLogRecordFactory()
    logsafe.install()
    try:
        yield
    finally:
        logging.setLogRecordFactory(factory)


def _md5(key: bytes) -> str:
    return base64.b64encode(hashlib.md5(key).digest()).decode()


def test_a_raw_key_file_and_a_base64_one(tmp_path: Path) -> None:
    raw, text = os.urandom(32), os.urandom(32)
    (tmp_path / "raw").write_bytes(raw)
    (tmp_path / "b64").write_text(base64.b64encode(text).decode() + "\n")
    assert keys.load(str(tmp_path / "raw")) == SseCKey(_md5(raw))
    assert keys.load(str(tmp_path / "raw")).key == raw
    got = keys.load(str(tmp_path / "b64"))
    assert (got.md5, got.key) == (_md5(text), text)
    assert keys.find(got.md5).key == text  # found again by its name (a resumed upload)
    assert keys.find("bm90IGxvYWRlZA==").key is None


@pytest.mark.parametrize(("content", "why"), [
    (b"", "holds 0 bytes"), (b"x" * 31, "holds 31 bytes"), (b"x" * 33, "holds 33 bytes"),
    (base64.b64encode(b"y" * 24) + b"\n", "holds 33 bytes"),  # base64, but of 24 bytes
    (b"!" * 44, "holds 44 bytes"),  # 44 characters, not base64
    (b"z" * 5000, "holds over 4096 bytes"),
])
def test_a_key_file_of_the_wrong_size_or_form(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "key"
    path.write_bytes(content)
    with pytest.raises(keys.KeyFileError) as info:
        keys.load(str(path))
    assert why in str(info.value) and "32-byte key" in str(info.value)
    if content:
        assert content.decode(errors="replace")[:20] not in str(info.value)


def test_a_symlinked_key_is_read_a_directory_and_a_missing_file_are_refused(
        tmp_path: Path) -> None:
    """A Kubernetes secret volume: ``key -> ..data/key``, ``..data -> ..2026_12_01``."""
    version = tmp_path / "..2026_12_01"
    version.mkdir()
    key = os.urandom(32)
    (version / "key").write_bytes(key)
    (tmp_path / "..data").symlink_to(version.name)
    (tmp_path / "key").symlink_to("..data/key")
    assert keys.load(str(tmp_path / "key")).key == key
    (tmp_path / "dir-link").symlink_to(version)
    with pytest.raises(keys.KeyFileError, match="not a regular file"):
        keys.load(str(tmp_path / "dir-link"))
    with pytest.raises(keys.KeyFileError, match="not a regular file"):
        keys.load(str(tmp_path))
    (tmp_path / "dangling").symlink_to("nowhere")
    for missing in ("absent", "dangling"):
        with pytest.raises(keys.KeyFileError, match="cannot open"):
            keys.load(str(tmp_path / missing))


def test_no_log_line_shows_a_loaded_key(safe_records: None, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    """botocore's DEBUG lines print the request headers (the key in base64); a repr of
    the call's parameters prints the bytes: every form is hidden, in messages, arguments
    and tracebacks, from any logger."""
    key = os.urandom(32)
    named = keys.remember(key)
    b64, hexed, shown = base64.b64encode(key).decode(), key.hex(), repr(key)[2:-1]
    caplog.set_level(logging.DEBUG)
    log = logging.getLogger("botocore.endpoint")
    log.debug("Making request with headers: %s", {"x-amz-server-side-encryption-customer-key": b64})
    log.debug(f"params {ObjectOptions(sse_c=named).put(None)} hex {hexed}")
    try:
        raise ValueError(f"bad key {b64}")
    except ValueError:
        logging.getLogger("trollpush.x").exception("failed with %s", shown)
    text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    for form in (b64, hexed, shown):
        assert form not in text
    assert text.count("<hidden>") >= 4
    assert repr(named) == f"SseCKey(md5='{named.md5}')"  # a repr never shows the key


def test_a_stores_error_text_that_echoes_a_key_is_hidden_in_the_detail() -> None:
    """A failure's detail goes into replies, announcements and the journal, not only log
    lines: a store's message echoing the key header is hidden there too."""
    import botocore.exceptions

    from trollpush.transfer import classify

    key = os.urandom(32)
    keys.remember(key)
    echoed = base64.b64encode(key).decode()
    err = botocore.exceptions.ClientError(
        {"Error": {"Code": "InvalidArgument", "Message": f"bad header {echoed}"},
         "ResponseMetadata": {"HTTPStatusCode": 400}}, "PutObject")
    detail = classify(err).detail
    assert echoed not in detail and "<hidden>" in detail


def test_sse_c_without_any_key_is_a_missing_key_never_an_unencrypted_write() -> None:
    assert ObjectOptions(encryption="sse-c").missing_key == "(none recorded)"
    assert ObjectOptions(encryption="sse-s3").missing_key is None
    assert ObjectOptions(encryption="sse-c", sse_c=SseCKey("abc")).missing_key == "abc"
