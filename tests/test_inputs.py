"""The inputs' seam: an input the daemon has never heard of is served like the built-in
ones, through one factory and nothing else."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from posttroll.message import Message

from trollpush.config import Config
from trollpush.inputs import Input, Intake
from trollpush.journal import MemoryJournal
from trollpush.messages import decode
from trollpush.models import Rejection, Request

from .helpers import running_daemon, wait_until


class OneFile:
    """A toy input: announces one file, as a pub-sub message would, once started."""

    name = "one-file"

    def __init__(self, path: Path, intake: Intake) -> None:
        self.path = path
        self.intake = intake
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.received = 0

    def describe(self) -> str:
        return f"one file ({self.path.name})"

    async def start(self) -> None:
        self.task = asyncio.create_task(self._announce())

    async def _announce(self) -> None:
        frame = Message("/new/file/viirs/", "file", {"uri": str(self.path)}).encode()
        await self.intake.submit(decode(frame.encode(), origin="subscribe",
                                        limits=self.intake.limits))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def undelivered(self) -> list[Request | Rejection]:
        return []

    async def close(self) -> None:
        self.closed = True


def test_an_input_added_through_the_registry_is_served(base_config: dict[str, Any],
                                                       granule: Path, bucket: str,
                                                       s3: Any) -> None:
    """Wired in by its factory alone, the toy's file is journaled, routed, uploaded and
    announced, and the input is closed at stop: no change to the daemon needed."""
    built: list[OneFile] = []

    def create(config: Config, intake: Intake) -> Input | None:
        built.append(OneFile(granule, intake))
        return built[-1]

    journal = MemoryJournal()
    with running_daemon(base_config, journal, registry=(create,)) as daemon:
        wait_until(lambda: daemon.counts["completed"] == 1, 20, "the file landed")
        assert daemon.input("one-file") is built[0]
        assert daemon.input("requests") is None and daemon.input("subscribe") is None
    key = f"j01/2026/11/21/{granule.name}"
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == granule.stat().st_size
    assert built[0].closed and journal.unfinished() == []

