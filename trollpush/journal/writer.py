"""The journal's writer thread: group commits, and one bad operation failing alone.

One thread owns the writing connection.  Callers on any event loop queue an operation (a
function of the connection and a tally) and await its future; the thread takes everything
queued, runs it in ONE transaction and commits once: one fsync for the whole group, which
is what lets thousands of accepts per second through.  The batch runs optimistically,
without a savepoint per operation (a third of the statements of a small file); if one
fails, the batch runs again with a savepoint each, so that only that one fails.  SQLite
and OS errors become :class:`~trollpush.errors.JournalError` here, at one boundary.

This module knows nothing of what the operations write: the journal that owns the writer
opens and closes the file, and hears of each commit, through the hooks it passes in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._workers import post
from ..errors import JournalError

logger = logging.getLogger(__name__)

_MAX_BATCH = 50_000  # operations per transaction, at most

#: one operation: runs on the writer's connection, counts what it did in the tally
Operation = Callable[[sqlite3.Connection, Counter[str]], Any]
_Outcome = tuple["_Op", Any, BaseException | None]


@dataclass(slots=True)
class _Op:
    fn: Operation | None  # None: close
    future: asyncio.Future[Any] | None = None


class _Redo(Exception):
    """An operation of an optimistic batch failed: run the batch again, isolated."""


class Writer:
    """The thread that runs a journal's operations in batches, one commit per batch.

    ``connect`` opens the file on the writer's thread and returns the writing connection;
    ``disconnect`` closes it (and whatever else the journal opened) when the thread ends.
    ``before_commit`` runs in each batch's transaction after its operations, with their
    tally; ``committed`` hears of each batch committed: its tally and its size.
    """

    def __init__(self, path: Path, *, connect: Callable[[], sqlite3.Connection],
                 disconnect: Callable[[], None],
                 before_commit: Callable[[sqlite3.Connection, Counter[str]], None],
                 committed: Callable[[Counter[str], int], None]) -> None:
        self.path = path
        self._connect = connect
        self._disconnect = disconnect
        self._before_commit = before_commit
        self._committed = committed
        self.state = "closed"  # closed | opening | open | closing
        self._gate = threading.Lock()  # state changes and queue puts
        self._queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def queued(self) -> int:
        """Operations waiting for the thread."""
        return self._queue.qsize()

    # --- life cycle (the event loop's side) -----------------------------------------------

    async def start(self) -> None:
        """Start the thread and wait until ``connect`` has opened the file."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        with self._gate:
            if self.state != "closed":
                raise JournalError(f"journal {self.path} is already {self.state}")
            self.state = "opening"
            self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, args=(ready,),
                                        name="journal-writer", daemon=True)
        self._thread.start()
        try:
            await ready
        except BaseException:
            with self._gate:
                if ready.cancelled():  # the writer may still come up: tell it to go
                    self._queue.put(_Op(None))
                self.state = "closed"
            raise
        with self._gate:
            self.state = "open"

    async def stop(self) -> None:
        """Commit what is queued, then end the thread; nothing when not open."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        with self._gate:
            if self.state != "open":
                return
            self.state = "closing"
            self._queue.put(_Op(None, done))
        try:
            await done
        finally:
            thread, self._thread = self._thread, None
            if thread is not None:
                await asyncio.to_thread(thread.join, 10)
            with self._gate:
                self.state = "closed"

    async def run(self, fn: Operation) -> Any:
        """Queue ``fn`` and wait until the batch it runs in is committed: its value."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        with self._gate:
            if self.state != "open":
                raise JournalError(f"journal {self.path} is not open ({self.state})")
            self._queue.put(_Op(fn, future))
        return await future

    def enqueue(self, fn: Operation) -> bool:
        """Queue ``fn`` with nobody waiting for it (any thread); False when not open."""
        with self._gate:
            if self.state != "open":
                return False
            self._queue.put(_Op(fn))
            return True

    # --- the thread -----------------------------------------------------------------------

    def _serve(self, ready: asyncio.Future[None]) -> None:
        try:
            conn = self._connect()
        except BaseException as err:
            self._disconnect()
            self._post([(_Op(None, ready), None, self._error(err))])
            return
        self._post([(_Op(None, ready), None, None)])
        while True:
            batch = [self._queue.get()]
            while batch[-1].fn is not None and len(batch) < _MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1].fn is None
            work = batch[:-1] if stop else batch
            if work:
                self._commit(conn, work)
            if stop:
                self._disconnect()
                self._post([(batch[-1], None, None)])
                with self._gate:
                    self.state = "closed"
                    left: list[_Op] = []
                    while not self._queue.empty():
                        left.append(self._queue.get_nowait())
                self._post([(op, None, JournalError(f"journal {self.path} is closed"))
                            for op in left])
                return

    def _commit(self, conn: sqlite3.Connection, work: list[_Op]) -> None:
        """Run the operations in one transaction and commit once: optimistically, then,
        if one fails, again with savepoints, so that only that one fails."""
        try:
            try:
                tally, outcomes = self._transaction(conn, work, isolate=False)
            except _Redo:
                tally, outcomes = self._transaction(conn, work, isolate=True)
        except Exception as err:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            logger.error("journal %s: commit of %d operation(s) failed: %s", self.path,
                         len(work), err)
            outcomes = [(op, None, self._error(err)) for op in work]
        else:
            self._committed(tally, len(work))
        self._post(outcomes)

    def _transaction(self, conn: sqlite3.Connection, work: list[_Op], *, isolate: bool
                     ) -> tuple[Counter[str], list[_Outcome]]:
        outcomes: list[_Outcome] = []
        tally: Counter[str] = Counter()
        conn.execute("BEGIN IMMEDIATE")
        for op in work:
            assert op.fn is not None
            mine: Counter[str] = Counter()
            if isolate:
                conn.execute("SAVEPOINT op")
            try:
                value = op.fn(conn, mine)
            except Exception as err:
                if not isolate:
                    conn.execute("ROLLBACK")
                    raise _Redo from err
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                outcomes.append((op, None, self._error(err)))
                continue
            if isolate:
                conn.execute("RELEASE op")
            tally.update(mine)
            outcomes.append((op, value, None))
        self._before_commit(conn, tally)
        conn.execute("COMMIT")
        return tally, outcomes

    @staticmethod
    def _post(outcomes: list[_Outcome]) -> None:
        """Hand the outcomes to their event loops: one wake-up per loop and batch."""
        post([(op.future, value, err) for op, value, err in outcomes if op.future is not None])

    def _error(self, err: BaseException) -> BaseException:
        """What the caller sees: SQLite and OS errors as :class:`JournalError`."""
        if isinstance(err, (sqlite3.Error, OSError)):
            wrapped = JournalError(f"journal {self.path}: {type(err).__name__}: {err}")
            wrapped.__cause__ = err
            return wrapped
        return err
