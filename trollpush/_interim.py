"""TEMPORARY (removed when the inputs/, journal/ and transfer/ packages land): adapters
that let service.py and pipeline.py run on the old modules."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from .errors import Reason
from .models import Upload, UploadResult
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
