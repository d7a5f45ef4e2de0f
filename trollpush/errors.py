"""One exception root, with families by cause.

Every error that trollpush raises on purpose derives from :class:`TrollpushError`.
Errors about input carry a stable *reason code* (see ``docs/messages.md``) so that
downstream consumers of failure announcements can branch on it.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class TrollpushError(Exception):
    """Root of every trollpush error."""


# --- configuration -------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config: where, what was there, what was expected."""

    key: str
    value: object
    expected: str

    def __post_init__(self) -> None:
        # a value that may be (or contain) a secret is never kept, so no str/repr can leak it
        object.__setattr__(self, "value", _safe(self.key, self.value))

    def __str__(self) -> str:
        return f"{self.key}: got {_show(self.value)}, expected {self.expected}"


_SECRET_RE = re.compile(r"(secret|token|password|passwd|credential|private)", re.IGNORECASE)


class _Hidden:
    def __repr__(self) -> str:
        return "<hidden>"


class _Summary:
    """What stands for a value that holds credentials."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _safe(key: str, value: object) -> object:
    if value is not None and _is_secret_key(key.rsplit(".", 1)[-1]):
        return _Hidden()
    if _holds_secret(value):
        if isinstance(value, dict):
            return _Summary(f"a mapping with keys [{', '.join(str(k) for k in value)}]")
        return _Summary("a value holding credentials")
    return value


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and _SECRET_RE.search(key) is not None


def _holds_secret(value: object) -> bool:
    """Whether a (nested) mapping has a key that looks like it holds a secret."""
    if isinstance(value, dict):
        return any(_is_secret_key(k) or _holds_secret(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_secret(v) for v in value)
    return False


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class ConfigError(TrollpushError):
    """The configuration is unusable; ``problems`` lists every reason, not just the first."""

    def __init__(self, problems: list[ConfigProblem], source: str = "config") -> None:
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s)\n{lines}")


class UsageError(TrollpushError):
    """A command-line or API call was given arguments it cannot use."""


class SetupError(TrollpushError):
    """Something the daemon needs could not be set up (a port in use, a dead intake)."""


class JournalError(TrollpushError):
    """The journal cannot record or read: its file, its lock, its data or SQLite failed."""


class UnrecordableError(JournalError):
    """A value of a request cannot be written to the journal (the request is at fault,
    not the journal)."""


# --- input: messages and requests ----------------------------------------------------


class Reason(enum.StrEnum):
    """Stable reason codes carried by failure messages (documented in docs/messages.md);
    each member is also its own string, as it goes on the wire and into the journal."""

    BAD_MESSAGE = "bad_message"
    UNSUPPORTED_TYPE = "unsupported_type"
    MISSING_URI = "missing_uri"
    REMOTE_FILE = "remote_file"
    FILE_MISSING = "file_missing"
    NOT_A_FILE = "not_a_file"
    NOT_ALLOWED = "not_allowed"
    TOO_LARGE = "too_large"
    FILE_CHANGED = "file_changed"
    FILE_UNREADABLE = "file_unreadable"
    BAD_DESTINATION = "bad_destination"
    NO_ROUTE = "no_route"
    COMPOSE_ERROR = "compose_error"
    BAD_OBJECT_OPTIONS = "bad_object_options"  # metadata/tags/headers beyond S3's limits
    EXISTS = "exists"  # if_none_match: a different object is already at the key
    UPLOAD_FAILED = "upload_failed"
    TIMEOUT = "timeout"
    PERMANENT = "permanent_error"
    SHUTDOWN = "shutdown"
    CLIENT_GONE = "client_gone"  # the requester hung up before its answer: abandoned
    QUEUE_TIMEOUT = "queue_timeout"
    INTERNAL = "internal_error"
    JOURNAL_UNAVAILABLE = "journal_unavailable"  # the journal cannot be written: not accepted
    DAEMON_GONE = "daemon_gone"  # client side: the daemon went away after accepting


class MessageError(TrollpushError):
    """An incoming message or request cannot be processed; ``reason`` is a stable code."""

    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class RouteError(MessageError):
    """A message was understood but could not be turned into destinations."""


# --- transfer ------------------------------------------------------------------------


class TransferError(TrollpushError):
    """An upload did not complete."""

    reason: Reason = Reason.UPLOAD_FAILED

    def __init__(self, detail: str, *, attempts: int = 1, reason: Reason | None = None,
                 throttled: bool = False) -> None:
        self.detail = detail
        self.attempts = attempts
        self.throttled = throttled  # the store asked to slow down: pause before retrying
        if reason is not None:
            self.reason = reason
        super().__init__(detail)


class TransferTimeout(TransferError):
    """One attempt exceeded its time budget."""

    reason = Reason.TIMEOUT


class PermanentTransferError(TransferError):
    """The store refused in a way that retrying cannot fix (no bucket, bad credentials)."""

    reason = Reason.PERMANENT


class ObjectExists(PermanentTransferError):
    """A conditional write (``if_none_match``) found an object already at the key: the
    store answered 412, so nothing was overwritten (never retried)."""

    reason = Reason.EXISTS


class RetriesExhausted(TransferError):
    """Every try failed; ``last`` is the error of the final attempt."""

    def __init__(self, last: TransferError, *, attempts: int) -> None:
        self.last = last
        self.reason = last.reason
        super().__init__(f"{attempts} attempt(s) failed, last: {last.detail}", attempts=attempts)
