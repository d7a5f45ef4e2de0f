"""Requests recovered from the journal that another instance did: ended without a word.

A request an instance took from a shared queue (JetStream) and did not finish stays in
its journal; the queue gives its message again, maybe to another instance, which does
it.  When the first instance learns that (see ``inputs._parked``), the journal's copy is
*handed over*: the multipart uploads it had recorded are aborted at the store (no parts
left behind: the object is the other instance's), and its record is closed.  Nothing is
announced: the completion is the other instance's to announce.
"""

from __future__ import annotations

import logging

from . import stats
from .errors import JournalError
from .journal import JobRecord
from .models import Request
from .pipeline import Pipeline

logger = logging.getLogger(__name__)


async def hand_over(pipeline: Pipeline, request: Request, detail: str) -> None:
    """End the recovered ``request`` here: its recorded multipart uploads aborted, its
    journal record closed (``finished``), counted as ``handed_over``."""
    journal = pipeline.journal
    try:
        records: list[JobRecord] = journal.jobs(request)
    except JournalError as err:  # (set aside in the quarantine): nothing to abort
        logger.warning("handing over %s: %s", request.describe(), err)
        records = []
    for record in records:
        for upload in record.job.uploads:
            state = journal.multipart(record.job, upload)
            if state is not None:
                await pipeline.engine.abort(upload, record.job.endpoint, state.upload_id)
    await pipeline.record(journal.finished(request), request.describe())
    pipeline.resuming.discard(request.id)
    pipeline.stats.inc(stats.REQUESTS, input=request.origin, outcome="handed_over")
    logger.info("handed over: %s: %s; its journal record is closed, nothing announced "
                "here", request.describe(), detail)
