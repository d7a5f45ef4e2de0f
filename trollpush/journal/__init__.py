"""The journal: every accepted request is recorded before it is acknowledged.

Its public face; the parts live in private modules of this package.
"""

from __future__ import annotations

from .protocol import (
    PRUNE_EVERY,
    JobRecord,
    Journal,
    MemoryJournal,
    MultipartState,
    State,
    advance,
    default_journal_path,
)
from .schema import SCHEMA_VERSION, Quarantined
from .sqlite import SQLiteJournal

__all__ = [
    "Journal", "JobRecord", "State", "advance", "MultipartState", "PRUNE_EVERY",
    "MemoryJournal", "SQLiteJournal", "SCHEMA_VERSION", "Quarantined",
    "default_journal_path",
]
