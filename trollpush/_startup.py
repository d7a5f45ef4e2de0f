"""Signals that arrive while the daemon starts, before its event loop handles them.

Importing the daemon's modules, opening the journal and warming connections take long
enough for a service manager's SIGTERM (or a SIGHUP) to arrive first.  Python's defaults
would then kill the process (SIGTERM, SIGHUP) or raise a traceback out of an import
(SIGINT).  So ``trollpush run`` installs these handlers before anything else: a stop is
remembered and handed to the daemon as soon as it exists (a clean stop, exit 0, nothing
lost: the journal keeps what was accepted), and SIGHUP is ignored (the daemon reloads its
config on SIGHUP once it is ready; until then it is reading the file anyway).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StartupSignals:
    """Remembers a stop asked for before the daemon runs; forwards it once attached."""

    def __init__(self) -> None:
        self.requested: signal.Signals | None = None
        self._stop: Callable[[], None] | None = None

    def install(self) -> None:
        """Take SIGTERM, SIGINT and SIGHUP (main thread only, as Python requires)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload once the daemon is ready

    def attach(self, stop: Callable[[], None]) -> None:
        """The daemon exists: a stop asked for earlier (or from now on) goes to it."""
        self._stop = stop  # (a signal in between may stop twice: stop() is idempotent)
        if self.requested is not None:
            stop()

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        # no logging here: a handler may interrupt a thread that holds a logging lock
        self.requested = signal.Signals(signum)
        stop = self._stop
        if stop is not None:
            stop()
