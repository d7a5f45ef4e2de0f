"""The doctor's record of one check, and the small tools every check uses.

A check never raises and never waits without a bound: file-system and name look-ups
that can hang (a dead NFS mount, a resolver that does not answer) run in a daemon
thread of their own, so a hung call costs its check its time limit and nothing more (not
even the interpreter's exit, which would wait for an executor's threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any


class Status(enum.StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    """One finding: what was checked (``check``), on what (``subject``), the outcome,
    what was found (``detail``) and, unless it is OK, what to do (``fix``); one line each."""

    check: str
    subject: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    def scrubbed(self, secrets: Iterable[str]) -> Check:
        """The same check with every secret value replaced by ``<hidden>``."""
        return Check(self.check, scrub(self.subject, secrets), self.status,
                     scrub(self.detail, secrets), scrub(self.fix, secrets))


def ok(check: str, subject: str, detail: str) -> Check:
    return Check(check, subject, Status.OK, detail)


def warn(check: str, subject: str, detail: str, fix: str) -> Check:
    return Check(check, subject, Status.WARN, detail, fix)


def fail(check: str, subject: str, detail: str, fix: str) -> Check:
    return Check(check, subject, Status.FAIL, detail, fix)


def scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:  # a one-letter "secret" would shred the text
            text = text.replace(secret, "<hidden>")
    return text


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def why(err: BaseException) -> str:
    """An exception as a short text: an OS error's reason (``Connection refused``, not
    asyncio's ``Connect call failed ('10.0.0.1', 9000)``), else its message, else its type."""
    if isinstance(err, socket.gaierror) and err.strerror:
        return str(err.strerror)
    if isinstance(err, OSError) and not isinstance(err, ssl.SSLError) and \
            isinstance(err.errno, int) and err.errno > 0:
        return os.strerror(err.errno)
    text = str(err).strip()
    return text if text else type(err).__name__


async def in_thread[T](fn: Callable[..., T], *args: Any, limit: float) -> T:
    """``fn(*args)`` in a daemon thread, waited for at most ``limit`` seconds
    (TimeoutError past it; the thread is left to finish or hang on its own)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, err: BaseException | None) -> None:
        if done.done():
            return
        if err is not None:
            done.set_exception(err)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, err = fn(*args), None
        except BaseException as exc:  # handed to the waiting check
            result, err = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, result, err)

    threading.Thread(target=run, name="doctor-call", daemon=True).start()
    async with asyncio.timeout(limit):
        return await done
