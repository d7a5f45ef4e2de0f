"""The directory watcher: each file that is ready in a watched directory becomes a
``file`` request (``uri`` the path, ``uid`` the base name, ``subject`` as configured),
journaled before anything else and routed like a posttroll message.

A file is ready when it is closed after writing or moved into the directory (inotify
close-write or moved-to, read with asyncinotify on the event loop), never when it is
created: a file written in chunks is taken once, whole, and a temporary file renamed
into place is taken under its final name only (``pattern`` leaves the temporary name
out).  With ``poll_interval`` (network file systems see no remote inotify events), a file
is ready once a later look finds its size, mtime and inode unchanged for ``settle``
seconds; so is a file that a scan finds (at start, in a new subdirectory, after the
kernel's event queue overflowed, when a lost directory is back) unless it is closed or
moved in first.

Everything is bounded: the queue of ready paths (``READY``) makes the event reader
wait while the daemon's queue is full; the kernel then keeps the events, and beyond its
``fs.inotify.max_queued_events`` it says that it dropped some (IN_Q_OVERFLOW) and the
watcher rescans.  Pending files (``PENDING`` per directory) and the memory of what was
taken (``RECENT``) are bounded too.  Symlinks are never followed: one dropped in is
refused with a reason.  A watched directory that disappears or cannot be read is logged
and watched again as soon as it can be (every ``RETRY`` seconds, or each poll); the
daemon stays up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from .._workers import Workers
from ..config import Config, WatchConfig
from ..errors import Reason, SetupError
from ..messages import interpret, new_message, overdue
from ..models import Rejection, Request
from ._dirs import Listing, ReadyQueue, Recent, Watched, is_symlink, log_skipped, shown, why
from ._notify import Notifier

if TYPE_CHECKING:
    from . import Intake

logger = logging.getLogger("trollpush.receive")  # the name users' log configs know
T = TypeVar("T")

ORIGIN = "watch"
READY = 1024  # paths ready and waiting to be checked and handed over
RECENT = 65536  # files taken lately, that a rescan does not take again if unchanged
TAKERS = 16  # files checked and handed over at once (the journal commits them together)


class WatchInput:
    """The ``watch`` input: a ``Notifier`` for the inotify-watched directories (its
    event reader and keeper tasks), a poller task for each polled one, and ``TAKERS``
    tasks that check the ready files and hand them to the service."""

    name = "watch"

    def __init__(self, configs: tuple[WatchConfig, ...], intake: Intake) -> None:
        self._intake = intake
        self._limits = intake.limits
        self.watched = [Watched(i, c) for i, c in enumerate(configs)]
        self._ready = ReadyQueue(READY)
        self._recent = Recent(RECENT)
        self._workers = Workers(2, max_threads=16, name="trollpush-watch")
        notified = [w for w in self.watched if w.config.poll_interval is None]
        self.notifier = (Notifier(notified, self._ready, self._recent, self._fs)
                         if notified else None)
        self._tasks: list[asyncio.Task[None]] = []
        self._cut: list[tuple[tuple[int, str], bool]] = []  # taken from the queue at stop
        self._undelivered: list[Request | Rejection] = []
        self._stopping = False
        self.taken = 0

    def __repr__(self) -> str:
        pending = sum(len(w.pending) for w in self.watched)
        return (f"<WatchInput dirs={len(self.watched)} taken={self.taken} "
                f"ready={len(self._ready)} pending={pending} {self.notifier!r}>")

    @property
    def received(self) -> int:
        """Ready files handed over (as requests, or refused)."""
        return self.taken

    @property
    def held(self) -> int:
        """Paths held in memory now: ready, pending and scans waiting (all bounded)."""
        scans = self.notifier.scans if self.notifier is not None else 0
        return len(self._ready) + sum(len(w.pending) for w in self.watched) + scans

    def describe(self) -> str:
        return "watching " + ", ".join(
            f"{shown(w.root)} ({'inotify' if w.config.poll_interval is None else 'polled'})"
            for w in self.watched)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._workers.start()
        if self.notifier is not None:
            self.notifier.start()
            self._spawn(self.notifier.events(), "watch-events")
            self._spawn(self.notifier.keep(), "watch-keeper")
        for w in self.watched:
            if w.config.poll_interval is not None:
                self._spawn(self._poll(w), f"watch-poll-{w.index}")
        for i in range(TAKERS):
            self._spawn(self._take(), f"watch-take-{i}")

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        task.add_done_callback(self._ended)
        self._tasks.append(task)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A task ended without stop(): a bug, or the inotify descriptor failed."""
        if self._stopping or task.cancelled():
            return
        err = task.exception() or SetupError(f"watch: {task.get_name()} ended")
        self._intake.fatal("the directory watcher", err)

    async def stop(self) -> None:
        """Stop watching and taking; what was cut off is answered by ``undelivered``."""
        if self._stopping:
            return
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._leftovers(self._cut + self._ready.drain())
        self._cut.clear()
        if self.notifier is not None:
            self.notifier.close()
        await self._workers.close()

    def _leftovers(self, left: list[tuple[tuple[int, str], bool]]) -> None:
        """Ready files not taken at stop: they stay where they are, and the next start's
        scan takes them; without scan_existing they are announced as not taken."""
        kept = 0
        for (index, path), ready in left:
            w = self.watched[index]
            if w.config.scan_existing:
                kept += 1
            elif ready:
                self._undelivered.append(Rejection(
                    Reason.SHUTDOWN, "the daemon stopped before taking this file (and "
                    "scan_existing is off: the next start does not take it)", ORIGIN,
                    subject=w.config.subject, uri=shown(path), message_type="file"))
        if kept:
            logger.info("watch: %d ready file(s) not taken before the stop; the next start "
                        "takes them (scan_existing)", kept)

    def undelivered(self) -> list[Request | Rejection]:
        return list(self._undelivered)

    async def close(self) -> None:
        await self.stop()

    # --- taking ready files ---------------------------------------------------------------

    async def _take(self) -> None:
        while True:
            key, ready = await self._ready.get()
            try:
                item = await self._checked(self.watched[key[0]], key[1], ready=ready)
            except asyncio.CancelledError:
                self._cut.append((key, ready))
                raise
            if item is None:
                continue
            if isinstance(item, Request) and item.files[0].stat is not None:
                self._recent.add(key[1], item.files[0].stat)
            try:
                await self._intake.submit(item)
            except asyncio.CancelledError:  # the journal may have it: the service decides
                self._undelivered.append(item)
                raise
            self.taken += 1

    async def _checked(self, w: Watched, path: str, *, ready: bool
                       ) -> Request | Rejection | None:
        """The file as a request (or refused with a reason), its checks on a worker
        thread for at most ``daemon.file_timeout``; None: nothing to take."""
        try:
            return await self._fs(self._make, w, path, ready)
        except TimeoutError:
            timeout = self._limits.file_timeout
            logger.warning("watch: checking %s took longer than daemon.file_timeout (%g s); "
                           "it is refused", shown(path), timeout)
            unchecked = self._make(w, path, True, check=False)
            return None if unchecked is None else overdue(unchecked, timeout)

    def _make(self, w: Watched, path: str, ready: bool, *, check: bool = True
              ) -> Request | Rejection | None:
        """A ``file`` message for ``path``, decoded as any other (allowed_roots, a regular
        file not reached through a symlink, readable).  A created entry is taken only if
        it is a symlink (to refuse it); one gone already (a temporary name) is not."""
        if not ready and not is_symlink(path):
            return None
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            return Rejection(Reason.BAD_MESSAGE, f"{shown(path)}: the file name is not UTF-8 "
                             "(an S3 key must be)", ORIGIN, subject=w.config.subject,
                             uri=shown(path), message_type="file")
        message = new_message(w.config.subject, "file",
                              {"uri": path, "uid": os.path.basename(path)})
        item = interpret(message, origin=ORIGIN, limits=self._limits, check=check)
        if isinstance(item, Rejection) and item.reason == Reason.FILE_MISSING:
            logger.debug("watch: %s went away before it was taken", shown(path))
            return None
        return item

    async def _fs(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a worker thread, waited for at most ``daemon.file_timeout``
        (TimeoutError; the stuck thread is replaced)."""
        call = self._workers.submit(fn, *args)
        try:
            return await asyncio.wait_for(asyncio.shield(call.future),
                                          self._limits.file_timeout)
        except TimeoutError:
            call.future.cancel()
            self._workers.grow()
            raise
        except asyncio.CancelledError:
            call.future.cancel()
            raise

    # --- polling --------------------------------------------------------------------------

    async def _poll(self, w: Watched) -> None:
        every = w.config.poll_interval or 1.0
        while True:
            await self._look(w, every)
            await asyncio.sleep(every)

    async def _look(self, w: Watched, every: float) -> None:
        """One look at a polled directory: what is new or changed since it was taken
        becomes pending, and ready once unchanged for ``settle`` seconds."""
        take = not w.first_look() or w.config.scan_existing
        listing = Listing(w.root, w.wanted, recursive=w.config.recursive, descend=True,
                          follow_root=True)
        present: set[str] = set()
        try:
            while not listing.done:
                files, _ = await self._fs(listing.batch)
                now = time.monotonic()
                for entry in files:
                    present.add(entry.path)
                    if w.known.get(entry.path) == entry.sig:
                        continue
                    if not take:
                        w.known[entry.path] = entry.sig
                    elif w.pending.see(entry.path, entry.sig, now):
                        w.known[entry.path] = entry.sig
                        await self._ready.put((w.index, entry.path), ready=True)
        except TimeoutError:
            w.lost("listing it took longer than daemon.file_timeout", every)
            return  # the listing is left to its stuck thread
        except OSError as err:
            listing.close()
            w.lost(why(err), every)
            return
        log_skipped(listing, w)
        w.back()
        w.known = {path: sig for path, sig in w.known.items() if path in present}
        w.pending.keep_only(present)


def create(config: Config, intake: Intake) -> WatchInput | None:
    """The directory watcher, if ``watch`` lists any directory."""
    return WatchInput(config.watch, intake) if config.watch else None
