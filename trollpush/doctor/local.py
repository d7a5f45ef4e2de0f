"""This host's side: the journal, the input addresses, the nameservers, the data roots.

Nothing here disturbs a running daemon: an address is tried with a ``bind`` that is
closed at once (never ``listen``), and an address a running trollpush holds is a WARN,
told apart by the listening socket's inode in ``/proc/net/tcp`` and the daemon's
descriptors; the journal is tried with a scratch file beside it, never opened, and
its lock is only looked up in ``/proc/locks``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ..config import Config, JournalConfig
from .checks import Check, fail, in_thread, ms, ok, warn, why

MOUNTINFO = Path("/proc/self/mountinfo")
#: file systems whose locking and fsync SQLite cannot rely on (fuse.* as well)
REMOTE_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs",
                       "lustre", "gpfs", "afs", "sshfs", "davfs", "ncpfs", "beegfs",
                       "orangefs", "fuse", "fuseblk"})
VOLATILE_FS = frozenset({"tmpfs", "ramfs"})


async def local_checks(config: Config, *, limit: float, mountinfo: Path = MOUNTINFO
                       ) -> list[Check]:
    checks = await journal_checks(config.journal, limit=limit, mountinfo=mountinfo)
    for key, address in listen_addresses(config):
        checks.append(await bind_check(key, address, limit=limit))
    for key, host in nameservers(config):
        checks.append(await nameserver_check(key, host, limit=limit))
    for root in config.daemon.allowed_roots:
        checks.append(await directory_check("allowed_root", root, limit=limit,
                                            missing_is_ok=False))
    for w in config.watch:
        checks.append(await directory_check("watch", w.path, limit=limit,
                                            missing_is_ok=True))
    return checks


# --- the journal --------------------------------------------------------------------------

async def journal_checks(journal: JournalConfig, *, limit: float, mountinfo: Path
                         ) -> list[Check]:
    if journal.path is None:
        return [warn("journal", "memory", "journal.path: memory: accepted requests are lost "
                     "if the daemon stops", "set journal.path to a file on a local disk")]
    try:
        return await in_thread(_journal_checks, journal.path, mountinfo, limit=limit)
    except TimeoutError:
        return [fail("journal", journal.path, f"no answer from its file system within "
                     f"{limit:g} s: a hung mount?", "put journal.path on a local disk")]


def _journal_checks(path: str, mountinfo: Path) -> list[Check]:
    file = Path(path)
    folder = file.parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        if existing == folder:
            fd, scratch = tempfile.mkstemp(prefix=".trollpush-doctor-", dir=folder)
            os.close(fd)
            os.unlink(scratch)
            if file.exists() and not os.access(file, os.R_OK | os.W_OK):
                raise PermissionError(errno.EACCES, "the file is not readable and writable")
            state = "writable" + (f", in use by pid {pid} (a daemon running)"
                                  if (pid := _lock_holder(Path(f"{path}.lock"))) else "")
        elif existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
            state = f"{folder} will be made at start"
        else:
            raise PermissionError(errno.EACCES, f"{folder} is missing and {existing} is not "
                                  "a writable directory")
    except OSError as err:
        return [fail("journal", path, f"cannot write: {why(err)}",
                     f"make {folder} a directory the daemon's user can write "
                     f"(mkdir -p {folder}; chown USER {folder})")]
    return [ok("journal", path, state), _file_system(path, existing, mountinfo)]


def _file_system(path: str, existing: Path, mountinfo: Path) -> Check:
    found = mount_of(os.path.realpath(existing), mountinfo)
    if found is None:
        return warn("journal_fs", path, f"file system unknown ({mountinfo} unreadable)",
                    "make sure journal.path is on a local disk")
    point, kind = found
    if kind in REMOTE_FS or kind.startswith("fuse."):
        return warn("journal_fs", path, f"on {kind} ({point}), a network or FUSE file "
                    "system: SQLite's locks and fsync are not reliable there",
                    "put journal.path on a local disk")
    if kind in VOLATILE_FS:
        return warn("journal_fs", path, f"on {kind} ({point}): lost at reboot",
                    "put journal.path on a persistent local disk")
    return ok("journal_fs", path, f"on {kind} ({point})")


def mount_of(path: str, mountinfo: Path) -> tuple[str, str] | None:
    """The mount point holding ``path`` and its file system type, from a mountinfo."""
    try:
        lines = mountinfo.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    best: tuple[str, str] | None = None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, kind = left.split(), right.split()
        if len(fields) < 5 or not kind:
            continue
        point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):  # later mounts cover
            best = (point, kind[0])
    return best


def _lock_holder(lock: Path) -> int | None:
    """The pid holding a lock on ``lock`` (from /proc/locks: nothing is locked here)."""
    try:
        inode = lock.stat().st_ino
        table = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in table:
        fields = line.split()
        if len(fields) > 5 and fields[5].rsplit(":", 1)[-1] == str(inode) and \
                fields[4].isdigit():
            return int(fields[4])
    return None


# --- input addresses ----------------------------------------------------------------------

def listen_addresses(config: Config) -> Iterator[tuple[str, str]]:
    """(config key, address) of every socket the daemon binds, as ``tcp://`` or ``ipc://``."""
    if config.requests:
        yield "requests.address", config.requests.address
    if config.s3daemon:
        yield "s3daemon.address", f"tcp://{config.s3daemon.address}"
    if config.http:
        yield "http.address", f"tcp://{config.http.address}"
    if config.publish:
        s = config.publish.settings
        if s.get("nameservers") is False and s.get("address"):
            yield "publish.address", str(s["address"])
        elif s.get("port"):
            yield "publish.port", f"tcp://*:{s['port']}"


async def bind_check(key: str, address: str, *, limit: float) -> Check:
    if address.startswith("ipc://"):
        return _ipc_check(key, address[len("ipc://"):])
    if not address.startswith("tcp://"):
        return ok("bind", address, "not a network address (nothing to bind)")
    host, _, port_text = address[len("tcp://"):].rpartition(":")
    host = host.strip("[]")
    if not port_text.isdigit() or int(port_text) == 0:
        return ok("bind", address, "a port the system chooses")
    port = int(port_text)
    try:
        infos = await in_thread(socket.getaddrinfo, None if host in ("*", "") else host, port,
                                0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE, limit=limit)
        family, kind, proto, _, where = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemon
            sock.bind(where)
    except TimeoutError:
        return fail("bind", address, f"{host}: no DNS answer within {limit:g} s",
                    f"use an IP address in {key}")
    except OSError as err:
        return _bind_failed(key, address, port, err)
    return ok("bind", address, f"bindable ({key})")


def _bind_failed(key: str, address: str, port: int, err: OSError) -> Check:
    if err.errno == errno.EADDRINUSE:
        return _in_use(key, address, port)
    if err.errno == errno.EADDRNOTAVAIL:
        return fail("bind", address, "not an address of this host",
                    f"use an address of this host in {key} (or 0.0.0.0 for all)")
    if err.errno == errno.EACCES:
        return fail("bind", address, "permission denied (a port below 1024?)",
                    f"use a port >= 1024 in {key}, or give the daemon "
                    "CAP_NET_BIND_SERVICE (AmbientCapabilities= in its unit)")
    return fail("bind", address, why(err), f"correct {key}")


def _in_use(key: str, address: str, port: int) -> Check:
    """WARN when a running trollpush holds it, or might (its descriptors unreadable)."""
    inodes = _listening_inodes(port)
    unsure: list[int] = []
    for pid in trollpush_pids():
        try:
            held = any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes
                       for fd in os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            unsure.append(pid)
            continue
        if held:
            return warn("bind", address, f"in use by trollpush (pid {pid}): a daemon running?",
                        f"nothing to do if it runs this config; else give {key} a free port")
    if unsure:
        return warn("bind", address, f"in use (a daemon running? trollpush runs as pid "
                    f"{', '.join(map(str, unsure))})",
                    f"nothing to do if it runs this config; else give {key} a free port")
    return fail("bind", address, "in use by another program",
                f"give {key} a free port, or stop what holds it (ss -ltnp 'sport = :{port}')")


def _listening_inodes(port: int) -> set[str]:
    """``socket:[INODE]`` of every socket listening on ``port`` (this network namespace)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                out.add(f"socket:[{f[9]}]")
    return out


def trollpush_pids() -> list[int]:
    """Other processes running trollpush (``trollpush ...``, ``python -m trollpush ...``)."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = Path(entry.path, "cmdline").read_bytes().split(b"\0")[:3]
        except OSError:
            continue
        if any(os.path.basename(a) == b"trollpush" for a in args):
            out.append(int(entry.name))
    return out


def _ipc_check(key: str, path: str) -> Check:
    address = f"ipc://{path}"
    if path.startswith("@"):
        return ok("bind", address, "an abstract socket (not checked)")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        folder = os.path.dirname(path) or "."
        if os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK):
            return ok("bind", address, "bindable")
        return fail("bind", address, f"{folder} is not a writable directory",
                    f"make {folder} writable by the daemon's user, or change {key}")
    except OSError as err:
        return fail("bind", address, why(err), f"correct {key}")
    if not stat.S_ISSOCK(mode):
        return fail("bind", address, "a file that is not a socket is in the way",
                    f"remove it, or change {key}")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(path)
        except OSError:
            return ok("bind", address, "a stale socket file (replaced at bind)")
    if trollpush_pids():
        return warn("bind", address, "in use (a daemon running?)",
                    f"nothing to do if it runs this config; else change {key}")
    return fail("bind", address, "in use by another program", f"change {key}")


# --- nameservers and directories ----------------------------------------------------------

def nameservers(config: Config) -> Iterator[tuple[str, str]]:
    if config.subscribe and config.subscribe.settings.get("nameserver") is not False:
        yield "subscribe.nameserver", str(config.subscribe.settings.get("nameserver")
                                          or "localhost")
    hosts = config.publish.settings.get("nameservers") if config.publish else None
    if isinstance(hosts, list | tuple):
        for host in hosts:
            yield "publish.nameservers", str(host)


async def nameserver_check(key: str, host: str, *, limit: float) -> Check:
    """A TCP connect to the port of the nameserver that the daemon uses: a subscriber
    asks on its request port (5557 by default), a publisher registers its address on
    the address port (21200 by default; the nameserver listens there with
    ``--no-multicast``)."""
    from posttroll.bbmcast import get_configured_broadcast_port
    from posttroll.ns import get_configured_unsecure_zmq_nameserver_port

    if "://" in host:
        host, _, port_text = host.split("://", 1)[1].rpartition(":")
        port = int(port_text) if port_text.isdigit() else 0
    elif key.startswith("publish"):
        port = int(get_configured_broadcast_port())
    else:
        port = get_configured_unsecure_zmq_nameserver_port()
    subject = f"{host}:{port}"
    fix = (f"start posttroll's nameserver on {host}"
           + (" with --no-multicast" if key.startswith("publish") else "") + f", or correct {key}"
           + (" (or nameserver: false with addresses)" if key.startswith("subscribe") else ""))
    start = time.monotonic()
    try:
        infos = await in_thread(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM,
                                limit=limit)
        async with asyncio.timeout(max(0.1, limit - (time.monotonic() - start))):
            _, writer = await asyncio.open_connection(str(infos[0][4][0]), port)
    except TimeoutError:
        return fail("nameserver", subject, f"no answer within {limit:g} s ({key})", fix)
    except OSError as err:
        return fail("nameserver", subject, f"{why(err)} ({key})", fix)
    writer.close()
    try:
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
    except (TimeoutError, OSError):
        pass
    return ok("nameserver", subject, f"reachable in {ms(time.monotonic() - start)} ({key})")


async def directory_check(check: str, path: str, *, limit: float, missing_is_ok: bool
                          ) -> Check:
    try:
        problem = await in_thread(_unreadable, path, limit=limit)
    except TimeoutError:
        return fail(check, path, f"no answer within {limit:g} s: a hung mount?",
                    "repair the mount (the daemon's file checks would time out too)")
    if problem is None:
        return ok(check, path, "a readable directory")
    if problem == "missing" and missing_is_ok:
        return warn(check, path, "missing (watched again as soon as it appears)",
                    f"mkdir -p {path}, or correct the watch path")
    key = "daemon.allowed_roots" if check == "allowed_root" else "watch[].path"
    return fail(check, path, problem, f"make it a directory the daemon's user can read, "
                f"or correct {key}")


def _unreadable(path: str) -> str | None:
    if not os.path.exists(path):
        return "missing"
    if not os.path.isdir(path):
        return "not a directory"
    if not os.access(path, os.R_OK | os.X_OK):
        return "not readable by this user"
    return None
