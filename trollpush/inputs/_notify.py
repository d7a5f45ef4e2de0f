"""The inotify side of the directory watcher: watches, events, scans.

One ``Inotify`` descriptor read on the event loop (asyncinotify) serves every watched
directory and, when recursive, its subdirectories (watched with DONT_FOLLOW: a symlink
is never followed).  Close-write and moved-to make a file ready; a created entry is
looked at only to refuse a symlink.  A subdirectory is watched before it is listed, so
that nothing written meanwhile is missed; what a scan finds is ready once unchanged for
``settle`` seconds.  The keeper task runs the scans in batches, looks again at what they
found, and watches lost directories again every ``RETRY`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from asyncinotify import Event, Inotify, Mask, Watch

from ..errors import SetupError
from ._dirs import Listing, ReadyQueue, Recent, Watched, log_skipped, lstat_all, shown, why

logger = logging.getLogger("trollpush.receive")  # the name users' log configs know
T = TypeVar("T")

TICK = 0.5  # seconds between looks at files a scan found
RETRY = 2.0  # seconds between attempts to watch a lost directory again
#: the events asked for; a subdirectory's watch also has DONT_FOLLOW (the configured
#: directory itself may be a symlink)
EVENTS = (Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.MOVED_FROM | Mask.CREATE | Mask.DELETE_SELF
          | Mask.MOVE_SELF | Mask.ONLYDIR | Mask.EXCL_UNLINK)


class Fs(Protocol):
    """A blocking call on a worker thread, waited for a bounded time (TimeoutError)."""

    def __call__(self, fn: Callable[..., T], *args: Any) -> Coroutine[Any, Any, T]: ...


class Notifier:
    """The inotify-watched directories: ``start`` watches them; ``events`` and
    ``keep`` are the two tasks that the input runs; ``close`` releases the descriptor."""

    def __init__(self, watched: list[Watched], ready: ReadyQueue, recent: Recent,
                 fs: Fs) -> None:
        self.watched = watched
        self._ready = ready
        self._recent = recent
        self._fs = fs
        self._inotify: Inotify | None = None
        self._owners: dict[int, list[Watched]] = {}  # watch descriptor -> its directories
        self._watches: dict[int, tuple[Watch, str]] = {}  # watch descriptor -> its path
        self._lost: set[Watched] = set()  # directories to watch again
        self._scans: dict[tuple[int, str], bool] = {}  # (directory, path) -> take its files
        self._wake = asyncio.Event()
        self.overflows = 0

    def __repr__(self) -> str:
        return (f"<Notifier watches={len(self._watches)} lost={len(self._lost)} "
                f"scans={len(self._scans)} overflows={self.overflows}>")

    @property
    def scans(self) -> int:
        return len(self._scans)

    def start(self) -> None:
        try:
            self._inotify = Inotify(cache_size=64)
        except OSError as err:
            raise SetupError(f"watch: cannot use inotify ({err.strerror}); set "
                             "poll_interval to poll instead") from err
        for w in self.watched:
            self._watch_root(w)

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    # --- watches --------------------------------------------------------------------------

    def _watch_root(self, w: Watched) -> None:
        """Watch a configured directory (at start, or again), then scan it: at start
        for scan_existing (and a recursive one's subdirectories), later for every file
        that came while it was not watched."""
        take = not w.first_look() or w.config.scan_existing
        if not self._add_watch(w, w.root, root=True):
            self._lost.add(w)
            return
        self._lost.discard(w)
        w.back()
        if take or w.config.recursive:
            self._scan(w, w.root, take=take)

    def _add_watch(self, w: Watched, path: str, *, root: bool) -> bool:
        assert self._inotify is not None
        try:
            watch = self._inotify.add_watch(path, EVENTS if root else EVENTS | Mask.DONT_FOLLOW)
        except OSError as err:
            if root:
                w.lost(why(err), RETRY)
            else:
                logger.warning("watch %s: the subdirectory %s is not watched: %s",
                               shown(w.root), shown(path), why(err))
            return False
        self._watches.setdefault(watch.wd, (watch, path))
        owners = self._owners.setdefault(watch.wd, [])
        if w not in owners:
            owners.append(w)
        w.wds.add(watch.wd)
        if root:
            w.root_wd = watch.wd
        return True

    def _drop(self, wd: int, w: Watched) -> None:
        """``w`` no longer watches through ``wd``; unused, the watch is removed."""
        w.wds.discard(wd)
        owners = self._owners.get(wd, [])
        if w in owners:
            owners.remove(w)
        if not owners:
            self._owners.pop(wd, None)
            found = self._watches.pop(wd, None)
            if found is not None and self._inotify is not None:
                with contextlib.suppress(OSError):  # the kernel removed it already
                    self._inotify.rm_watch(found[0])

    def _lose(self, w: Watched, cause: str) -> None:
        """The configured directory is gone (or moved away): unwatch all of it, and try
        to watch it again every RETRY seconds."""
        w.lost(cause, RETRY)
        w.root_wd = None
        w.pending.clear()
        for wd in list(w.wds):
            self._drop(wd, w)
        self._lost.add(w)
        self._wake.set()

    def _scan(self, w: Watched, path: str, *, take: bool) -> None:
        key = (w.index, path)
        self._scans[key] = self._scans.get(key, False) or take
        self._wake.set()

    # --- events ---------------------------------------------------------------------------

    async def events(self) -> None:
        assert self._inotify is not None
        while True:
            event = await self._inotify.get()
            try:
                await self._on_event(event)
            except Exception:  # one odd event must not stop the watcher
                logger.exception("watch: an inotify event could not be handled")

    async def _on_event(self, event: Event) -> None:
        mask = event.mask
        if Mask.Q_OVERFLOW in mask:
            self._overflowed()
            return
        if event.watch is None:  # a watch removed meanwhile
            return
        wd = event.watch.wd
        if Mask.IGNORED in mask:  # the kernel dropped the watch: the directory is gone
            for w in list(self._owners.get(wd, ())):
                self._drop(wd, w)
                if w.root_wd == wd:
                    self._lose(w, "it was removed, moved away or unmounted")
            return
        if mask & (Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.UNMOUNT):
            for w in list(self._owners.get(wd, ())):
                self._drop(wd, w)  # a moved directory keeps its watch: removed here
                if w.root_wd == wd:
                    self._lose(w, "it was removed or moved away")
            return
        found = self._watches.get(wd)
        if event.name is None or found is None:
            return
        name = str(event.name)
        path = os.path.join(found[1], name)
        for w in list(self._owners.get(wd, ())):
            if Mask.ISDIR in mask:
                self._subdirectory(w, path, mask)
            elif not w.wanted(name):
                continue
            elif mask & (Mask.CLOSE_WRITE | Mask.MOVED_TO):
                w.pending.drop(path)
                await self._ready.put((w.index, path), ready=True)
            elif Mask.CREATE in mask:  # only a symlink is taken (to refuse it)
                await self._ready.put((w.index, path), ready=False)

    def _subdirectory(self, w: Watched, path: str, mask: Mask) -> None:
        """A subdirectory came (watched, then scanned: its files may be there already)
        or went (moved away: its watches, and theirs below, are dropped)."""
        if not w.config.recursive:
            return
        if mask & (Mask.CREATE | Mask.MOVED_TO):
            if self._add_watch(w, path, root=False):
                self._scan(w, path, take=True)
        elif Mask.MOVED_FROM in mask:
            below = path + os.sep
            for wd in list(w.wds):
                where = self._watches.get(wd)
                if wd != w.root_wd and where is not None and (
                        where[1] == path or where[1].startswith(below)):
                    self._drop(wd, w)

    def _overflowed(self) -> None:
        """The kernel dropped events: look at every watched directory again."""
        self.overflows += 1
        logger.warning("watch: the kernel's inotify queue overflowed (sysctl "
                       "fs.inotify.max_queued_events): events were lost; rescanning")
        for w in self.watched:
            if w.root_wd is not None:
                self._scan(w, w.root, take=True)

    # --- the keeper -----------------------------------------------------------------------

    async def keep(self) -> None:
        """Scans in batches, looks again at the files they found, and watches lost
        directories again: one task, so that none of it runs twice at once."""
        scan: tuple[Watched, Listing, bool] | None = None
        retried = looked = time.monotonic()
        while True:
            now = time.monotonic()
            if self._lost and now - retried >= RETRY:
                retried = now
                for w in list(self._lost):
                    self._watch_root(w)
            waiting = any(len(w.pending) for w in self.watched)
            if waiting and now - looked >= TICK:
                looked = now
                await self._look_again()
                continue
            if scan is None and self._scans:
                (index, path), take = self._scans.popitem()
                w = self.watched[index]
                scan = (w, Listing(path, w.wanted, recursive=w.config.recursive,
                                   descend=False, follow_root=path == w.root), take)
            if scan is not None and not scan[0].pending.full:
                if await self._scan_batch(*scan):
                    scan = None
                continue
            self._wake.clear()
            timeout = TICK if waiting else (RETRY if self._lost else None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _scan_batch(self, w: Watched, listing: Listing, take: bool) -> bool:
        """One batch of a scan; True when it is over.  Subdirectories are watched before
        they are listed, so that nothing written meanwhile is missed."""
        room = w.pending.limit - len(w.pending)  # a scanned file is never dropped
        try:
            files, dirs = await self._fs(listing.batch, max(1, min(512, room)))
        except TimeoutError:
            logger.warning("watch: listing %s took longer than daemon.file_timeout; the "
                           "scan is abandoned", shown(listing.root))
            return True
        except OSError as err:
            listing.close()
            if listing.root == w.root and w.root_wd is not None:
                self._lose(w, why(err))
            return True
        log_skipped(listing, w)
        for directory in dirs:
            if w.root_wd is not None and self._add_watch(w, directory, root=False):
                listing.push(directory)
        if take:
            now = time.monotonic()
            for entry in files:
                key = (w.index, entry.path)
                if key in self._ready or self._recent.get(entry.path) == entry.sig:
                    continue  # taken (or about to be) as it is now
                if w.pending.see(entry.path, entry.sig, now):
                    await self._ready.put(key, ready=True)
        return listing.done

    async def _look_again(self) -> None:
        """Files a scan found are ready once unchanged for ``settle`` seconds (unless a
        close-write or moved-to said so first)."""
        for w in self.watched:
            paths = w.pending.paths()
            if not paths:
                continue
            try:
                sigs = await self._fs(lstat_all, paths)
            except TimeoutError:
                logger.warning("watch %s: looking at its files took longer than "
                               "daemon.file_timeout", shown(w.root))
                continue
            now = time.monotonic()
            for path in paths:
                sig = sigs.get(path)
                if sig is None:
                    w.pending.drop(path)
                elif w.pending.see(path, sig, now):
                    await self._ready.put((w.index, path), ready=True)
