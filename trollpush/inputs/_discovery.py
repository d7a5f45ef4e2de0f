"""Finding the producers through a posttroll nameserver, in a thread of its own.

The reader thread of ``inputs.subscribe.SubscribeReceiver`` owns the sockets; it takes the
addresses found here from a queue, so a missing nameserver never holds up reading.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

logger = logging.getLogger("trollpush.receive")  # the name users' log configs know


def _as_list(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]  # type: ignore[attr-defined]


class Discovery:
    """Asks a posttroll nameserver for the producers' addresses, in its own thread, until
    every service has some; found addresses wait in ``found`` for the reader thread
    (which owns the sockets).

    posttroll's own start-up asks once and raises ``TimeoutError`` after ``timeout`` s
    when no nameserver answers; here a missing nameserver is one warning, and the asking
    goes on in the background.
    """

    #: seconds between rounds while a nameserver or a service is missing
    RETRY = 2.0
    #: seconds one question may wait for an answer (bounds how long stop() waits)
    ASK = 2.0

    def __init__(self, nameserver: str, services: object, timeout: float,
                 stop: threading.Event) -> None:
        self.nameserver = nameserver
        self.services = _as_list(services) or [""]
        self._ask = max(0.1, min(float(timeout), self.ASK))
        self._stop = stop
        self.found: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.answered = threading.Event()  # the nameserver answered at least once
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="trollpush-discovery",
                                        daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _where(self) -> str:
        from posttroll.ns import get_configured_unsecure_zmq_nameserver_port

        if "://" in self.nameserver:
            return self.nameserver
        return f"tcp://{self.nameserver}:{get_configured_unsecure_zmq_nameserver_port()}"

    def _run(self) -> None:
        from posttroll.ns import get_pub_address

        missing = list(self.services)
        warned = told_empty = False
        while missing and not self._stop.is_set():
            for service in list(missing):
                try:
                    addresses = get_pub_address(service, self._ask, self.nameserver)
                except TimeoutError:
                    if not warned:
                        warned = True
                        logger.warning(
                            "subscribe: no posttroll nameserver answers at %s, so no producer "
                            "can be found yet: start one (posttroll's `nameserver` command) "
                            "or set `subscribe.nameserver: false` with `subscribe.addresses`; "
                            "trollpush keeps asking every %g s", self._where(), self.RETRY)
                    break
                except Exception as err:  # a garbled answer must not end the search
                    logger.warning("subscribe: nameserver look-up failed: %s: %s",
                                   type(err).__name__, err)
                    break
                if not self.answered.is_set():
                    self.answered.set()
                    if warned:
                        logger.info("subscribe: the nameserver at %s answers now",
                                    self._where())
                found = [a for a in (addresses or []) if isinstance(a, dict) and "URI" in a]
                if not found:
                    if not told_empty:
                        told_empty = True
                        logger.info("subscribe: the nameserver knows no producer of %s yet; "
                                    "asking again every %g s", repr(service) if service else
                                    "any service", self.RETRY)
                    continue
                missing.remove(service)
                for address in found:
                    self.found.put(address)
                logger.info("subscribe: found %s for %s", ", ".join(a["URI"] for a in found),
                            repr(service) if service else "all services")
            if missing:
                self._stop.wait(self.RETRY)
