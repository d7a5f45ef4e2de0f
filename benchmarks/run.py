"""Entry point of the benchmark suite: ``make bench`` or ``python -m benchmarks.run``.

Measures the whole pipeline (first announcement published -> last completion received)
for trollpush and, in the same run, for the same work through the trollmoves dispatcher,
a naive boto3 script and a direct aiobotocore loop, on real S3 servers (SeaweedFS,
rclone), over loopback and over an emulated long-haul link. Writes ``docs/benchmarks.md``
and ``docs/benchmarks.png``; the raw numbers go to a JSON file under /tmp.

Scenarios (each run ``--runs`` times, medians reported):

- P1 burst: 20 x 1 MiB announced at once, over the WAN link.
- P2 first file after idle: one 1 KiB file after ``--idle`` seconds without work, over
  the WAN link (every tool uploads one warm-up file first, then idles).
- P3 firehose: 2,000 x 4 KiB on loopback; files/s and p50/p99 latency.
- P4 one large file (512 MiB) over the WAN link, with the uploader's peak RSS.
- P5 scaling: the P3 firehose through N = 1, 2, 3, 4 trollpush instances sharing one
  NATS JetStream consumer, on loopback (SeaweedFS); files/s, the ratio to N = 1, and the
  CPU time per file of each instance, the NATS server and the store.

The WAN link needs root (network namespaces, TUN devices: see ``benchmarks/wan.py``);
without it P1, P2 and P4 run on loopback instead and the report says so.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.drive import TOOLS
from benchmarks.s3servers import (
    BUCKET,
    KINDS,
    REGION,
    S3Server,
    credentials_env,
    die_with_parent,
)
from benchmarks.wan import WanLink, other_runs, remove_stale_namespaces, wan_unavailable

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
PEER_PACKAGES = ["trollmoves>=0.19", "s3fs"]
SCENARIOS = ("P1", "P2", "P3", "P4", "P5")
P5_SERVER = "seaweedfs"  # the store P5's instances share


def say(text: str) -> None:
    print(text, flush=True)


# --- settings ------------------------------------------------------------------------------


@dataclass
class Settings:
    quick: bool = False
    runs: int = 3
    idle: float = 60.0
    p1_files: int = 20
    p1_size: int = MiB
    p2_size: int = 1024
    p3_files: int = 2000
    p3_size: int = 4096
    p4_size: int = 512 * MiB
    p5_instances: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))
    tools: list[str] = field(default_factory=lambda: list(TOOLS))
    rtt_ms: float = 200.0
    rate_mbit: float = 100.0
    queue_ms: float = 100.0
    wan: bool = True
    wan_server: str = "seaweedfs"
    loop_servers: list[str] = field(default_factory=lambda: list(KINDS))
    settle: float = 2.0
    stagger: float = 2.0
    client_sysctl: dict[str, str] = field(default_factory=dict)
    route_options: list[str] = field(default_factory=list)
    tp_endpoint: dict[str, Any] = field(default_factory=dict)
    tp_daemon: dict[str, Any] = field(default_factory=dict)
    peers_venv: Path = ROOT / ".venv-peers"
    out: Path = ROOT / "docs" / "benchmarks.md"
    chart: Path = ROOT / "docs" / "benchmarks.png"
    json_out: Path | None = None
    keep: bool = False
    from_json: Path | None = None


def _key_value(text: str) -> tuple[str, Any]:
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def parse_args(argv: list[str] | None) -> Settings:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="development run: 1 run, 10 s idle, 64 MiB P4, 500 files in P3 "
                   "and P5")
    p.add_argument("--runs", type=int, help="runs per scenario and tool (default 3)")
    p.add_argument("--idle", type=float, help="P2 idle seconds (default 60)")
    p.add_argument("--p3-files", type=int, help="P3 file count (default 2000)")
    p.add_argument("--p4-mib", type=int, help="P4 file size in MiB (default 512)")
    p.add_argument("--p5-instances", default="1,2,3,4",
                   help="P5: the instance counts to measure (comma-separated; P3's files)")
    p.add_argument("--scenarios", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    p.add_argument("--tools", help=f"comma-separated subset of {','.join(TOOLS)}")
    p.add_argument("--rtt-ms", type=float, default=200.0)
    p.add_argument("--rate-mbit", type=float, default=100.0)
    p.add_argument("--queue-ms", type=float, default=100.0,
                   help="queue limit of the emulated link, in ms of link time")
    p.add_argument("--no-wan", action="store_true",
                   help="run P1, P2 and P4 on loopback (automatic without root)")
    p.add_argument("--wan-server", choices=KINDS, default="seaweedfs")
    p.add_argument("--loopback-servers", default=",".join(KINDS),
                   help="S3 servers for P3 (comma-separated)")
    p.add_argument("--client-sysctl", action="append", type=_key_value, default=[],
                   metavar="KEY=VALUE", help="sysctl for the clients' namespace, e.g. "
                   "net.ipv4.tcp_slow_start_after_idle=0 to emulate a tuned host (repeatable)")
    p.add_argument("--route-options", default="",
                   help="options for the link's route in both namespaces, e.g. "
                   "'initcwnd 100 initrwnd 100' to emulate a tuned host")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds between a tool being linked and the work (pre-warming)")
    p.add_argument("--tp-endpoint", action="append", type=_key_value, default=[],
                   metavar="KEY=VALUE", help="extra trollpush endpoint setting (repeatable)")
    p.add_argument("--tp-daemon", action="append", type=_key_value, default=[],
                   metavar="KEY=VALUE", help="extra trollpush daemon setting (repeatable)")
    p.add_argument("--peers-venv", type=Path, default=ROOT / ".venv-peers")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--chart", type=Path, default=ROOT / "docs" / "benchmarks.png")
    p.add_argument("--json", type=Path, default=None, help="raw results (default: /tmp/...)")
    p.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    p.add_argument("--from-json", type=Path, default=None, metavar="RESULTS",
                   help="only write the report again from an earlier run's raw results")
    a = p.parse_args(argv)
    s = Settings(quick=a.quick)
    s.from_json = a.from_json
    if a.quick:
        s.runs, s.idle, s.p4_size, s.p3_files = 1, 10.0, 64 * MiB, 500
    s.runs = a.runs or s.runs
    s.idle = a.idle if a.idle is not None else s.idle
    s.p3_files = a.p3_files or s.p3_files
    s.p4_size = a.p4_mib * MiB if a.p4_mib else s.p4_size
    try:
        s.p5_instances = sorted({int(x) for x in a.p5_instances.split(",") if x.strip()})
    except ValueError:
        p.error(f"--p5-instances: expected numbers like 1,2,3,4, got {a.p5_instances!r}")
    if not s.p5_instances or not all(1 <= n <= 16 for n in s.p5_instances):
        p.error("--p5-instances: from 1 to 16 instances")
    if a.scenarios:
        s.scenarios = [x.strip().upper() for x in a.scenarios.split(",") if x.strip()]
        bad = set(s.scenarios) - set(SCENARIOS)
        if bad:
            p.error(f"unknown scenario(s): {', '.join(sorted(bad))}")
    if a.tools:
        s.tools = [x.strip() for x in a.tools.split(",") if x.strip()]
        bad = set(s.tools) - set(TOOLS)
        if bad:
            p.error(f"unknown tool(s): {', '.join(sorted(bad))}")
    s.rtt_ms, s.rate_mbit, s.queue_ms = a.rtt_ms, a.rate_mbit, a.queue_ms
    s.wan = not a.no_wan
    s.wan_server = a.wan_server
    s.loop_servers = [x.strip() for x in a.loopback_servers.split(",") if x.strip()]
    if set(s.loop_servers) - set(KINDS):
        p.error(f"--loopback-servers: choose from {', '.join(KINDS)}")
    s.settle = a.settle
    s.client_sysctl = {k: str(v) for k, v in a.client_sysctl}
    s.route_options = a.route_options.split()
    s.tp_endpoint = dict(a.tp_endpoint)
    s.tp_daemon = dict(a.tp_daemon)
    s.peers_venv, s.out, s.chart, s.json_out, s.keep = (a.peers_venv, a.out, a.chart, a.json,
                                                        a.keep)
    return s


# --- environment ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "ram_gib": round(mem_kib / 1024 / 1024, 1),
            "kernel": platform.release(), "python": platform.python_version(), "cpu": cpu,
            "hostname": platform.node(), "load_start": os.getloadavg()[0]}


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def git_revision() -> str:
    """The commit, and whether trollpush/ has uncommitted changes."""
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip() or "?"
    status = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                             "trollpush"], capture_output=True, text=True).stdout.strip()
    return f"{head} + uncommitted changes in trollpush/" if status else head


def content_hash(package: Path) -> str:
    digest = hashlib.sha1()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + path.read_bytes())
    return digest.hexdigest()[:10]


def snapshot_engine(work: Path) -> Path:
    """A frozen copy of trollpush/ that every daemon of this run imports.

    The package may be edited while the suite runs (half an hour); without a copy, the
    scenarios would measure different versions of the engine.
    """
    engine = work / "engine"
    shutil.copytree(ROOT / "trollpush", engine / "trollpush",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    sys.path.insert(0, str(engine))  # this process parses the configs with the same copy
    return engine


def peer_versions(python: str | None) -> dict[str, str]:
    if python is None:
        return {}
    code = ("import json, importlib.metadata as m\n"
            "print(json.dumps({d: m.version(d) for d in "
            "('trollmoves', 's3fs', 'aiobotocore', 'botocore', 'posttroll')}))")
    res = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    return dict(json.loads(res.stdout)) if res.returncode == 0 else {}


def ensure_peers_venv(path: Path) -> str:
    """The peers' virtualenv (trollmoves + s3fs), built on first use; its python."""
    py = path / "bin" / "python"
    check = [str(py), "-c", "import trollmoves.dispatcher, s3fs"]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return str(py)
    finder = subprocess.run([str(ROOT / "tools" / "find-python")], capture_output=True,
                            text=True)
    base = finder.stdout.strip() or sys.executable
    say(f"building {path} for the trollmoves peer ({base}; {' '.join(PEER_PACKAGES)})")
    subprocess.run([base, "-m", "venv", "--clear", str(path)], check=True)
    (path / ".gitignore").write_text("*\n")  # never committed (3.13's venv does this too)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
                   check=True, timeout=900)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", *PEER_PACKAGES], check=True,
                   timeout=900)
    subprocess.run(check, check=True)
    return str(py)


def trollpush_endpoint(settings: Settings) -> dict[str, Any]:
    """The effective endpoint settings trollpush runs with (engine defaults + overrides)."""
    from trollpush.config import parse_config

    raw: dict[str, Any] = {
        "subscribe": {"topics": ["/bench/tp/"], "nameserver": False,
                      "addresses": ["tcp://127.0.0.1:1"]},
        "endpoints": {"default": {"url": "http://127.0.0.1:1", "region": REGION,
                                  "addressing_style": "path", **settings.tp_endpoint}},
        "targets": [{"destination": "s3://bucket/{uid}"}],
    }
    if settings.tp_daemon:
        raw["daemon"] = dict(settings.tp_daemon)
    cfg = parse_config(raw)
    ep = cfg.endpoints["default"]
    hidden = {"name", "url", "region", "profile", "access_key_id", "secret_access_key",
              "session_token"}
    return {k: v for k, v in dataclasses.asdict(ep).items() if k not in hidden}


def concurrency_of(endpoint: dict[str, Any]) -> int:
    """Uploads trollpush runs at once through one endpoint (the direct loop gets as many)."""
    return int(endpoint.get("max_parallel") or endpoint.get("max_connections") or 32)


# --- data -------------------------------------------------------------------------------------


def make_file(path: Path, size: int) -> str:
    if not path.exists() or path.stat().st_size != size:
        with open(path, "wb") as fh:
            left = size
            while left > 0:
                n = min(left, 8 * MiB)
                fh.write(os.urandom(n))
                left -= n
    return str(path)


@dataclass
class Data:
    p1: list[str]
    p2_warm: list[str]
    p2: list[str]
    p3: list[str]
    p4: list[str]


def make_data(settings: Settings, work: Path) -> Data:
    d = work / "data"
    d.mkdir(parents=True, exist_ok=True)
    want = set(settings.scenarios)
    return Data(
        p1=[make_file(d / f"p1-{i:03d}.dat", settings.p1_size)
            for i in range(settings.p1_files)] if "P1" in want else [],
        p2_warm=[make_file(d / "p2-warmup.dat", settings.p2_size)] if "P2" in want else [],
        p2=[make_file(d / "p2-first.dat", settings.p2_size)] if "P2" in want else [],
        p3=[make_file(d / f"p3-{i:05d}.dat", settings.p3_size)  # P5 sends them too
            for i in range(settings.p3_files)] if {"P3", "P5"} & want else [],
        p4=[make_file(d / "p4-large.dat", settings.p4_size)] if "P4" in want else [],
    )


# --- running the driver -----------------------------------------------------------------------


def _wait_or_stop(proc: subprocess.Popen[Any], timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except BaseException:
        proc.send_signal(signal.SIGTERM)  # the driver stops its tools on SIGTERM
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise


def drive(spec: dict[str, Any], work: Path, prefix: list[str], budget: float, *,
          module: str = "benchmarks.drive") -> dict[str, Any]:
    """Run one driver invocation (in the client namespace when ``prefix`` says so)."""
    tag = (f"{spec['scenario']}{'-' + spec['tag'] if spec.get('tag') else ''}-r{spec['run']}"
           f"-{'+'.join(spec['tools'])}")
    spec_path = work / f"spec-{tag}.json"
    result_path = work / f"result-{tag}.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    proc = subprocess.Popen([*prefix, sys.executable, "-m", module, str(spec_path),
                             str(result_path)], cwd=ROOT, env=credentials_env(),
                            preexec_fn=die_with_parent)
    try:
        _wait_or_stop(proc, budget)
    except subprocess.TimeoutExpired:
        return {"error": f"driver exceeded {budget:g} s", "tools": {}}
    if not result_path.exists():
        return {"error": f"driver exited with {proc.returncode} without a result", "tools": {}}
    result: dict[str, Any] = json.loads(result_path.read_text())
    return result


def rotate[T](items: list[T], n: int) -> list[T]:
    k = n % len(items) if items else 0
    return items[k:] + items[:k]


@dataclass
class Context:
    settings: Settings
    work: Path
    data: Data
    peers_python: str | None
    tp_endpoint: dict[str, Any]
    link: WanLink | None
    wan_server: S3Server | None
    loop_servers: dict[str, S3Server]
    results: dict[str, Any]

    def net(self) -> tuple[str, list[str], str]:
        """URL, command prefix and label of the store the WAN scenarios use."""
        if self.link is not None and self.wan_server is not None:
            return self.wan_server.url, self.link.prefix("client"), "wan"
        server = self.loop_servers[self.settings.wan_server]
        return server.url, [], "loopback"


def base_spec(ctx: Context, scenario: str, run: int, tools: list[str], url: str,
              files: dict[str, list[str]], timeout: float) -> dict[str, Any]:
    return {"scenario": scenario, "run": run, "tools": tools, "s3_url": url, "bucket": BUCKET,
            "files": files, "workdir": str(ctx.work), "peers_python": ctx.peers_python,
            "timeout": timeout, "settle": ctx.settings.settle,
            "concurrency": concurrency_of(ctx.tp_endpoint), "engine": str(ctx.work / "engine"),
            "tp_endpoint": ctx.settings.tp_endpoint, "tp_daemon": ctx.settings.tp_daemon}


def link_delta(before: dict[str, Any] | None, after: dict[str, Any] | None
               ) -> dict[str, Any] | None:
    """What crossed the emulated link between two counter snapshots."""
    if not before or not after:
        return None
    return {d: {k: after[d][k] - before[d][k] for k in after[d]} for d in after}


def run_burst(ctx: Context, scenario: str, files: list[str], *, url: str,
              prefix: list[str], timeout: float, label: str, tag: str = ""
              ) -> list[dict[str, Any]]:
    """Every tool alone, ``runs`` times, tool order rotated from run to run."""
    runs: list[dict[str, Any]] = []
    tools = ctx.settings.tools
    on_link = ctx.link is not None and label == "wan"
    for run in range(1, ctx.settings.runs + 1):
        for tool in rotate(tools, run - 1):
            say(f"{scenario} ({label}) run {run}/{ctx.settings.runs}: {tool}")
            spec = base_spec(ctx, scenario, run, [tool], url, {tool: files}, timeout)
            spec["tag"] = tag
            before = ctx.link.counters() if on_link and ctx.link else None
            res = drive(spec, ctx.work, prefix, timeout + 180)
            out = res.get("tools", {}).get(tool) or {"error": res.get("error", "no result")}
            out.update(tool=tool, run=run)
            if on_link and ctx.link:
                out["link"] = link_delta(before, ctx.link.counters())
            say("    " + report.one_line(out))
            runs.append(out)
    return runs


def scenario_p1(ctx: Context) -> None:
    url, prefix, label = ctx.net()
    s = ctx.settings
    ctx.results["P1"] = {"net": label, "runs": run_burst(
        ctx, "P1", ctx.data.p1, url=url, prefix=prefix, label=label,
        timeout=120 + 20 * s.p1_files * s.p1_size / MiB)}


def scenario_p2(ctx: Context) -> None:
    """All tools in one driver: warm up, idle together, then one file each in turn."""
    url, prefix, label = ctx.net()
    s = ctx.settings
    runs: list[dict[str, Any]] = []
    for run in range(1, s.runs + 1):
        tools = rotate(s.tools, run - 1)
        say(f"P2 ({label}) run {run}/{s.runs}: {', '.join(tools)} "
            f"(warm-up, {s.idle:g} s idle, then one file each)")
        spec = base_spec(ctx, "P2", run, tools, url, dict.fromkeys(tools, ctx.data.p2), 60)
        spec.update(mode="idle", idle=s.idle, stagger=s.stagger,
                    warmup=dict.fromkeys(tools, ctx.data.p2_warm))
        res = drive(spec, ctx.work, prefix, 60 * len(tools) * 3 + s.idle + 300)
        for tool in tools:
            out = res.get("tools", {}).get(tool) or {"error": res.get("error", "no result")}
            out.update(tool=tool, run=run)
            say("    " + report.one_line(out))
            runs.append(out)
    ctx.results["P2"] = {"net": label, "runs": runs}


def scenario_p3(ctx: Context) -> None:
    s = ctx.settings
    per_server: dict[str, Any] = {}
    for kind, server in ctx.loop_servers.items():
        if kind not in s.loop_servers:
            continue
        per_server[kind] = {"net": "loopback", "runs": run_burst(
            ctx, "P3", ctx.data.p3, url=server.url, prefix=[], label=f"loopback, {kind}",
            timeout=120 + s.p3_files * 0.2, tag=kind)}
    ctx.results["P3"] = per_server


def scenario_p4(ctx: Context) -> None:
    url, prefix, label = ctx.net()
    s = ctx.settings
    seconds_at_rate = s.p4_size * 8 / (s.rate_mbit * 1e6)
    ctx.results["P4"] = {"net": label, "runs": run_burst(
        ctx, "P4", ctx.data.p4, url=url, prefix=prefix, label=label,
        timeout=120 + 4 * seconds_at_rate)}


def scenario_p5(ctx: Context) -> None:
    """N instances on one JetStream consumer, N in turn (the order rotates between runs);
    the NATS server is the driver's (``benchmarks/scale.py``), the store is shared."""
    s = ctx.settings
    server = ctx.loop_servers[P5_SERVER]
    timeout = 120 + s.p3_files * 0.2
    runs: list[dict[str, Any]] = []
    for run in range(1, s.runs + 1):
        for n in rotate(s.p5_instances, run - 1):
            say(f"P5 (loopback, {P5_SERVER}) run {run}/{s.runs}: {n} instance(s)")
            spec = base_spec(ctx, "P5", run, ["trollpush"], server.url,
                             {"trollpush": ctx.data.p3}, timeout)
            spec.update(tag=f"n{n}", instances=n, store_pid=server.pid or 0)
            res = drive(spec, ctx.work, [], timeout + 120 + 30 * n,
                        module="benchmarks.scale")
            out = res.get("tools", {}).get("trollpush") or {
                "error": res.get("error", "no result")}
            out.update(tool="trollpush", run=run, instances=n)
            say("    " + report.p5_line(out))
            runs.append(out)
    ctx.results["P5"] = {"net": "loopback", "server": P5_SERVER, "runs": runs}


# --- main -------------------------------------------------------------------------------------


@contextlib.contextmanager
def stopping_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP end the run through the normal clean-up path."""
    def on_signal(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def start_server(server: S3Server, prefix: list[str]) -> None:
    server.start()
    res = subprocess.run([*prefix, sys.executable, "-m", "benchmarks.s3servers", "ready",
                          "--url", server.url, "--bucket", BUCKET, "--timeout", "90"],
                         cwd=ROOT, env=credentials_env(), capture_output=True, text=True,
                         timeout=150)
    if res.returncode != 0:
        raise RuntimeError(f"{server.name} did not start: {res.stderr.strip()}\n"
                           f"{server.log_tail()}")
    say(f"  {server.name}: {server.url} ({server.version()})")


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    if settings.from_json is not None:
        raw = json.loads(settings.from_json.read_text())
        say(report.write(raw["meta"], raw["results"], settings.out, settings.chart))
        say(f"\nwrote {settings.out} and {settings.chart} from {settings.from_json}")
        return 0
    started = time.monotonic()
    when = dt.datetime.now(dt.UTC)
    say(f"trollpush benchmarks ({'quick' if settings.quick else 'full'}): scenarios "
        f"{','.join(settings.scenarios)}, tools {','.join(settings.tools)}, "
        f"{settings.runs} run(s) each")
    results: dict[str, Any] = {}
    meta: dict[str, Any] = {
        "date": when.strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
        "settings": {k: (str(v) if isinstance(v, Path) else v)
                     for k, v in dataclasses.asdict(settings).items()},
        "versions": {**{d: _version(d) for d in (
            "aiobotocore", "botocore", "boto3", "aiohttp", "posttroll", "pyzmq")}},
    }
    work = Path(tempfile.mkdtemp(prefix="trollpush-bench-"))
    engine = snapshot_engine(work)
    meta["versions"]["trollpush"] = git_revision()
    meta["versions"]["trollpush_content"] = content_hash(engine / "trollpush")
    peers_python = None
    if "trollmoves" in settings.tools and set(settings.scenarios) - {"P5"}:  # P5: trollpush
        try:
            peers_python = ensure_peers_venv(settings.peers_venv)
        except (subprocess.SubprocessError, OSError) as err:
            say(f"trollmoves peer unavailable ({err}): left out")
            settings.tools.remove("trollmoves")
            meta["notes"] = [f"trollmoves left out: its virtualenv could not be built ({err})"]
    meta["peer_versions"] = peer_versions(peers_python)
    try:
        meta["tp_endpoint"] = tp_endpoint = trollpush_endpoint(settings)
    except Exception as err:  # a bad --tp-endpoint / --tp-daemon: trollpush says why
        raise SystemExit(f"trollpush refuses the benchmark config: {err}") from err
    meta["concurrency"] = concurrency_of(tp_endpoint)
    link: WanLink | None = None
    servers: list[S3Server] = []
    json_path = settings.json_out or Path(tempfile.gettempdir()) / (
        f"trollpush-bench-{when:%Y%m%dT%H%M%S}.json")
    with stopping_on_signals():
        try:
            say(f"work directory {work}; making the data files")
            data = make_data(settings, work)
            wan_needed = bool({"P1", "P2", "P4"} & set(settings.scenarios))
            why_not = wan_unavailable() if settings.wan else "--no-wan given"
            if wan_needed and why_not is None:
                for name in remove_stale_namespaces():
                    say(f"removed stale namespace {name}")
                link = WanLink(rtt_ms=settings.rtt_ms, rate_mbit=settings.rate_mbit,
                               queue_ms=settings.queue_ms, stats_path=work / "relay.json")
                link.start()
                if settings.client_sysctl:
                    link.set_sysctls(settings.client_sysctl)
                if settings.route_options:
                    link.set_route_options(settings.route_options)
                say(f"WAN link up: {link.describe()}; checking it")
                check = link.check(port=5201, python=sys.executable)
                meta["link"] = {"describe": link.describe(), "check": check,
                                "sysctls": link.sysctls(), "rtt_ms": settings.rtt_ms,
                                "rate_mbit": settings.rate_mbit, "queue_ms": settings.queue_ms}
                say("  " + report.link_line(meta["link"]))
            elif wan_needed:
                say(f"no WAN link: {why_not}; P1, P2 and P4 run on loopback")
                meta["link"] = {"unavailable": why_not}
            say("starting S3 servers")
            wan_server = None
            if link is not None:
                wan_server = S3Server(settings.wan_server, link.server_ip, work,
                                      prefix=link.prefix("server"),
                                      name=f"{settings.wan_server}-wan")
                servers.append(wan_server)
                start_server(wan_server, link.prefix("client"))
            loop_kinds = set(settings.loop_servers) if "P3" in settings.scenarios else set()
            if "P5" in settings.scenarios:
                loop_kinds.add(P5_SERVER)
            if wan_needed and link is None:
                loop_kinds.add(settings.wan_server)
            loop: dict[str, S3Server] = {}
            for kind in sorted(loop_kinds):
                loop[kind] = S3Server(kind, "127.0.0.1", work, name=f"{kind}-loopback")
                servers.append(loop[kind])
                start_server(loop[kind], [])
            meta["servers"] = {s.name: s.version() for s in servers}
            ctx = Context(settings, work, data, peers_python, tp_endpoint, link, wan_server,
                          loop, results)
            overlapping: set[int] = set()
            for scenario in settings.scenarios:
                others = other_runs()
                if others - overlapping:
                    say(f"WARNING: other benchmark run(s) active (pid {sorted(others)}): "
                        "they share the CPUs and disturb the numbers")
                overlapping |= others
                meta["overlapping_runs"] = sorted(overlapping)
                t = time.monotonic()
                {"P1": scenario_p1, "P2": scenario_p2, "P3": scenario_p3,
                 "P4": scenario_p4, "P5": scenario_p5}[scenario](ctx)
                say(f"{scenario} done in {time.monotonic() - t:.0f} s")
        finally:
            for server in servers:
                server.stop()
            if link is not None:
                link.stop()
                with contextlib.suppress(OSError, ValueError):
                    meta.setdefault("link", {})["relay"] = json.loads(
                        (work / "relay.json").read_text())
            meta["duration_s"] = time.monotonic() - started
            meta["machine"]["load_end"] = os.getloadavg()[0]
            meta["versions"]["trollpush_end"] = git_revision()
            meta["versions"]["trollpush_content_end"] = content_hash(ROOT / "trollpush")
            json_path.write_text(json.dumps({"meta": meta, "results": results}, indent=1,
                                            default=str))
            say(f"raw results: {json_path}")
            if settings.keep:
                say(f"work directory kept: {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    summary = report.write(meta, results, settings.out, settings.chart)
    say("")
    say(summary)
    say(f"\nwrote {settings.out} and {settings.chart} "
        f"({(time.monotonic() - started) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
