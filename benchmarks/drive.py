"""The driver of one measurement: start the tools, announce the work, time the completions.

Run by the orchestrator (``benchmarks.run``) as ``python -m benchmarks.drive SPEC RESULT``,
inside the client namespace of the emulated link (or on the host for loopback runs).
Every process it starts is a child of it, stopped by PID before it exits.

Tools:

- ``trollpush``: ``python -m trollpush run CONFIG`` as a user runs it, fed by a posttroll
  publisher; completions come back on its posttroll publisher.
- ``trollmoves``: the trollmoves dispatcher (``peers/trollmoves_dispatcher.py`` in
  ``.venv-peers``), fed the same posttroll messages; completions on its publisher.
- ``naive-boto3`` and ``direct-aiobotocore``: worker processes handed the file list
  (see ``peers/__init__.py``).

The clock is ``time.monotonic()`` (CLOCK_MONOTONIC, shared by every process on the
machine). For the posttroll tools a file's latency runs from just before its announcement
is published to the moment its completion frame is read off the subscriber socket; for the
library peers from handing over the batch to the worker's completion stamp.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import posixpath
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import yaml

from benchmarks.s3servers import (
    REGION,
    credentials_env,
    die_with_parent,
    read_status_kib,
    s3_client,
)

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("trollpush", "trollmoves", "naive-boto3", "direct-aiobotocore")
PROBE_URI = "ssh://elsewhere.invalid/trollpush-bench-probe.dat"

# posttroll 1.16 warns on its own decode path
warnings.filterwarnings("ignore", category=PendingDeprecationWarning)


def log(text: str) -> None:
    print(f"  [drive] {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the spec --------------------------------------------------------------------------


@dataclass
class Spec:
    """What one driver invocation measures (written as JSON by the orchestrator)."""

    scenario: str
    run: int
    tools: list[str]
    s3_url: str
    bucket: str
    files: dict[str, list[str]]  # per tool: the measured files
    workdir: str
    mode: str = "burst"  # or "idle": warm-up, idle, one file per tool
    warmup: dict[str, list[str]] = field(default_factory=dict)
    idle: float = 0.0
    stagger: float = 1.0
    settle: float = 2.0
    timeout: float = 300.0
    concurrency: int = 32
    peers_python: str | None = None
    tp_endpoint: dict[str, Any] = field(default_factory=dict)
    tp_daemon: dict[str, Any] = field(default_factory=dict)
    engine: str | None = None  # the frozen copy of trollpush to run (see run.py)
    tag: str = ""  # tells apart runs of one scenario on different stores (P3)
    instances: int = 1  # trollpush instances sharing one JetStream consumer (P5)
    store_pid: int = 0  # the S3 server's process, for its CPU time (P5)
    verify: bool = True
    cleanup: bool = True

    @classmethod
    def load(cls, path: str) -> Spec:
        return cls(**json.loads(Path(path).read_text()))

    @property
    def name(self) -> str:
        """Unique within a suite run: names its logs, configs and state."""
        return f"{self.scenario}{'-' + self.tag if self.tag else ''}-r{self.run}"


# --- completions --------------------------------------------------------------------------


class Collector:
    """Completion (or failure) times per file name, filled by a listener thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.done: dict[str, tuple[float, bool, str | None]] = {}

    def add(self, uid: str, t: float, *, ok: bool, error: str | None = None) -> None:
        with self._cond:
            self.done.setdefault(uid, (t, ok, error))
            self._cond.notify_all()

    def wait(self, uids: Sequence[str], deadline: float) -> bool:
        want = set(uids)
        with self._cond:
            while not want.issubset(self.done):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    def snapshot(self) -> dict[str, tuple[float, bool, str | None]]:
        with self._cond:
            return dict(self.done)


class Listener:
    """A posttroll subscriber; frames are read off its sockets and stamped on arrival."""

    def __init__(self, address: str, topics: list[str],
                 handle: Callable[[float, Any], None], *, max_seconds: float) -> None:
        from posttroll.subscriber import create_subscriber_from_dict_config

        self._sub = create_subscriber_from_dict_config(
            {"addresses": [address], "nameserver": False, "topics": topics})
        self._handle = handle
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._thread = threading.Thread(target=self._run, daemon=True, name="listener")
        self._thread.start()

    def _run(self) -> None:
        import zmq
        from posttroll.message import Message

        poller = zmq.Poller()
        socks = list(self._sub.subscribers)
        for s in socks:
            poller.register(s, zmq.POLLIN)
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            ready = dict(poller.poll(50))
            for s in socks:
                if ready.get(s) != zmq.POLLIN:
                    continue
                while True:
                    try:
                        raw = s.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    t = time.monotonic()
                    try:
                        message = Message.decode(raw.decode("utf-8"))
                    except Exception as err:  # never let one frame end the listener
                        log(f"undecodable frame ignored: {err}")
                        continue
                    self._handle(t, message)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sub.close()


class Producer:
    """The posttroll publisher standing in for the data producer (one per driver)."""

    def __init__(self) -> None:
        from posttroll.publisher import create_publisher_from_dict_config

        self.address = f"tcp://127.0.0.1:{free_port()}"
        self._pub = create_publisher_from_dict_config(
            {"name": "bench-producer", "address": self.address, "nameservers": False})
        self._pub.start()

    def send(self, subject: str, data: dict[str, Any]) -> None:
        from posttroll.message import Message

        self._pub.send(Message(subject, "file", data).encode())

    def close(self) -> None:
        self._pub.stop()


# --- tools ---------------------------------------------------------------------------------


def _stop_process(proc: subprocess.Popen[Any] | None, *, grace: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class Tool:
    """One tool under test: ``start``, ``link``, ``submit``, completions, ``stop``."""

    name = "?"

    def __init__(self, spec: Spec, producer: Producer, logdir: Path) -> None:
        self.spec = spec
        self.producer = producer
        self.logdir = logdir
        self.collector = Collector()
        self.proc: subprocess.Popen[Any] | None = None
        self._log: IO[bytes] | None = None
        self.info: dict[str, Any] = {}

    @property
    def log_path(self) -> Path:
        return self.logdir / f"{self.spec.name}-{self.name}.log"

    def _spawn(self, cmd: list[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None,
               **kw: Any) -> subprocess.Popen[Any]:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stderr=self._log, env={**credentials_env(),
                                                                 **(env or {})},
                                     cwd=cwd, preexec_fn=die_with_parent, **kw)
        return self.proc

    def start(self) -> None:
        raise NotImplementedError

    def link(self, timeout: float = 30.0) -> None:
        """Return once work handed over now reaches the tool (pub-sub joined)."""

    def submit(self, files: Sequence[str], prefix: str) -> dict[str, float]:
        """Hand the files over; the submit time of each file, by name."""
        raise NotImplementedError

    def peak_rss_kib(self) -> int | None:
        return read_status_kib(self.proc.pid, "VmHWM") if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        _stop_process(self.proc)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(line[:300] for line in text.splitlines()[-lines:])


class PosttrollTool(Tool):
    """A daemon fed posttroll messages on ``topic`` and announcing on its own publisher."""

    topic = "/bench/x/"

    def __init__(self, spec: Spec, producer: Producer, logdir: Path) -> None:
        super().__init__(spec, producer, logdir)
        self.publish_address = f"tcp://127.0.0.1:{free_port()}"
        self.linked = threading.Event()
        self.listener: Listener | None = None

    def listen(self) -> None:
        self.listener = Listener(self.publish_address, ["/bench/"], self.on_message,
                                 max_seconds=self.spec.timeout * 4 + self.spec.idle + 600)

    def on_message(self, t: float, message: Any) -> None:
        raise NotImplementedError

    def submit(self, files: Sequence[str], prefix: str) -> dict[str, float]:
        sent: dict[str, float] = {}
        for path in files:
            name = os.path.basename(path)
            sent[name] = time.monotonic()
            self.producer.send(self.topic, {"uri": path, "uid": name, "prefix": prefix})
        return sent

    def _probe(self, send: Callable[[], None], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            send()
            if self.linked.wait(0.3):
                time.sleep(0.3)  # late answers to earlier probes
                return
        raise RuntimeError(f"{self.name}: pub-sub not linked within {timeout:g} s:\n"
                           f"{self.log_tail()}")

    def stop(self) -> None:
        super().stop()
        if self.listener is not None:
            self.listener.close()
            self.listener = None


class Trollpush(PosttrollTool):
    name = "trollpush"
    topic = "/bench/tp/"
    done_topic = "/bench/done/tp/"

    def config(self) -> dict[str, Any]:
        return {"subscribe": {"topics": [self.topic], "nameserver": False,
                              "addresses": [self.producer.address]}, **self.base_config()}

    def base_config(self) -> dict[str, Any]:
        """Everything but the input (P5 gives its instances a ``jetstream`` one)."""
        # only what says where the store is: every engine knob keeps the default a user
        # gets, unless the orchestrator was told otherwise (--tp-endpoint KEY=VALUE)
        endpoint: dict[str, Any] = {"url": self.spec.s3_url, "region": REGION,
                                    "addressing_style": "path"}
        endpoint.update(self.spec.tp_endpoint)
        cfg: dict[str, Any] = {
            "publish": {"name": "trollpush-bench", "nameservers": False,
                        "address": self.publish_address, "topic": self.done_topic,
                        "failure_topic": "/bench/failed/tp/"},
            "endpoints": {"default": endpoint},
            "targets": [{"name": "bench", "topics": [self.topic],
                         "destination": f"s3://{self.spec.bucket}/{{prefix}}/"}],
        }
        if self.spec.tp_daemon:
            cfg["daemon"] = dict(self.spec.tp_daemon)
        # a fresh journal per daemon: a shared one would answer repeated files from the
        # journal ("already landed") instead of uploading them, and flatter the numbers
        cfg["journal"] = {"path": str(self.state_dir / "journal.sqlite")}
        return cfg

    @property
    def state_dir(self) -> Path:
        return Path(self.spec.workdir) / "state" / f"{self.spec.name}-{self.name}"

    def start(self) -> None:
        cfg_path = self.logdir / f"{self.spec.name}-{self.name}.yaml"
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self.state_dir.mkdir(parents=True)
        cfg_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self.info["config"] = self.config()
        self.listen()
        # the frozen copy of the engine, not the working tree (which may change meanwhile)
        engine = Path(self.spec.engine) if self.spec.engine else ROOT
        # and a state directory of its own (XDG_STATE_HOME: the default journal's home)
        self._spawn([sys.executable, "-m", "trollpush", "run", str(cfg_path)],
                    stdout=subprocess.DEVNULL, cwd=engine,
                    env={"PYTHONPATH": str(engine), "XDG_STATE_HOME": str(self.state_dir)})
        deadline = time.monotonic() + 30
        while "trollpush ready" not in self.log_path.read_text(errors="replace"):
            if not self.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"trollpush did not get ready:\n{self.log_tail()}")
            time.sleep(0.05)

    def link(self, timeout: float = 30.0) -> None:
        self._probe(lambda: self.producer.send(self.topic, {"uri": PROBE_URI}), timeout)

    def on_message(self, t: float, message: Any) -> None:
        data = message.data if isinstance(message.data, dict) else {}
        if message.type == "failure":
            uri = str(data.get("uri"))
            if uri == PROBE_URI:
                self.linked.set()
                return
            self.collector.add(posixpath.basename(uri), t, ok=False,
                               error=f"{data.get('reason')}: {data.get('error')}")
        elif message.subject.startswith(self.done_topic) and "uid" in data:
            self.collector.add(str(data["uid"]), t, ok=True)


class Trollmoves(PosttrollTool):
    name = "trollmoves"
    topic = "/bench/tm/"
    probe_topic = "/bench/tmprobe/"

    def config(self) -> dict[str, Any]:
        probe_dir = Path(self.spec.workdir) / "trollmoves-probe-out"
        shutil.rmtree(probe_dir, ignore_errors=True)
        probe_dir.mkdir()
        return {
            "posttroll_subscriber": {"subscribe_addresses": [self.producer.address],
                                     "nameserver": False},
            "s3": {
                "host": f"s3://{self.spec.bucket}",
                "directory": "/{prefix}",
                "filepattern": "{uid}",
                "publish_topic": "/bench/done/tm/",
                "connection_parameters": {
                    "client_kwargs": {"endpoint_url": self.spec.s3_url},
                    "config_kwargs": {"s3": {"addressing_style": "path"}},
                },
                "dispatch_configs": [{"topics": [self.topic]}],
            },
            # a local copy target: proves the subscription joined without touching S3
            "probe": {
                "host": "",
                "directory": str(probe_dir),
                "filepattern": "{uid}",
                "publish_topic": "/bench/done/tmprobe/",
                "dispatch_configs": [{"topics": [self.probe_topic]}],
            },
        }

    def start(self) -> None:
        if not self.spec.peers_python:
            raise RuntimeError("trollmoves needs the peers virtualenv (.venv-peers)")
        cfg_path = self.logdir / f"{self.spec.name}-trollmoves.yaml"
        cfg_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self.listen()
        script = ROOT / "benchmarks" / "peers" / "trollmoves_dispatcher.py"
        self._spawn([self.spec.peers_python, str(script), str(cfg_path), "--publish-address",
                     self.publish_address], stdout=subprocess.DEVNULL)

    def link(self, timeout: float = 30.0) -> None:
        probe = Path(self.spec.workdir) / "trollmoves-probe.dat"
        probe.write_bytes(b"probe")
        count = iter(range(1_000_000))

        def send() -> None:  # a new name each time: trollmoves refuses to overwrite a link
            self.producer.send(self.probe_topic,
                               {"uri": str(probe), "uid": f"probe-{next(count)}.dat"})

        self._probe(send, timeout)

    def on_message(self, t: float, message: Any) -> None:
        data = message.data if isinstance(message.data, dict) else {}
        if message.subject.startswith("/bench/done/tmprobe/"):
            self.linked.set()
        elif message.subject.startswith("/bench/done/tm/") and "uid" in data:
            self.collector.add(str(data["uid"]), t, ok=True)


class Worker(Tool):
    """A library peer in a worker process speaking JSON lines (``peers/_worker.py``)."""

    module = "?"

    def args(self) -> list[str]:
        return ["--url", self.spec.s3_url]

    def start(self) -> None:
        self._ready = threading.Event()
        self._spawn([sys.executable, "-m", self.module, *self.args()], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(60):
            raise RuntimeError(f"{self.name} worker did not start:\n{self.log_tail()}")

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if item.get("ready"):
                self.info.update(item)
                self._ready.set()
            elif "key" in item:
                self.collector.add(posixpath.basename(item["key"]), item["t"], ok=item["ok"],
                                   error=item.get("error"))

    def submit(self, files: Sequence[str], prefix: str) -> dict[str, float]:
        assert self.proc is not None and self.proc.stdin is not None
        items = [[path, f"{prefix}/{os.path.basename(path)}"] for path in files]
        t = time.monotonic()
        self.proc.stdin.write(json.dumps({"op": "upload", "bucket": self.spec.bucket,
                                          "items": items}) + "\n")
        self.proc.stdin.flush()
        return {os.path.basename(path): t for path in files}

    def stop(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        super().stop()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


class NaiveBoto3(Worker):
    name = "naive-boto3"
    module = "benchmarks.peers.naive_boto3"


class DirectAiobotocore(Worker):
    name = "direct-aiobotocore"
    module = "benchmarks.peers.direct_aiobotocore"

    def args(self) -> list[str]:
        return [*super().args(), "--concurrency", str(self.spec.concurrency)]


TOOL_CLASSES: dict[str, type[Tool]] = {
    "trollpush": Trollpush, "trollmoves": Trollmoves, "naive-boto3": NaiveBoto3,
    "direct-aiobotocore": DirectAiobotocore}


# --- measuring -------------------------------------------------------------------------------


def prefix_for(spec: Spec, tool: str, phase: str = "m") -> str:
    return f"{spec.scenario.lower()}/{tool}/r{spec.run}-{phase}"


class Handover(Protocol):
    """What ``measure`` needs of a tool (P5's fleet of instances is one too)."""

    collector: Collector

    def submit(self, files: Sequence[str], prefix: str) -> dict[str, float]: ...


def measure(tool: Handover, files: Sequence[str], prefix: str, deadline: float
            ) -> dict[str, Any]:
    """Hand over ``files``, wait for every completion; times relative to the first send."""
    names = [os.path.basename(f) for f in files]
    sent = tool.submit(files, prefix)
    t0 = min(sent.values())
    complete = tool.collector.wait(names, deadline)
    done = tool.collector.snapshot()
    ok = [n for n in names if n in done and done[n][1]]
    failed = {n: done[n][2] for n in names if n in done and not done[n][1]}
    latencies = sorted((done[n][0] - sent[n]) * 1000 for n in ok)
    last = max((done[n][0] for n in names if n in done), default=None)
    out: dict[str, Any] = {
        "files": len(names), "ok": len(ok), "failed": len(failed),
        "missing": len(names) - len(ok) - len(failed),
        "bytes": sum(os.path.getsize(f) for f in files),
        "elapsed": (last - t0) if complete and not failed and last is not None else None,
        "elapsed_partial": (last - t0) if last is not None else None,
        "latencies_ms": latencies,
        "errors": sorted({str(e) for e in failed.values()})[:5],
    }
    return out


def verify_and_clean(spec: Spec, prefix: str, expected: dict[str, int]) -> dict[str, Any]:
    """Check the objects under ``prefix`` against the files; delete them afterwards."""
    client = s3_client(spec.s3_url, connect_timeout=10, read_timeout=120)
    found: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=spec.bucket,
                                                                 Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            found[obj["Key"]] = obj["Size"]
    wrong = [k for k, size in expected.items() if found.get(f"{prefix}/{k}") != size]
    result = {"objects": len(found), "expected": len(expected), "wrong_or_missing": len(wrong)}
    if spec.cleanup and found:
        keys = list(found)
        for i in range(0, len(keys), 1000):
            client.delete_objects(Bucket=spec.bucket, Delete={
                "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
    return result


def run_burst(spec: Spec, tool: Tool) -> dict[str, Any]:
    files = spec.files[tool.name]
    tool.start()
    tool.link()
    time.sleep(spec.settle)
    prefix = prefix_for(spec, tool.name)
    log(f"{spec.scenario} run {spec.run}: {tool.name}: {len(files)} file(s)")
    result = measure(tool, files, prefix, time.monotonic() + spec.timeout)
    result["peak_rss_kib"] = tool.peak_rss_kib()
    result["info"] = tool.info
    tool.stop()
    if spec.verify:
        result["verify"] = verify_and_clean(
            spec, prefix, {os.path.basename(f): os.path.getsize(f) for f in files})
        invalidate(result)
    return result


def invalidate(result: dict[str, Any]) -> None:
    """A run whose announced objects are not all in the store has no valid time."""
    if result.get("verify", {}).get("wrong_or_missing"):
        result["elapsed"] = None
        result["errors"] = [*result.get("errors", []),
                            f"{result['verify']['wrong_or_missing']} announced object(s) "
                            "missing or wrong in the store"]


def run_idle(spec: Spec, tools: list[Tool]) -> dict[str, dict[str, Any]]:
    """Warm every tool up with one file, idle, then one file per tool, one tool at a time."""
    results: dict[str, dict[str, Any]] = {}
    warm_done: dict[str, float] = {}
    for tool in tools:
        tool.start()
    for tool in tools:
        tool.link()
    for tool in tools:
        warm = spec.warmup.get(tool.name, [])
        if warm:
            r = measure(tool, warm, prefix_for(spec, tool.name, "w"),
                        time.monotonic() + spec.timeout)
            if r["ok"] != len(warm):
                raise RuntimeError(f"{tool.name}: warm-up upload failed: {r}")
            results[tool.name] = {"warmup_ms": r["latencies_ms"]}
        warm_done[tool.name] = time.monotonic()
    idle_end = time.monotonic() + spec.idle
    log(f"{spec.scenario} run {spec.run}: idle {spec.idle:g} s")
    previous_done = 0.0
    for i, tool in enumerate(tools):
        start_at = max(idle_end + i * spec.stagger, previous_done + 0.5)
        time.sleep(max(0.0, start_at - time.monotonic()))
        idle = time.monotonic() - warm_done[tool.name]
        log(f"{spec.scenario} run {spec.run}: {tool.name} after {idle:.1f} s idle")
        r = measure(tool, spec.files[tool.name], prefix_for(spec, tool.name),
                    time.monotonic() + spec.timeout)
        previous_done = time.monotonic()
        r["idle_s"] = idle
        r["peak_rss_kib"] = tool.peak_rss_kib()
        r["info"] = tool.info
        results.setdefault(tool.name, {}).update(r)
    for tool in tools:
        tool.stop()
    if spec.verify:
        for tool in tools:
            files = spec.files[tool.name]
            results[tool.name]["verify"] = verify_and_clean(
                spec, prefix_for(spec, tool.name),
                {os.path.basename(f): os.path.getsize(f) for f in files})
            invalidate(results[tool.name])
            if spec.cleanup:
                verify_and_clean(spec, prefix_for(spec, tool.name, "w"), {})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.drive")
    parser.add_argument("spec", help="JSON spec written by benchmarks.run")
    parser.add_argument("result", help="where to write the JSON result")
    args = parser.parse_args(argv)
    spec = Spec.load(args.spec)
    logdir = Path(spec.workdir) / "logs"
    logdir.mkdir(exist_ok=True)

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    producer = Producer()
    tools = [TOOL_CLASSES[name](spec, producer, logdir) for name in spec.tools]
    out: dict[str, Any] = {"scenario": spec.scenario, "run": spec.run, "tools": {}}
    try:
        if spec.mode == "idle":
            out["tools"] = run_idle(spec, tools)
        else:
            for tool in tools:
                try:
                    out["tools"][tool.name] = run_burst(spec, tool)
                except Exception as err:
                    log(f"{tool.name} failed: {err}")
                    out["tools"][tool.name] = {"error": f"{type(err).__name__}: {err}"}
                finally:
                    tool.stop()
    except Exception as err:
        log(f"run failed: {err}")
        out["error"] = f"{type(err).__name__}: {err}"
    finally:
        for tool in tools:
            tool.stop()
        producer.close()
        Path(args.result).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
