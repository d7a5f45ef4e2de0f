"""The directory watcher's parts that hold state, each bounded.

``Watched`` is one configured directory and what the watcher knows of it; ``Listing``
walks a directory tree in batches on a worker thread, never through a symlink;
``Pending`` holds files seen but not ready yet (the settle rule); ``ReadyQueue`` holds
the paths ready to be taken, each once, and makes its feeders wait when full; ``Recent``
remembers what was taken lately, so that a rescan does not take it again.
"""

from __future__ import annotations

import asyncio
import errno
import fnmatch
import logging
import os
import re
import stat
from collections import OrderedDict
from collections.abc import Callable, Container
from typing import NamedTuple

import trollsift

from ..config import WatchConfig

logger = logging.getLogger("trollpush.receive")  # the name users' log configs know

#: (size, mtime_ns, inode), as ``SourceFile.stat``
Sig = tuple[int, int, int]
PENDING = 4096  # files per directory seen but not ready yet (polled or scanned)


def matcher(pattern: str | None) -> Callable[[str], bool]:
    """Whether a base name is wanted: a trollsift pattern (it has a ``{field}``), a glob,
    or (None) every name."""
    if pattern is None:
        return lambda name: True
    if "{" in pattern:
        def parses(name: str) -> bool:
            try:
                return trollsift.parser.validate(pattern, name)
            except Exception:  # a name trollsift cannot convert is simply not wanted
                return False
        return parses
    glob = re.compile(fnmatch.translate(pattern))
    return lambda name: glob.match(name) is not None


def shown(path: str) -> str:
    """A path as text that can always be written: undecodable bytes as ``\\xNN``
    (control characters are escaped by the log record factory, ``logsafe``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def sig_of(st: os.stat_result) -> Sig:
    return st.st_size, st.st_mtime_ns, st.st_ino


def lstat_all(paths: list[str]) -> dict[str, Sig]:
    """The signatures of those of ``paths`` that still exist (a worker thread's call)."""
    out: dict[str, Sig] = {}
    for path in paths:
        try:
            out[path] = sig_of(os.lstat(path))
        except (OSError, ValueError):
            continue
    return out


class Entry(NamedTuple):
    """A wanted name found by a listing: anything but a directory (a symlink too)."""

    path: str
    sig: Sig


class Listing:
    """One walk of a directory (and, ``recursive``, of its subdirectories) in batches.

    ``batch()`` runs on a worker thread, one at a time.  A subdirectory is walked only
    once it is ``push``-ed (the caller may watch it first), or at once with ``descend``.
    Symlinks are never followed: each directory is opened with O_NOFOLLOW (but ``root``
    when ``follow_root``: the configured directory may be a symlink), so one swapped for
    a symlink meanwhile is not listed.  A root that cannot be listed raises OSError; a
    subdirectory that cannot be is noted in ``skipped`` and left out.
    """

    def __init__(self, root: str, wanted: Callable[[str], bool], *, recursive: bool,
                 descend: bool, follow_root: bool = False) -> None:
        self.root = root
        self._wanted = wanted
        self._recursive = recursive
        self._descend = descend
        self._follow_root = follow_root
        self._todo = [root]
        self._dir = root
        self._fd: int | None = None
        self._it: os._ScandirIterator[str] | None = None
        self.skipped: list[tuple[str, OSError]] = []

    @property
    def done(self) -> bool:
        return self._it is None and not self._todo

    def push(self, directory: str) -> None:
        self._todo.append(directory)

    def close(self) -> None:
        self.close_current()
        self._todo.clear()

    def _open(self, directory: str) -> None:
        nofollow = 0 if directory == self.root and self._follow_root else os.O_NOFOLLOW
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | nofollow)
        try:
            self._it = os.scandir(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._dir = fd, directory

    def _next(self) -> os.DirEntry[str] | None:
        while self._it is None:
            if not self._todo:
                return None
            directory = self._todo.pop()
            try:
                self._open(directory)
            except OSError as err:
                if directory == self.root:
                    raise
                self.skipped.append((directory, err))
        entry = next(self._it, None)
        if entry is None:
            self.close_current()
        return entry

    def close_current(self) -> None:
        if self._it is not None:
            self._it.close()
            self._it = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def batch(self, size: int = 512) -> tuple[list[Entry], list[str]]:
        """Up to ``size`` wanted files and subdirectories found (the latter to push)."""
        files: list[Entry] = []
        dirs: list[str] = []
        while len(files) + len(dirs) < size and not self.done:
            entry = self._next()
            if entry is None:
                continue
            try:
                path = os.path.join(self._dir, entry.name)  # (listed by descriptor)
                if entry.is_dir(follow_symlinks=False):
                    if self._recursive:
                        dirs.append(path)
                        if self._descend:
                            self._todo.append(path)
                elif self._wanted(entry.name):
                    files.append(Entry(path, sig_of(entry.stat(follow_symlinks=False))))
            except OSError:  # gone meanwhile
                continue
        return files, dirs


def is_symlink(path: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except (OSError, ValueError):
        return False


class Pending:
    """Files seen but not ready yet: one is ready when a later look finds it unchanged
    (size, mtime, inode) for at least ``settle`` seconds.  At most ``limit`` are held: a
    file seen while it is full is seen again at the next look."""

    def __init__(self, settle: float, limit: int) -> None:
        self.settle = settle
        self.limit = limit
        self._seen: dict[str, tuple[Sig, float]] = {}

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def full(self) -> bool:
        return len(self._seen) >= self.limit

    def see(self, path: str, sig: Sig, now: float) -> bool:
        """Note one look at ``path``; True: it is ready (and no longer held)."""
        before = self._seen.get(path)
        if before is None or before[0] != sig:
            if before is not None or not self.full:
                self._seen[path] = (sig, now)
            return False
        if now - before[1] < self.settle:
            return False
        del self._seen[path]
        return True

    def drop(self, path: str) -> None:
        self._seen.pop(path, None)

    def paths(self) -> list[str]:
        return list(self._seen)

    def keep_only(self, present: Container[str]) -> None:
        for path in [p for p in self._seen if p not in present]:
            del self._seen[path]

    def clear(self) -> None:
        self._seen.clear()


class Recent:
    """The signatures of the last ``limit`` files taken (least recent dropped first)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._sigs: OrderedDict[str, Sig] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sigs)

    def add(self, path: str, sig: Sig) -> None:
        self._sigs[path] = sig
        self._sigs.move_to_end(path)
        while len(self._sigs) > self.limit:
            self._sigs.popitem(last=False)

    def get(self, path: str) -> Sig | None:
        return self._sigs.get(path)


#: a path to take, for the watched directory with this index; ``ready`` False: only
#: created (taken only if it is a symlink, to refuse it)
Key = tuple[int, str]


class ReadyQueue:
    """Paths ready to be taken, in order, each at most once (a repeat while it waits is
    merged into it); ``put`` waits while ``limit`` are waiting."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: dict[Key, bool] = {}
        self._cond = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Key) -> bool:
        return key in self._items

    async def put(self, key: Key, *, ready: bool) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: key in self._items
                                      or len(self._items) < self.limit)
            self._items[key] = self._items.get(key, False) or ready
            self._cond.notify_all()

    async def get(self) -> tuple[Key, bool]:
        async with self._cond:
            await self._cond.wait_for(lambda: bool(self._items))
            key = next(iter(self._items))
            ready = self._items.pop(key)
            self._cond.notify_all()
            return key, ready

    def drain(self) -> list[tuple[Key, bool]]:
        """Everything still waiting (at stop: no waiter is left to notify)."""
        items, self._items = list(self._items.items()), {}
        return items


def why(err: OSError) -> str:
    """What an OSError means for a watched directory, in words."""
    if err.errno == errno.ENOSPC:
        return "the inotify watch limit is reached (sysctl fs.inotify.max_user_watches)"
    if err.errno == errno.ENOENT:
        return "it does not exist"
    if err.errno == errno.ENOTDIR:
        return "it is not a directory"
    return f"it cannot be watched ({err.strerror or err})"


def log_skipped(listing: Listing, w: Watched) -> None:
    """Say which subdirectories a listing could not read (each once, until it can be
    read again: a poll every second must not log it every second)."""
    for directory, err in listing.skipped:
        if directory not in w.unreadable:
            logger.warning("watch %s: the subdirectory %s cannot be read (%s); left out",
                           shown(w.root), shown(directory), err.strerror or err)
        w.unreadable.add(directory)
    if listing.done and listing.root == w.root:  # a whole walk: forget those read again
        w.unreadable.intersection_update(d for d, _ in listing.skipped)
    listing.skipped.clear()


class Watched:
    """One configured directory, and what the watcher knows of it."""

    def __init__(self, index: int, config: WatchConfig) -> None:
        self.index = index
        self.config = config
        self.root = config.path
        self.wanted = matcher(config.pattern)
        self.pending = Pending(config.settle, PENDING)
        #: polled: the files taken (or there at start without scan_existing), as listed
        self.known: dict[str, Sig] = {}
        self.root_wd: int | None = None
        self.wds: set[int] = set()  # the root's watch and its subdirectories'
        self.looked = False  # the first look at start is over (scan_existing is for it)
        self.problem: str | None = None
        self.unreadable: set[str] = set()  # subdirectories said to be unreadable

    def __repr__(self) -> str:
        return f"<Watched {shown(self.root)} pending={len(self.pending)} problem={self.problem}>"

    def lost(self, cause: str, every: float) -> None:
        """Say (once per cause) that the directory cannot be watched now."""
        if cause != self.problem:
            logger.warning("watch %s: %s; trying again every %g s", shown(self.root), cause,
                           every)
        self.problem = cause

    def back(self) -> None:
        if self.problem is not None:
            logger.info("watch %s: watching again", shown(self.root))
        self.problem = None

    def first_look(self) -> bool:
        """Whether this is the first look, at start (every later one is not)."""
        first, self.looked = not self.looked, True
        return first
