"""systemd's notify protocol, spoken directly (no python-systemd).

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``: an ``AF_UNIX`` datagram socket,
a path or, starting with ``@``, an abstract name.  A datagram holds newline-separated
``KEY=VALUE`` assignments.  trollpush sends ``READY=1`` once its inputs are bound and
its pools are warm, ``STOPPING=1`` when it starts to drain, and, when ``WatchdogSec=``
is set (``$WATCHDOG_USEC``), ``WATCHDOG=1`` from the event loop at half that interval,
so that a wedged loop stops the pings and systemd restarts the daemon.

Without ``$NOTIFY_SOCKET`` (not under systemd, or another ``Type=``) it does nothing.
It plugs into the service as a lifecycle observer (:class:`SystemdNotify`); the service
knows nothing of systemd.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .service import Service

logger = logging.getLogger(__name__)

#: how much longer than ``shutdown_grace`` a stop may take (closing pools, the journal)
STOP_MARGIN = 30.0


def socket_address(value: str) -> str | None:
    """The address to send to for a ``$NOTIFY_SOCKET`` value, or None when there is none
    this module can use: ``/path`` as is, ``@name`` as the abstract ``\\0name``."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds between two ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or None when
    the watchdog is off or meant for another process (``$WATCHDOG_PID``)."""
    usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


class Notifier:
    """Sends state datagrams to one notify socket; a no-op without one.  Never raises:
    a failed send is logged once (and then at debug level) and reported as False."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        value = environ.get("NOTIFY_SOCKET", "")
        address = socket_address(value) if value else None
        if value and address is None:
            logger.warning("NOTIFY_SOCKET=%r is not a socket path or @name: systemd is not "
                           "notified", value)
        return cls(address)

    def __repr__(self) -> str:
        where = "off" if self.address is None else self.address.replace("\0", "@", 1)
        return f"<Notifier {where}>"

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; whether it went out."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)  # on the event loop: never wait for systemd
            self._sock.sendto("\n".join(assignments).encode(), self.address)
        except OSError as err:
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            logger.log(level, "systemd notification %s not sent: %s", assignments[0], err)
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class SystemdNotify:
    """A service lifecycle observer that keeps systemd informed (see the module doc)."""

    def __init__(self, notifier: Notifier, *, watchdog: float | None = None) -> None:
        self.notifier = notifier
        self.watchdog = watchdog if notifier.enabled else None
        self._pinger: asyncio.Task[None] | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> SystemdNotify:
        return cls(Notifier.from_environment(environ), watchdog=watchdog_interval(environ))

    def __repr__(self) -> str:
        dog = f" watchdog every {self.watchdog:g} s" if self.watchdog else ""
        return f"<SystemdNotify {self.notifier!r}{dog}>"

    def starting(self, service: Service) -> None:
        """On the event loop, before start-up: the watchdog pings from now on."""
        if self.watchdog is not None and self._pinger is None:
            self._pinger = asyncio.get_running_loop().create_task(
                self._ping(self.watchdog), name="systemd-watchdog")
            logger.info("systemd watchdog: a ping every %g s", self.watchdog)

    def started(self, service: Service) -> None:
        """Inputs bound, pools warm, recovery queued: ready."""
        inputs = ", ".join(each.name for each in service.inputs) or "no inputs"
        self.notifier.send("READY=1", f"STATUS=running: {inputs}")

    def reloading(self, service: Service) -> None:
        """A reload (SIGHUP) begins: systemd waits for READY=1 again."""
        now = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6)
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={now}",
                           "STATUS=reloading the config")

    def reloaded(self, service: Service) -> None:
        """The reload is done (applied or refused)."""
        self.started(service)

    def stopping(self, service: Service) -> None:
        """Intake stops; queued and running work gets ``shutdown_grace``."""
        grace = service.config.daemon.shutdown_grace
        self.notifier.send("STOPPING=1", f"STATUS=draining for up to {grace:g} s",
                           f"EXTEND_TIMEOUT_USEC={int((grace + STOP_MARGIN) * 1e6)}")

    def stopped(self, service: Service) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None
        self.notifier.close()

    async def _ping(self, every: float) -> None:
        while True:  # on the loop itself: a loop that hangs stops the pings
            self.notifier.send("WATCHDOG=1")
            await asyncio.sleep(every)
