"""TEMPORARY (removed when the inputs/, journal/ and transfer/ packages land): adapters
that let service.py and pipeline.py run on the old modules."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from .config import Config
from .errors import Reason
from .models import Rejection, Request, Upload, UploadResult
from .receive import RequestServer, SubscribeReceiver
from .stats import Stats
from .transfer import TransferEngine

logger = logging.getLogger(__name__)
TRANSIENT = frozenset({Reason.UPLOAD_FAILED, Reason.TIMEOUT, Reason.QUEUE_TIMEOUT})
RETRY_FIRST, RETRY_MAX = 1.0, 60.0


class Engine(TransferEngine):
    def __init__(self, *args: Any, stats: Stats | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)

    async def upload_all(self, uploads: Sequence[Upload], endpoint: str, *, deadline: float,
                         progress: Any, landed: dict[int, UploadResult]
                         ) -> tuple[UploadResult, ...]:
        results: dict[int, UploadResult] = {}
        todo = list(range(len(uploads)))
        delay = RETRY_FIRST
        while todo:
            runs = [self.upload(uploads[i], endpoint, progress=progress,
                                landed=landed.pop(i, None)) for i in todo]
            fresh = [await runs[0]] if len(runs) == 1 else await asyncio.gather(*runs)
            for i, result in zip(todo, fresh, strict=True):
                before = results.get(i)
                results[i] = result if before is None else replace(
                    result, attempts=before.attempts + result.attempts)
            todo = [i for i in todo if not results[i].ok and results[i].reason in TRANSIENT]
            left = deadline - time.time()
            if not todo or left <= 0:
                break
            wait = min(delay, left)
            logger.warning("%d upload(s) failed (%s); again in %.0f s (%.0f s of max_age left)",
                           len(todo), results[todo[0]].error, wait, left)
            await asyncio.sleep(wait)
            delay = min(delay * 2, RETRY_MAX)
        return tuple(results[i] for i in range(len(uploads)))


class _Requests:
    name = "requests"

    def __init__(self, config: Config, intake: Any) -> None:
        assert config.requests is not None
        self.server = RequestServer(config.requests.address, intake.submit,
                                    on_fatal=intake.fatal, limits=intake.limits,
                                    mode=config.requests.mode, group=config.requests.group)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)

    def describe(self) -> str:
        return f"requests on {self.server.address}"

    async def start(self) -> None:
        self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    def undelivered(self) -> list[Request | Rejection]:
        return self.server.undelivered

    async def close(self) -> None:
        self.server.close()


class _Subscribe:
    name = "subscribe"

    def __init__(self, config: Config, intake: Any) -> None:
        assert config.subscribe is not None
        self.topics = list(config.subscribe.topics)
        self.server = SubscribeReceiver(config.subscribe.settings, intake.submit, intake.loop,
                                        on_fatal=intake.fatal, limits=intake.limits)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)

    def describe(self) -> str:
        return f"subscribed to {self.topics}"

    async def start(self) -> None:
        await asyncio.to_thread(self.server.start)

    async def stop(self) -> None:
        await asyncio.to_thread(self.server.stop)

    def undelivered(self) -> list[Request | Rejection]:
        return self.server.undelivered

    async def close(self) -> None:
        pass


def build_inputs(config: Config, intake: Any) -> list[Any]:
    out: list[Any] = []
    if config.requests is not None:
        out.append(_Requests(config, intake))
    if config.subscribe is not None:
        out.append(_Subscribe(config, intake))
    return out
