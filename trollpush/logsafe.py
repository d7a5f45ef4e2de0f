"""One log record, one line: control characters in logged values are escaped.

File names, subjects, metadata and error texts come from outside; a newline in one of
them would otherwise start a line that looks like a record of its own, and an escape
sequence would rewrite the reader's terminal.  :func:`install` makes every record that
any logger of the process creates (trollpush's, botocore's, aiohttp's, asyncio's) escape
its message, whatever handlers and formatters the user's ``--log-config`` sets up:

- It replaces the *log record factory*, the one hook every ``Logger.makeRecord`` goes
  through.  A formatter of ours would miss the user's formatters; a filter would have to
  be on every handler, including those added later; a logger filter does not see the
  records that propagate from child loggers.
- The record's ``getMessage()`` escapes, so f-string messages and ``%`` arguments are
  both covered, and the cost is paid only when a handler formats the record.
- With ``exc_info``, the traceback text (``exc_text``, which formatters use when it is
  set) is made with every exception message of the chain and group (and its notes)
  escaped; the stack lines, from source code, stay as they are, so the traceback keeps
  its usual lines.

Hidden: the texts given to :func:`hide` (secrets such as an SSE-C key), replaced by
``<hidden>`` before escaping.

Escaped: C0 controls (``\\n``, ``\\r``, ``\\t``, ESC as ``\\x1b``), DEL and C1 controls
(``\\xNN``), U+2028/U+2029 and the bidirectional overrides (``\\uNNNN``).  A backslash
is left alone, so escaping twice changes nothing.
"""

from __future__ import annotations

import logging
import re
from traceback import TracebackException
from traceback import format_exception as _plain_traceback
from types import TracebackType
from typing import Any

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with every control character escaped; unchanged (same object) if it has none."""
    if text.isprintable():  # C speed; false for every character _UNSAFE matches
        return text
    return _UNSAFE.sub(_escaped, text)


def short(value: object) -> str:
    """``repr(value)``, cut to 60 characters: a value quoted in a problem or a log line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_exception(exc_info: ExcInfo) -> str:
    """The traceback of ``exc_info`` as ``logging.Formatter.formatException`` writes it, but
    with the message (and notes) of every exception in the chain and group escaped."""
    te = TracebackException(*exc_info, compact=True)
    todo: list[TracebackException] = [te]
    seen: set[int] = set()
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        text = getattr(node, "_str", None)  # str(exception), kept since Python 3.5
        if not isinstance(text, str):
            # not the TracebackException this was written for: one escaped line is safe
            return escape("".join(_plain_traceback(*exc_info)).rstrip("\n"))
        node._str = escape(text)  # type: ignore[attr-defined]
        notes = getattr(node, "__notes__", None)
        if isinstance(notes, (list, tuple)):
            node.__notes__ = [escape(str(n)) for n in notes]
        elif notes is not None:
            node.__notes__ = [escape(repr(notes))]
        for attr in ("msg", "text", "filename"):  # SyntaxError details
            value = getattr(node, attr, None)
            if isinstance(value, str):
                setattr(node, attr, escape(value.rstrip("\n")) if attr == "text"
                        else escape(value))
        todo += [n for n in (node.__cause__, node.__context__) if n is not None]
        todo += node.exceptions or []
    return "".join(te.format()).rstrip("\n")


#: texts that no log line may show (an SSE-C key in each form a library may log it: a
#: botocore DEBUG line prints the request's headers); see :func:`hide`
_SECRETS: list[str] = []
_HIDDEN = "<hidden>"


def hide(*secrets: str) -> None:
    """Never show these texts in a log line from now on: each is replaced wherever it
    appears in a message or a traceback (the records of every logger, as for escaping)."""
    for secret in secrets:
        if len(secret) >= 8 and secret not in _SECRETS:  # a short text would hide words
            _SECRETS.append(secret)


def hidden(text: str) -> str:
    """``text`` with every secret given to :func:`hide` replaced (for texts that leave
    the process other than by a log line: an error's detail in a reply)."""
    return _hidden(text) if _SECRETS else text


def _hidden(text: str) -> str:
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, _HIDDEN)
    return text


class SafeLogRecord(logging.LogRecord):
    """A log record whose message and traceback text cannot break out of their line."""

    def getMessage(self) -> str:
        """The message, escaped; also makes ``exc_text`` safe, as formatters ask for the
        message before they look at it (so a record nobody formats costs nothing more)."""
        msg = str(self.msg)
        if self.args:
            msg = msg % self.args
        elif self.args is None and self.msg is self.__dict__.get("message"):
            # QueueHandler.prepare: msg is the text a formatter already made of this (safe)
            # record; its newlines are those of the traceback
            return msg
        if self.exc_info and not self.exc_text and self.exc_info[1] is not None:
            self.exc_text = format_exception(self.exc_info)
            if _SECRETS:
                self.exc_text = _hidden(self.exc_text)
        if _SECRETS:
            msg = _hidden(msg)
        return msg if msg.isprintable() else escape(msg)


def make_safe(record: logging.LogRecord) -> logging.LogRecord:
    """Escape a record made by another factory (eagerly: its class is not ours)."""
    try:
        message = record.getMessage()
    except Exception:  # a bad %-call: logging reports it when a handler formats it
        return record
    record.msg, record.args = escape(_hidden(message)), ()
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        record.exc_text = _hidden(format_exception(record.exc_info))
    return record


def install() -> None:
    """Make every log record of this process safe from here on (idempotent).

    Where the factory is logging's own, :class:`SafeLogRecord` takes its place (no call in
    between); another factory (a library's, the user's) is kept and its records are made
    safe after it.
    """
    current = logging.getLogRecordFactory()
    if current is SafeLogRecord or getattr(current, "_trollpush_safe", False):
        return
    if current is logging.LogRecord:
        logging.setLogRecordFactory(SafeLogRecord)
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        return record if isinstance(record, SafeLogRecord) else make_safe(record)

    factory._trollpush_safe = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
