"""Announce: the publisher of completions and failures.

The messages themselves are built in :mod:`trollpush.messages` (a completion has the
input's type and metadata with each ``uri`` replaced by the object's ``s3://`` URL; a
failure has type ``failure`` so that no success subscriber can mistake it); here they are
sent on the one posttroll publisher of the process, and the pipeline's outcomes get the
configured failure topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from typing import Any

from posttroll.message import Message
from posttroll.publisher import create_publisher_from_dict_config

from ._workers import post, take
from .config import PublishConfig
from .errors import SetupError
from .messages import failure
from .models import Job, Rejection, Request, UploadResult
from .route import RouteFailure

logger = logging.getLogger(__name__)

#: a message to send, and the future of whoever waits for it to be sent
_Item = tuple[Message, "asyncio.Future[None] | None"]


class Announcer:
    """Publishes messages on one posttroll publisher kept for the process's lifetime, from
    a thread of its own.

    pyzmq's ``send`` releases the GIL: on the event loop, each send then waited for the
    GIL to come back from the daemon's other threads (~0.2 ms a message during a burst,
    a tenth of the loop's time).  The loop only queues messages; the thread sends them in
    order, and ``sent`` awaits one (confirmations come back in batches) where a message
    must be out before the journal may record it.
    """

    BATCH = 256

    def __init__(self, config: PublishConfig | None) -> None:
        self.config = config
        self._publisher: Any = None
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.published = 0  # messages sent, and sends that failed (the stats follow both)
        self.failed = 0

    def __repr__(self) -> str:
        where = self.config.settings.get("address") if self.config else None
        return (f"<Announcer {where or 'disabled'} published={self.published} "
                f"failed={self.failed}>")

    @property
    def failure_topic(self) -> str:
        return self.config.failure_topic if self.config else PublishConfig.failure_topic

    def start(self) -> None:
        if self.config is None:
            return
        publisher = create_publisher_from_dict_config(dict(self.config.settings))
        try:
            publisher.start()
        except Exception as err:
            with contextlib.suppress(Exception):
                publisher.stop()
            where = self.config.settings.get("address") or "a nameserver-registered port"
            raise SetupError(f"publish: cannot start the publisher on {where} ({err})"
                             ) from err
        self._publisher = publisher
        self._thread = threading.Thread(target=self._serve, name="trollpush-publish",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Send what is queued, then close the publisher."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                logger.error("the publisher thread did not finish sending within 10 s")
            self._thread = None
        if self._publisher is not None:
            self._publisher.stop()
            self._publisher = None

    def publish(self, message: Message) -> None:
        """Queue one message for sending; a publish error is logged, never raised."""
        if self._thread is not None:
            self._queue.put((message, None))

    async def sent(self, message: Message) -> None:
        """Publish one message and return once ZeroMQ has taken it (or failed to)."""
        if self._thread is None:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put((message, future))
        await future

    def _serve(self) -> None:
        while True:
            items = take(self._queue, self.BATCH)
            done: list[tuple[asyncio.Future[None], None, None]] = []
            for item in items:
                if item is None:
                    break
                message, future = item
                self._send(message)
                if future is not None:
                    done.append((future, None, None))
            post(done)
            if items[-1] is None:
                return

    def _send(self, message: Message) -> None:
        try:
            self._publisher.send(message.encode())
            self.published += 1
        except Exception:
            self.failed += 1
            logger.exception("publish failed for %s %s", message.type, message.subject)

    # --- the messages of the pipeline's outcomes --------------------------------------

    def rejection(self, item: Rejection) -> Message:
        return failure(self.failure_topic, uri=item.uri, destination=item.destination,
                       error=item.detail, reason=item.reason, metadata=item.metadata)

    def route_failure(self, request: Request, fail: RouteFailure) -> Message:
        uri = fail.source.uri if fail.source else (request.files[0].uri if request.files else None)
        return failure(self.failure_topic, uri=uri, destination=fail.destination,
                       error=fail.detail, reason=fail.reason, target=fail.target,
                       metadata=request.metadata, request_type=request.type)

    def upload_failure(self, job: Job, result: UploadResult) -> Message:
        return failure(self.failure_topic, uri=result.upload.source.uri,
                       destination=result.upload.url, error=result.error or "unknown error",
                       reason=result.reason or "upload_failed", attempts=result.attempts,
                       target=job.target, endpoint=job.endpoint, metadata=job.request.metadata,
                       request_type=job.request.type)
