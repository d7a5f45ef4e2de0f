"""Hot reload: SIGHUP (or, with ``daemon.watch_config``, a change of the file) re-reads
the config; a valid one is applied between requests, an invalid one refused.

``diff`` compares two configs (pure): which targets, endpoints and inputs were added,
removed or changed, which other keys changed, and which need a restart.  A
:class:`Reloader` reads the file, diffs, and applies the change through the service's
seams, in an order that keeps a failure harmless:

1. the pools of new and changed endpoints are opened (one that cannot start refuses
   the whole reload: nothing has changed yet);
2. at once (no await: between two requests) the engine takes the new endpoints and the
   service the new config: routing, limits, what completions say of each endpoint, an
   engine view.  Requests already running keep the routing and pools they started with;
   requests accepted from now on (and those still queued) run under the new config;
3. inputs whose settings changed are rebound: the old one stopped (what it took but
   never handed over is queued as it was, nothing is lost), then the new one started;
   an added input is started, a removed one stopped.  Unchanged inputs keep their
   sockets: a pub-sub subscription loses nothing;
4. pools replaced or removed are closed once the requests running at the swap are done.

What needs a restart (:data:`RESTART`: the journal, the publisher, the queue and
concurrency bounds, the event loop) is kept as it is: the rest is applied, and a
warning names each such key.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from . import stats
from .config import Config, JetStreamConfig, load_config
from .config.model import NO_OBJECT
from .errors import ConfigError, ConfigProblem

if TYPE_CHECKING:
    from .service import Service
    from .transfer.policy import Endpoint

logger = logging.getLogger(__name__)

#: keys a reload cannot change: they keep their value until a restart (with a warning).
#: The journal is open (moving it would split its records), the publisher is bound for
#: the process's life (posttroll shares one authenticator per process), the queue and
#: the concurrency bound are held by the running dispatcher, and the loop runs.  The
#: limits every input checks requests with stay too: applying them would rebind every
#: input, and a rebound REQ/REP or HTTP input loses the replies of requests in flight;
#: so does ``jetstream.bridge``, which wraps every input as it is built.
RESTART = ("journal.path", "journal.keep_landed_days", "publish", "daemon.queue_size",
           "daemon.max_in_flight", "daemon.event_loop", "daemon.max_request_bytes",
           "daemon.allowed_roots", "daemon.file_timeout", "jetstream.bridge")
#: how often the watched config file is looked at (seconds)
WATCH_INTERVAL = 1.0


#: each input's settings by its name: the input exists when its section does, and is
#: rebound when its section changes
INPUTS: Mapping[str, Callable[[Config], object]] = {
    "requests": lambda c: c.requests,
    "s3daemon": lambda c: c.s3daemon,
    "subscribe": lambda c: c.subscribe,
    "http": lambda c: c.http,
    "watch": lambda c: c.watch or None,
    "jetstream": lambda c: c.jetstream,
}


@dataclass(frozen=True)
class Part:
    """Names added, removed and changed in one section."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def counts(self, *, every: bool = False) -> str:
        """``+1 -0 ~2`` (``every``), or only the parts that are not zero."""
        parts = (("+", self.added), ("-", self.removed), ("~", self.changed))
        return " ".join(f"{sign}{len(names)}" for sign, names in parts if every or names)

    def names(self, what: str) -> list[str]:
        return [f"{verb} {what} {', '.join(names)}" for verb, names in
                (("added", self.added), ("removed", self.removed),
                 ("changed", self.changed)) if names]


@dataclass(frozen=True)
class Change:
    """What a reload changes; ``config`` is what runs after it: the new config, with
    the keys in ``restart`` as they were."""

    config: Config
    targets: Part
    endpoints: Part
    inputs: Part
    settings: tuple[str, ...]  # other keys that changed and apply (daemon.max_age)
    restart: tuple[str, ...]  # keys that changed but keep their value until a restart

    @property
    def empty(self) -> bool:
        """Nothing that a reload applies changed (``restart`` keys may have)."""
        return not (self.targets or self.endpoints or self.inputs or self.settings)

    def summary(self) -> str:
        """``targets +1 -0 ~2, endpoints ~1, inputs ~1`` and what they are."""
        out = [f"targets {self.targets.counts(every=True)}"]
        for what, part in (("endpoints", self.endpoints), ("inputs", self.inputs)):
            if part:
                out.append(f"{what} {part.counts()}")
        if self.settings:
            out.append(f"settings ~{len(self.settings)}")
        names = [*self.targets.names("target"), *self.endpoints.names("endpoint"),
                 *self.inputs.names("input"), *([f"changed {', '.join(self.settings)}"]
                                               if self.settings else [])]
        return ", ".join(out) + (f" ({'; '.join(names)})" if names else " (no change)")


def _part(old: Mapping[str, object], new: Mapping[str, object]) -> Part:
    return Part(tuple(n for n in new if n not in old), tuple(n for n in old if n not in new),
                tuple(n for n in new if n in old and new[n] != old[n]))


def _pools(config: Config) -> dict[str, object]:
    """Each endpoint as its pool sees it: all but its object options."""
    return {name: replace(ep, object=NO_OBJECT) for name, ep in config.endpoints.items()}


def _inputs(config: Config) -> dict[str, object]:
    return {name: section for name, read in INPUTS.items()
            if (section := read(config)) is not None}


def diff(old: Config, new: Config) -> Change:
    """What changes from ``old`` to ``new`` (pure: nothing is read or started)."""
    restart: list[str] = []
    journal = new.journal
    for f in fields(journal):
        if getattr(old.journal, f.name) != getattr(new.journal, f.name):
            restart.append(f"journal.{f.name}")
    if old.publish != new.publish:
        restart.append("publish")
    kept = {name.split(".", 1)[1] for name in RESTART if name.startswith("daemon.")}
    daemon = replace(new.daemon, **{k: getattr(old.daemon, k) for k in kept})
    restart += [f"daemon.{k}" for k in sorted(kept)
                if getattr(old.daemon, k) != getattr(new.daemon, k)]
    settings = tuple(f"daemon.{f.name}" for f in fields(daemon)
                     if getattr(old.daemon, f.name) != getattr(daemon, f.name))
    # an endpoint's object options are read by routing, per request: a change of them
    # alone is a setting that applies at the swap, not a reason for a new pool
    settings += tuple(f"endpoints.{name}.object" for name, ep in new.endpoints.items()
                      if name in old.endpoints and old.endpoints[name].object != ep.object)
    if _bridging(old) != _bridging(new):
        restart.append("jetstream.bridge")
    config = replace(new, journal=old.journal, publish=old.publish, daemon=daemon,
                     jetstream=_jetstream(old, new))
    return Change(
        config=config,
        targets=_part({t.name: t for t in old.targets}, {t.name: t for t in config.targets}),
        endpoints=_part(_pools(old), _pools(config)),
        inputs=_part(_inputs(old), _inputs(config)),
        settings=settings, restart=tuple(restart))


def _bridging(config: Config) -> bool:
    return config.jetstream is not None and config.jetstream.bridge


def _jetstream(old: Config, new: Config) -> JetStreamConfig | None:
    """The new ``jetstream`` section with the running ``bridge``; while it bridges, a
    removed section stays (the bridged inputs publish through its input)."""
    if new.jetstream is None:
        return old.jetstream if _bridging(old) else None
    return replace(new.jetstream, bridge=_bridging(old))


class Reloader:
    """Reloads the service's config from its file: on request (SIGHUP, ``reload``) and,
    with ``daemon.watch_config``, when the file changes.  One reload at a time; a
    request during one is done after it (requests meanwhile count once); none once the
    daemon stops."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._lock = asyncio.Lock()
        self._pending: asyncio.Task[None] | None = None
        self._again: str | None = None  # asked for while one runs: why
        self._closed = False
        self._watcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def path(self) -> str:
        return self.service.config.source

    def start(self) -> None:
        """Watch the file if the config asks to (on the service's loop)."""
        self._watch(self.service.config.daemon.watch_config)

    def request(self, why: str) -> None:
        """Reload soon (a signal handler, on the loop); one waiting is enough.  Before
        the daemon is ready it is ignored: the file is being read then anyway."""
        if self._closed:
            logger.info("%s while the daemon stops: ignored", why)
            return
        if not self.service.ready.is_set():
            logger.info("%s before the daemon is ready: ignored", why)
            return
        if self._pending is None or self._pending.done():
            self._pending = self._spawn(self._requested(why))
        else:  # the running one may have read the file already: one more after it
            self._again = why

    async def _requested(self, why: str | None) -> None:
        while why is not None and not self._closed:
            await self.reload(why)
            why, self._again = self._again, None

    async def close(self) -> None:
        """Stop watching, cancel reloads not done, close pools waiting to retire; no
        reload starts after this (the pools and inputs are being closed)."""
        self._closed = True
        self._watch(False)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def reload(self, why: str = "requested") -> bool:
        """Read the file and apply it; whether it was (False: refused, old one kept)."""
        async with self._lock:
            if self._closed:
                return False
            self.service.tell("reloading")
            try:
                return await self._reload(why)
            finally:
                self.service.tell("reloaded")

    async def _reload(self, why: str) -> bool:
        try:
            new = await asyncio.to_thread(_read, self.path)
        except ConfigError as err:
            return self._refused(why, err)
        change = diff(self.service.config, new)
        warm = change.config.warm_buckets()
        try:  # before anything changes: a pool that cannot start refuses the reload
            opened = await self.service.transfer.endpoints.open(
                change.config.endpoints,
                (*change.endpoints.added, *change.endpoints.changed), warm)
        except Exception as err:
            return self._refused(why, f"an endpoint's pool cannot start: {err}")
        try:
            await self._apply(change, opened, warm)
        except Exception as err:  # never out of a task nobody awaits: say so, count it
            logger.exception("config reload (%s) failed part way", why)
            return self._refused(why, f"applying it failed part way ({err}); see above")
        for warning in change.config.warnings:
            logger.warning("config: %s", warning)
        for key in change.restart:
            logger.warning("config reload: %s changed, but needs a restart to apply "
                           "(it keeps its value until then)", key)
        logger.info("config reloaded (%s): %s", why, change.summary())
        self.service.stats.inc(stats.RELOADS, outcome="applied")
        return True


    def _refused(self, why: str, err: Exception | str) -> bool:
        logger.error("config reload (%s) refused, the running config is kept: %s", why, err)
        self.service.stats.inc(stats.RELOADS, outcome="refused")
        return False

    async def _apply(self, change: Change, opened: Mapping[str, Endpoint],
                     warm: Mapping[str, str]) -> None:
        service, config = self.service, change.config
        old = service.config
        # from here to the swap, no await: between two requests
        retired = service.transfer.reconfigure(config.endpoints, opened, warm_buckets=warm,
                                     roots=config.daemon.allowed_roots,
                                     file_timeout=config.daemon.file_timeout)
        running = service.swap(config)
        if retired:
            self._spawn(_retire(service, running, retired))
        inputs = change.inputs
        await self._rebind((*inputs.removed, *inputs.changed, *inputs.added), old, config)
        self._watch(config.daemon.watch_config)

    async def _rebind(self, names: Iterable[str], old: Config, config: Config) -> None:
        """Stop the inputs ``names`` and start those ``config`` has under these names;
        one that cannot start is started again with its old settings."""
        names = set(names)
        if not names:
            return
        service = self.service
        for each in [i for i in service.inputs if i.name in names]:
            await each.stop()
            await service.requeue(each.undelivered())
            await each.close()
            service.inputs.remove(each)
            logger.info("input %s stopped (config reload)", each.name)
        for each in await service.build_inputs(config, names):
            try:
                await each.start()
            except Exception as err:
                await each.close()
                logger.error("config reload: the %s input cannot start (%s); its previous "
                             "settings stay", each.name, err)
                await self._restore(each.name, old)
                continue
            service.add_input(each)
            logger.info("input %s started (config reload): %s", each.name, each.describe())

    async def _restore(self, name: str, old: Config) -> None:
        for each in await self.service.build_inputs(old, {name}):
            try:
                await each.start()
            except Exception as err:
                self.service.fatal(f"the {name} input (restarted after a failed reload)", err)
                return
            self.service.add_input(each)

    # --- the file ------------------------------------------------------------------------

    def _watch(self, on: bool) -> None:
        if on and self._watcher is None and not self._closed:
            # the file as it is now, read here and not in the task: a change made
            # before the task first runs is a change, not the starting point
            self._watcher = self._spawn(self._watch_file(signature(self.path)))
            logger.info("watching %s for changes (daemon.watch_config)", self.path)
        elif not on and self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    async def _watch_file(self, seen: tuple[int, int, int] | None) -> None:
        """Look at the file every second; reload when it changed and then stayed the
        same for one more look (an editor's write in steps, a rename in progress)."""
        waiting: object = seen
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            now = await asyncio.to_thread(signature, self.path)
            if now == seen:
                waiting = seen
                continue
            if now != waiting or now is None:  # changed since the last look: wait
                waiting = now
                continue
            seen = now
            await self.reload("the file changed")

    def _spawn[T](self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(work, name="reload")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _read(path: str) -> Config:
    """The config in the file; a FIFO (say) is refused, it would hold a thread for ever."""
    if not os.path.isfile(path):
        raise ConfigError([ConfigProblem("<file>", path, "a regular file to read again")],
                          path)
    return load_config(path)


def signature(path: str) -> tuple[int, int, int] | None:
    """What tells a changed file (mtime_ns, size, inode); None while it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


async def _retire(service: Service, running: set[asyncio.Task[None]],
                  retired: list[Endpoint]) -> None:
    """Close replaced pools once the requests that were running at the swap are done."""
    if running:
        await asyncio.wait(running)
    try:
        await service.transfer.endpoints.retire(retired)
    except Exception:
        logger.exception("closing the pools a reload replaced failed")


__all__ = ["INPUTS", "RESTART", "Change", "Part", "Reloader", "diff", "signature"]
