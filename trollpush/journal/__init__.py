"""The journal: every request is recorded before it is acknowledged, so none is lost.

The public face of the package; each part is a module of its own: the contract
(:mod:`.protocol`), the in-memory journal (:mod:`.memory`), the SQLite journal
(:mod:`.sqlite`) with its writer thread (:mod:`.writer`), the SQL of each recording
(:mod:`.records`), its schema and quarantine (:mod:`.schema`) and the encoding of what it
records (:mod:`.codec`).  A new kind of journal implements :class:`Journal` and is chosen
in :func:`make_journal`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..models import MultipartState
from .memory import MemoryJournal
from .protocol import PRUNE_EVERY, JobRecord, Journal, State, advance
from .schema import SCHEMA_VERSION, Quarantined
from .sqlite import SQLiteJournal

if TYPE_CHECKING:
    from ..config import JournalConfig


def make_journal(config: JournalConfig) -> Journal:
    """The configured journal: SQLite at ``path``, or memory for ``path: memory`` (None)."""
    keep = config.keep_landed_days * 86400
    if config.path is None:
        return MemoryJournal(keep_landed_seconds=keep)
    return SQLiteJournal(config.path, keep_landed_seconds=keep)


__all__ = [
    # the contract
    "Journal", "JobRecord", "State", "advance", "MultipartState", "PRUNE_EVERY",
    # the implementations, and the choice between them
    "MemoryJournal", "SQLiteJournal", "make_journal",
    # the SQLite file
    "SCHEMA_VERSION", "Quarantined",
]
