"""Setting up the JetStream input's side of the server: the stream and the shared
consumer, created if missing (and the servers named without credentials, for errors)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..config import JetStreamConfig
from ..errors import SetupError

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

logger = logging.getLogger("trollpush.receive")  # the name users' log configs know


def hosts(config: JetStreamConfig) -> list[str]:
    """The servers without credentials, for messages."""
    return [s.split("://", 1)[0] + "://" + s.split("://", 1)[-1].rsplit("@", 1)[-1]
            for s in config.servers]


async def stream(js: JetStreamContext, c: JetStreamConfig) -> None:
    """The stream, created if missing: work-queue retention, file storage."""
    from nats.js import api
    from nats.js.errors import NotFoundError

    try:
        info = await js.stream_info(c.stream)
    except NotFoundError:
        await js.add_stream(api.StreamConfig(
            name=c.stream, subjects=[c.subject], retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE, num_replicas=c.replicas))
        logger.info("jetstream: created stream %s (%s, work queue, file storage, %d "
                    "replica(s))", c.stream, c.subject, c.replicas)
        return
    subjects = list(info.config.subjects or [])
    if c.subject not in subjects:
        raise SetupError(f"jetstream.subject {c.subject}: stream {c.stream} exists and "
                         f"does not take it (its subjects: {', '.join(subjects)})")
    if info.config.retention != api.RetentionPolicy.WORK_QUEUE:
        logger.warning("jetstream: stream %s has %s retention, not a work queue: "
                       "acknowledged requests stay in it", c.stream,
                       info.config.retention)


async def consumer(js: JetStreamContext, c: JetStreamConfig) -> None:
    """The durable pull consumer every instance shares (created, or updated to the
    configured ack_wait and max_deliver)."""
    from nats.js import api

    await js.add_consumer(c.stream, api.ConsumerConfig(
        durable_name=c.consumer, ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL, ack_wait=c.ack_wait,
        max_deliver=c.max_deliver, filter_subject=c.subject, max_ack_pending=-1))
