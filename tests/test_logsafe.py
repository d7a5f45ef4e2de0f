"""One log record, one line: control characters in logged values cannot forge records."""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from trollpush import cli, logsafe

FORGED = "[2026-01-01 00:00:00,000 ERROR    trollpush.daemon] forged"
HOSTILE = f"x.h5\n{FORGED}\r{FORGED}\x1b[2K\x1b[1G\u2028{FORGED}\u2029\x85\t\x00\u202e"
HOSTILE_ESCAPED = (f"x.h5\\n{FORGED}\\r{FORGED}\\x1b[2K\\x1b[1G\\u2028{FORGED}\\u2029\\x85"
                   f"\\t\\x00\\u202e")


@pytest.fixture
def clean_logging() -> Iterator[None]:
    """The record factory, the root logger and the loggers setup_logging touches are put
    back as they were; handlers made meanwhile are closed."""
    factory = logging.getLogRecordFactory()
    root = logging.getLogger()
    names = ["botocore", "aiobotocore", "urllib3", "asyncio"]
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in names})
    try:
        yield
    finally:
        logging.setLogRecordFactory(factory)
        for handler in root.handlers:
            if handler not in saved[0]:
                handler.close()
        root.handlers, root.level = saved[0], saved[1]
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize(("raw", "escaped"), [
    ("plain name_2026.h5", "plain name_2026.h5"),
    ("a\nb", "a\\nb"), ("a\rb", "a\\rb"), ("a\tb", "a\\tb"), ("\x1b[31mred", "\\x1b[31mred"),
    ("nul\x00", "nul\\x00"), ("del\x7f", "del\\x7f"), ("nel\x85", "nel\\x85"),
    ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"), ("rlo\u202etxt.exe", "rlo\\u202etxt.exe"),
    ("back\\slash \\n", "back\\slash \\n"),  # left alone: escaping twice changes nothing
    ("ünïcödé ✓ \u00a0nbsp", "ünïcödé ✓ \u00a0nbsp"),
])
def test_escape(raw: str, escaped: str) -> None:
    assert logsafe.escape(raw) == escaped
    assert logsafe.escape(escaped) == escaped
    assert "\n" not in escaped and "\r" not in escaped


def test_escape_returns_clean_text_itself() -> None:
    text = "upload complete /data/a.h5 -> s3://b/a.h5"
    assert logsafe.escape(text) is text


def _forge(logger: logging.Logger) -> None:
    """What a hostile name can reach: %-arguments, f-strings, exception messages (a chain
    with a note) and a third-party logger."""
    logger.warning("upload failed %s -> %s", f"/data/{HOSTILE}", "s3://b/k")
    logger.info(f"f-string {HOSTILE}")
    try:
        try:
            raise FileNotFoundError(2, "No such file", HOSTILE)
        except OSError as err:
            failure = RuntimeError(f"cannot upload {HOSTILE}")
            failure.add_note(f"note {HOSTILE}")
            raise failure from err
    except RuntimeError:
        logger.exception("request crashed: %s", HOSTILE)
    logging.getLogger("botocore.endpoint").warning("key %s", HOSTILE)


def _records(text: str, start: re.Pattern[str]) -> list[list[str]]:
    """Lines grouped into records: a record starts with a line matching ``start``."""
    records: list[list[str]] = []
    for line in text.splitlines(keepends=False):
        if start.match(line):
            records.append([line])
        else:
            assert records, f"text before the first record: {line!r}"
            records[-1].append(line)
    return records


def _is_traceback(lines: list[str]) -> bool:
    """Continuation lines of a record are a Python traceback, and nothing else."""
    if not lines:
        return True
    if lines[0] != "Traceback (most recent call last):":
        return False
    allowed = re.compile(r"^(Traceback \(most recent call last\):|  \S.*|    .*|\w+(\.\w+)*: .*"
                         r"|note .*|The above exception was the direct cause .*|)$")
    return all(allowed.match(line) for line in lines)


def test_user_dictconfig_with_its_own_formatter(clean_logging: None, tmp_path: Path) -> None:
    """`trollpush run -c log.yaml`: the user's formatter and handler, records from child
    loggers propagating to the root, f-strings, tracebacks: one line per record (plus the
    traceback's own lines), nothing forged, tracebacks still readable."""
    logfile = tmp_path / "user.log"
    logcfg = tmp_path / "log.yaml"
    logcfg.write_text(yaml.safe_dump({
        "version": 1,
        "formatters": {"mine": {"format": "[%(levelname)s|%(name)s] %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(logfile),
                              "formatter": "mine", "encoding": "utf-8"}},
        "root": {"level": "DEBUG", "handlers": ["file"]}}))
    cli.setup_logging(str(logcfg), False)
    _forge(logging.getLogger("trollpush.transfer"))
    for handler in logging.getLogger().handlers:
        handler.flush()

    text = logfile.read_text(encoding="utf-8")
    for char in "\r\x1b\x00\x85\u2028\u2029\u202e":
        assert char not in text
    records = _records(text, re.compile(r"^\[(DEBUG|INFO|WARNING|ERROR)\|"))
    assert [r[0] for r in records] == [
        f"[WARNING|trollpush.transfer] upload failed /data/{HOSTILE_ESCAPED} -> s3://b/k",
        f"[INFO|trollpush.transfer] f-string {HOSTILE_ESCAPED}",
        f"[ERROR|trollpush.transfer] request crashed: {HOSTILE_ESCAPED}",
        f"[WARNING|botocore.endpoint] key {HOSTILE_ESCAPED}"]
    assert not any(line.startswith(FORGED) for line in text.splitlines())
    for record in records:
        assert _is_traceback(record[1:]), record
    traceback = records[2][1:]
    assert f"RuntimeError: cannot upload {HOSTILE_ESCAPED}" in traceback
    assert f"note {HOSTILE_ESCAPED}" in traceback
    assert any(line.startswith("FileNotFoundError: [Errno 2] No such file:")
               for line in traceback)
    assert any(line.startswith("The above exception was the direct cause") for line in traceback)


def test_the_daemons_logging_thread_keeps_tracebacks_whole(clean_logging: None) -> None:
    """Through cli.logging_in_a_thread (a QueueHandler formats on the logging side): the
    message is escaped once, the traceback keeps its lines."""
    logsafe.install()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter(cli.LOG_FORMAT))
    root = logging.getLogger()
    root.handlers, root.level = [handler], logging.INFO
    with cli.logging_in_a_thread():
        _forge(logging.getLogger("trollpush.daemon"))
    records = _records(out.getvalue(), re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "))
    assert [r[0].split("] ", 1)[1] for r in records] == [
        f"upload failed /data/{HOSTILE_ESCAPED} -> s3://b/k", f"f-string {HOSTILE_ESCAPED}",
        f"request crashed: {HOSTILE_ESCAPED}", f"key {HOSTILE_ESCAPED}"]
    assert [len(r) > 5 for r in records] == [False, False, True, False]
    for record in records:
        assert _is_traceback(record[1:]), record
    assert f"RuntimeError: cannot upload {HOSTILE_ESCAPED}" in records[2]


def test_exception_groups_and_context_chains(clean_logging: None) -> None:
    logsafe.install()
    try:
        try:
            raise KeyError(HOSTILE)
        except KeyError:
            raise ExceptionGroup(f"group {HOSTILE}", [ValueError(f"inner {HOSTILE}")]) from None
    except ExceptionGroup:
        try:
            raise OSError(f"while handling {HOSTILE}")  # a context chain
        except OSError:
            record = logging.getLogger("t").makeRecord(
                "t", logging.ERROR, __file__, 1, "failed", (), logsafe_exc_info())
    assert record.getMessage() == "failed"
    text = record.exc_text or ""
    assert f"group {HOSTILE_ESCAPED} (1 sub-exception)" in text
    assert f"ValueError: inner {HOSTILE_ESCAPED}" in text
    assert f"OSError: while handling {HOSTILE_ESCAPED}" in text
    assert "During handling of the above exception, another exception occurred:" in text
    assert "KeyError" not in text  # suppressed by `from None`, as Python prints it
    for char in "\r\x1b\u2028":
        assert char not in text
    assert not any(line.lstrip(" |").startswith(FORGED) for line in text.splitlines())


def logsafe_exc_info() -> logsafe.ExcInfo:
    info = sys.exc_info()
    assert info[0] is not None and info[1] is not None
    return (info[0], info[1], info[2])


def test_install_is_idempotent_and_keeps_another_factory(clean_logging: None) -> None:
    logsafe.install()
    assert logging.getLogRecordFactory() is logsafe.SafeLogRecord
    logsafe.install()
    assert logging.getLogRecordFactory() is logsafe.SafeLogRecord

    base = logging.LogRecord

    def tagging(*args: object, **kwargs: object) -> logging.LogRecord:
        record = base(*args, **kwargs)  # type: ignore[arg-type]
        record.tag = "theirs"
        return record

    logging.setLogRecordFactory(tagging)
    logsafe.install()
    wrapped = logging.getLogRecordFactory()
    logsafe.install()
    assert logging.getLogRecordFactory() is wrapped
    try:
        raise ValueError(HOSTILE)
    except ValueError:
        record = logging.getLogger("t").makeRecord(
            "t", logging.WARNING, __file__, 1, "name %s", (HOSTILE,), logsafe_exc_info())
    assert getattr(record, "tag", None) == "theirs"
    assert record.getMessage() == f"name {HOSTILE_ESCAPED}"
    assert f"ValueError: {HOSTILE_ESCAPED}" in (record.exc_text or "")


def test_a_traceback_formatter_of_another_shape_still_gives_one_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Should a later Python keep the exception text elsewhere than ``_str``, the
    traceback is escaped whole: one line, but nothing forged."""
    import traceback

    class Reshaped(traceback.TracebackException):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            del self._str  # type: ignore[attr-defined]

    monkeypatch.setattr(logsafe, "TracebackException", Reshaped)
    try:
        raise ValueError(HOSTILE)
    except ValueError:
        text = logsafe.format_exception(logsafe_exc_info())
    assert "\n" not in text and "\r" not in text and "\x1b" not in text
    assert text.startswith("Traceback (most recent call last):\\n")
    assert text.endswith(f"ValueError: {HOSTILE_ESCAPED}")
