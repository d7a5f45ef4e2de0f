"""An emulated long-haul link: two network namespaces joined by TUN devices and a relay.

``tc netem`` is not available on every kernel (it is missing on the machine these
benchmarks were written on), so the link is built in user space:

    namespace A (clients)                                     namespace B (S3 servers)
    198.18.0.1 on tpbA<n>  <--- TUN fd ---  relay  --- TUN fd --->  198.18.0.2 on tpbB<n>

The relay process owns both TUN file descriptors. Every IP packet read from one side is
queued behind the packets before it at the link rate (a serialisation clock), dropped if
that queue already holds more than ``queue_ms`` of link time, and written to the other side
``delay`` later. Both directions are shaped the same way, so RTT = 2 x one-way delay.

Needs root (namespaces, TUN). Only addresses from 198.18.0.0/15 (the benchmarking range)
are used, and only inside the two namespaces, which have no other interface and no
default route. Everything is removed again by :meth:`WanLink.stop` (also called from an
``atexit`` hook); the relay stops by itself when its parent dies or after ``max_seconds``.

Subcommands (``python -m benchmarks.wan ...``) are the pieces that run inside the
namespaces: ``relay``, ``sink`` (UDP echo + TCP discard server) and ``probe`` (RTT and
throughput check).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import fcntl
import json
import os
import re
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLIENT_IP = "198.18.0.1"
SERVER_IP = "198.18.0.2"
PREFIX = 24
NS_PREFIX = "trollpush-bench-"

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
PR_SET_PDEATHSIG = 1


# --- checks ------------------------------------------------------------------------------


def wan_unavailable() -> str | None:
    """Why the emulated link cannot be built here, or None if it can."""
    if os.geteuid() != 0:
        return "not root (network namespaces and TUN devices need root)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    if subprocess.run(["which", "ip"], capture_output=True).returncode != 0:
        return "the `ip` command (iproute2) is missing"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=20)


def _ns_exec(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *args], capture_output=True, text=True,
                          check=True, timeout=20)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def other_runs() -> set[int]:
    """PIDs of other live benchmark runs on this machine (seen by their namespaces)."""
    out = _ip("netns", "list", check=False).stdout if wan_unavailable() is None else ""
    pids = set()
    for line in out.splitlines():
        m = re.fullmatch(rf"{NS_PREFIX}(\d+)-[ab]", line.split()[0] if line.split() else "")
        if m and int(m.group(1)) != os.getpid() and _pid_alive(int(m.group(1))):
            pids.add(int(m.group(1)))
    return pids


def remove_stale_namespaces() -> list[str]:
    """Delete namespaces left by an earlier run of this module whose process is gone."""
    out = _ip("netns", "list", check=False).stdout
    removed = []
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{NS_PREFIX}(\d+)-[ab]", name)
        if m and not _pid_alive(int(m.group(1))):
            _ip("netns", "del", name, check=False)
            removed.append(name)
    return removed


# --- the link as seen by the orchestrator -------------------------------------------------


@dataclass
class WanLink:
    """Two namespaces and the relay between them; ``start()`` / ``stop()``."""

    rtt_ms: float = 200.0
    rate_mbit: float = 100.0
    queue_ms: float = 100.0
    mtu: int = 1500
    max_seconds: float = 3600.0
    client_ns: str = field(init=False)
    server_ns: str = field(init=False)
    _relay: subprocess.Popen[str] | None = field(default=None, init=False, repr=False)
    _made: list[str] = field(default_factory=list, init=False, repr=False)
    stats_path: Path | None = None

    def __post_init__(self) -> None:
        tag = os.getpid()
        self.client_ns = f"{NS_PREFIX}{tag}-a"
        self.server_ns = f"{NS_PREFIX}{tag}-b"
        self._dev_a = f"tpbA{tag % 100000}"
        self._dev_b = f"tpbB{tag % 100000}"

    @property
    def client_ip(self) -> str:
        return CLIENT_IP

    @property
    def server_ip(self) -> str:
        return SERVER_IP

    def describe(self) -> str:
        return (f"{self.rtt_ms:g} ms RTT, {self.rate_mbit:g} Mbit/s each way, queue "
                f"{self.queue_ms:g} ms, MTU {self.mtu}")

    def prefix(self, side: str = "client") -> list[str]:
        """Command prefix that runs a program inside one of the namespaces."""
        return ["ip", "netns", "exec", self.client_ns if side == "client" else self.server_ns]

    def start(self) -> None:
        atexit.register(self.stop)
        try:
            for ns in (self.client_ns, self.server_ns):
                _ip("netns", "add", ns)
                self._made.append(ns)
                _ns_exec(ns, "ip", "link", "set", "lo", "up")
            cmd = [sys.executable, "-m", "benchmarks.wan", "relay",
                   "--dev-a", self._dev_a, "--dev-b", self._dev_b,
                   "--delay-ms", f"{self.rtt_ms / 2:g}", "--rate-mbit", f"{self.rate_mbit:g}",
                   "--queue-ms", f"{self.queue_ms:g}", "--max-seconds", f"{self.max_seconds:g}"]
            if self.stats_path is not None:
                cmd += ["--stats", str(self.stats_path)]
            self._relay = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                                           cwd=Path(__file__).resolve().parent.parent)
            assert self._relay.stdout is not None
            ready, _, _ = select.select([self._relay.stdout], [], [], 10)
            line = self._relay.stdout.readline() if ready else ""
            if line.strip() != "ready":
                raise RuntimeError(f"the WAN relay did not start (said {line!r})")
            for dev, ns, ip in ((self._dev_a, self.client_ns, CLIENT_IP),
                                (self._dev_b, self.server_ns, SERVER_IP)):
                _ip("link", "set", dev, "netns", ns)
                _ns_exec(ns, "ip", "link", "set", dev, "mtu", str(self.mtu))
                _ns_exec(ns, "ip", "addr", "add", f"{ip}/{PREFIX}", "dev", dev)
                _ns_exec(ns, "ip", "link", "set", dev, "up")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the relay (its TUN devices vanish with it) and delete the namespaces."""
        if self._relay is not None:
            if self._relay.poll() is None:
                self._relay.send_signal(signal.SIGTERM)
                try:
                    self._relay.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._relay.kill()
                    self._relay.wait(timeout=5)
            if self._relay.stdout is not None:
                self._relay.stdout.close()
            self._relay = None
        while self._made:
            _ip("netns", "del", self._made.pop(), check=False)

    def counters(self) -> dict[str, dict[str, int]] | None:
        """The relay's packet counters now (it writes them on SIGUSR1)."""
        if self._relay is None or self.stats_path is None or self._relay.poll() is not None:
            return None
        seq = 0
        with contextlib.suppress(OSError, ValueError):
            seq = int(json.loads(self.stats_path.read_text())["seq"])
        self._relay.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError):
                data = json.loads(self.stats_path.read_text())
                if int(data["seq"]) > seq:
                    return {"a_to_b": data["a_to_b"], "b_to_a": data["b_to_a"]}
            time.sleep(0.02)
        return None

    def set_route_options(self, options: list[str]) -> None:
        """Extra options on the link's route in both namespaces (``initcwnd 100``, ...)."""
        for dev, ns, ip in ((self._dev_a, self.client_ns, CLIENT_IP),
                            (self._dev_b, self.server_ns, SERVER_IP)):
            net = ".".join(ip.split(".")[:3]) + f".0/{PREFIX}"
            _ns_exec(ns, "ip", "route", "change", net, "dev", dev, "proto", "kernel",
                     "scope", "link", "src", ip, *options)

    def set_sysctls(self, settings: dict[str, str], side: str = "client") -> None:
        """Apply sysctls inside one namespace (to emulate a tuned host)."""
        ns = self.client_ns if side == "client" else self.server_ns
        for key, value in settings.items():
            _ns_exec(ns, "sysctl", "-q", "-w", f"{key}={value}")

    def sysctls(self) -> dict[str, str]:
        """TCP settings in force in the client namespace (most are per namespace)."""
        keys = ["net.ipv4.tcp_congestion_control", "net.ipv4.tcp_slow_start_after_idle",
                "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem", "net.core.rmem_max",
                "net.core.wmem_max"]
        out: dict[str, str] = {}
        for key in keys:
            try:
                res = _ns_exec(self.client_ns, "sysctl", "-n", key)
                out[key] = " ".join(res.stdout.split())
            except (subprocess.CalledProcessError, FileNotFoundError):
                out[key] = "?"
        return out

    def check(self, port: int, python: str, *, payload: int = 24 << 20,
              timeout: float = 60.0) -> dict[str, Any]:
        """Measure RTT (UDP echo, TCP connect) and TCP throughput across the link."""
        root = str(Path(__file__).resolve().parent.parent)
        sink = subprocess.Popen(
            [*self.prefix("server"), python, "-m", "benchmarks.wan", "sink", "--bind",
             SERVER_IP, "--port", str(port), "--max-seconds", f"{timeout:g}"],
            stdout=subprocess.PIPE, text=True, cwd=root)
        try:
            assert sink.stdout is not None
            ready, _, _ = select.select([sink.stdout], [], [], 10)
            if not ready or sink.stdout.readline().strip() != "ready":
                raise RuntimeError("the link check sink did not start")
            res = subprocess.run(
                [*self.prefix("client"), python, "-m", "benchmarks.wan", "probe", "--host",
                 SERVER_IP, "--port", str(port), "--bytes", str(payload),
                 "--max-seconds", f"{timeout:g}"],
                capture_output=True, text=True, cwd=root, timeout=timeout + 10)
            if res.returncode != 0:
                raise RuntimeError(f"link check failed: {res.stderr.strip()[-500:]}")
            result: dict[str, Any] = json.loads(res.stdout)
            return result
        finally:
            sink.terminate()
            try:
                sink.wait(timeout=5)
            except subprocess.TimeoutExpired:
                sink.kill()
                sink.wait()
            if sink.stdout is not None:
                sink.stdout.close()


# --- the relay -----------------------------------------------------------------------------


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    os.set_blocking(fd, False)
    return fd


class Direction:
    """One direction of the link: a serialisation clock, a drop-tail queue, a delay line."""

    def __init__(self, src: int, dst: int, *, delay: float, rate: float, queue: float) -> None:
        self.src = src
        self.dst = dst
        self.delay = delay
        self.rate = rate  # bytes per second; 0 = unlimited
        self.queue_bytes = queue * rate if rate else float("inf")
        self.free_at = 0.0
        self.line: deque[tuple[float, bytes]] = deque()
        self.packets = 0
        self.bytes = 0
        self.drops = 0
        self.write_errors = 0

    def offer(self, packet: bytes, now: float) -> None:
        size = len(packet)
        if self.rate:
            start = max(now, self.free_at)
            if (start - now) * self.rate + size > self.queue_bytes:
                self.drops += 1
                return
            self.free_at = start + size / self.rate
            due = self.free_at + self.delay
        else:
            due = now + self.delay
        self.line.append((due, packet))
        self.packets += 1
        self.bytes += size

    def flush(self, now: float) -> None:
        line = self.line
        while line and line[0][0] <= now:
            packet = line.popleft()[1]
            try:
                os.write(self.dst, packet)
            except OSError:
                self.write_errors += 1

    def stats(self) -> dict[str, int]:
        return {"packets": self.packets, "bytes": self.bytes, "drops": self.drops,
                "write_errors": self.write_errors}


def run_relay(args: argparse.Namespace) -> int:
    with contextlib.suppress(OSError, AttributeError):  # stop when the orchestrator dies
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    stop = False
    dumps = 0
    dump_wanted = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    def on_usr1(signum: int, frame: Any) -> None:
        nonlocal dump_wanted
        dump_wanted = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGUSR1, on_usr1)
    fa, fb = open_tun(args.dev_a), open_tun(args.dev_b)
    delay = args.delay_ms / 1000
    rate = args.rate_mbit * 1e6 / 8
    queue = args.queue_ms / 1000
    ab = Direction(fa, fb, delay=delay, rate=rate, queue=queue)
    ba = Direction(fb, fa, delay=delay, rate=rate, queue=queue)
    by_src = {fa: ab, fb: ba}
    print("ready", flush=True)
    deadline = time.monotonic() + args.max_seconds
    while not stop:
        now = time.monotonic()
        if now > deadline:
            break
        due = [d.line[0][0] for d in (ab, ba) if d.line]
        wait = max(0.0, min(due) - now) if due else 0.5
        try:
            readable, _, _ = select.select([fa, fb], [], [], wait)
        except InterruptedError:
            continue
        now = time.monotonic()
        for fd in readable:
            d = by_src[fd]
            for _ in range(256):
                try:
                    packet = os.read(fd, 65536)
                except (BlockingIOError, InterruptedError):
                    break
                d.offer(packet, now)
        now = time.monotonic()
        ab.flush(now)
        ba.flush(now)
        if dump_wanted and args.stats:
            dump_wanted = False
            dumps += 1
            _dump(args.stats, dumps, ab, ba)
    if args.stats:
        _dump(args.stats, dumps + 1, ab, ba)
    os.close(fa)
    os.close(fb)
    return 0


def _dump(path: str, seq: int, ab: Direction, ba: Direction) -> None:
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps({"seq": seq, "a_to_b": ab.stats(), "b_to_a": ba.stats()}))
    os.replace(tmp, path)


# --- link check: sink (in B) and probe (in A) --------------------------------------------


def run_sink(args: argparse.Namespace) -> int:
    """UDP echo and a TCP discard server that reports what it received and when."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((args.bind, args.port))
    tcp = socket.socket()
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((args.bind, args.port))
    tcp.listen(8)
    print("ready", flush=True)
    deadline = time.monotonic() + args.max_seconds
    conns: dict[socket.socket, list[tuple[float, int]]] = {}
    while time.monotonic() < deadline:
        readable, _, _ = select.select([udp, tcp, *conns], [], [], 0.5)
        for s in readable:
            if s is udp:
                data, peer = udp.recvfrom(2048)
                udp.sendto(data, peer)
            elif s is tcp:
                conn, _ = tcp.accept()
                conns[conn] = []
            else:
                data = s.recv(1 << 20)
                samples = conns[s]
                if data:
                    total = (samples[-1][1] if samples else 0) + len(data)
                    samples.append((time.monotonic(), total))
                    continue
                s.sendall(json.dumps(_rate(samples)).encode() + b"\n")
                s.close()
                del conns[s]
    return 0


def _rate(samples: list[tuple[float, int]]) -> dict[str, float]:
    """Average goodput over the whole transfer, and over its last 75 % (after slow start)."""
    if len(samples) < 2:
        return {"bytes": float(samples[-1][1] if samples else 0), "mbit": 0.0,
                "steady_mbit": 0.0, "seconds": 0.0}
    t0, total = samples[0][0], samples[-1][1]
    t1 = samples[-1][0]
    cut = next(s for s in samples if s[1] >= total * 0.25)
    steady = (total - cut[1]) * 8 / max(t1 - cut[0], 1e-9) / 1e6
    return {"bytes": float(total), "seconds": t1 - t0,
            "mbit": total * 8 / max(t1 - t0, 1e-9) / 1e6, "steady_mbit": steady}


def run_probe(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.max_seconds
    rtts = []
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(2.0)
    for i in range(args.count):
        t = time.monotonic()
        udp.sendto(f"ping {i}".encode(), (args.host, args.port))
        try:
            while True:
                data, _ = udp.recvfrom(2048)
                if data == f"ping {i}".encode():
                    rtts.append((time.monotonic() - t) * 1000)
                    break
        except TimeoutError:
            pass
        time.sleep(0.05)
    connects = []
    for _ in range(3):
        t = time.monotonic()
        with socket.create_connection((args.host, args.port), timeout=5):
            connects.append((time.monotonic() - t) * 1000)
    result: dict[str, Any] = {
        "ping_sent": args.count, "ping_received": len(rtts),
        "rtt_ms": {"min": min(rtts), "median": statistics.median(rtts), "max": max(rtts)}
        if rtts else None,
        "tcp_connect_ms": statistics.median(connects)}
    with socket.create_connection((args.host, args.port), timeout=5) as s:
        s.settimeout(max(1.0, deadline - time.monotonic()))
        chunk = os.urandom(1 << 16)
        sent = 0
        t = time.monotonic()
        while sent < args.bytes and time.monotonic() < deadline:
            s.sendall(chunk)
            sent += len(chunk)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while not reply.endswith(b"\n"):
            part = s.recv(4096)
            if not part:
                break
            reply += part
        result["throughput"] = json.loads(reply) if reply else None
        result["throughput_wall_s"] = time.monotonic() - t
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.wan")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("relay", help="shape packets between two TUN devices (root)")
    p.add_argument("--dev-a", required=True)
    p.add_argument("--dev-b", required=True)
    p.add_argument("--delay-ms", type=float, default=100.0, help="one-way delay")
    p.add_argument("--rate-mbit", type=float, default=100.0, help="0 = unlimited")
    p.add_argument("--queue-ms", type=float, default=100.0)
    p.add_argument("--max-seconds", type=float, default=3600.0)
    p.add_argument("--stats", default=None)
    p = sub.add_parser("sink", help="UDP echo + TCP discard server")
    p.add_argument("--bind", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-seconds", type=float, default=60.0)
    p = sub.add_parser("probe", help="RTT and throughput check against a sink")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--bytes", type=int, default=24 << 20)
    p.add_argument("--max-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    return {"relay": run_relay, "sink": run_sink, "probe": run_probe}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
