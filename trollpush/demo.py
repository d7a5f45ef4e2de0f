"""``trollpush demo``: the real pipeline end to end on an embedded local S3 server.

Starts a moto S3 server on loopback, the daemon (``trollpush run``, as a subprocess) with
``examples/demo.yaml`` on free ports, a posttroll producer announcing generated files, a
subscriber printing each completion as it arrives, ``trollpush send`` over REQ/REP, and
an s3nd-style POST to the HTTP API with the standard library.
Everything it starts is stopped before it returns.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from .client import Unreachable, send

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE / "demo.yaml"  # examples/demo.yaml, shipped inside the package
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def say(text: str) -> None:
    print(text, flush=True)


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """A moto S3 server on a free loopback port, stopped on exit."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as err:  # pragma: no cover - depends on the install
        raise SystemExit("trollpush demo needs moto: pip install 'trollpush[demo]'") from err
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def demo_config(source: Path, s3_url: str, workdir: Path) -> tuple[Path, dict[str, Any]]:
    """The demo config with free ports and the embedded store's URL."""
    cfg = yaml.safe_load(source.read_text())
    cfg["subscribe"]["addresses"] = [f"tcp://127.0.0.1:{free_port()}"]
    cfg["requests"]["address"] = f"tcp://127.0.0.1:{free_port()}"
    if cfg.get("http") is not None:
        cfg["http"]["address"] = f"127.0.0.1:{free_port()}"
    cfg["publish"]["address"] = f"tcp://127.0.0.1:{free_port()}"
    for ep in cfg["endpoints"].values():
        ep["url"] = s3_url
    cfg["journal"] = {"path": str(workdir / "journal.sqlite")}  # the demo leaves no trace
    path = workdir / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, cfg


def make_files(workdir: Path, count: int) -> list[Path]:
    """VIIRS-like granules of varied sizes, named to match the demo pattern."""
    start = dt.datetime(2026, 11, 21, 10, 0)
    files = []
    for i in range(count):
        when = start + dt.timedelta(minutes=i)
        platform = "NOAA-20" if i % 2 else "Suomi-NPP"
        path = workdir / f"{platform}_{when:%Y%m%d_%H%M}_{70000 + i:05d}.h5"
        path.write_bytes(os.urandom(1024 * (1 + (i * 97) % 512)))
        files.append(path)
    return files


def run_demo(*, config_path: str | None = None, files: int = 8, verbose: bool = False) -> int:
    """Run the demo; 0 when every expected object landed and was announced."""
    from posttroll.publisher import create_publisher_from_dict_config
    from posttroll.subscriber import create_subscriber_from_dict_config

    source = Path(config_path) if config_path else DEFAULT_CONFIG
    if not source.exists():
        raise SystemExit(f"demo config not found: {source} (pass --config)")
    with tempfile.TemporaryDirectory(prefix="trollpush-demo-") as tmp, s3_server() as s3_url:
        work = Path(tmp)
        cfg_path, cfg = demo_config(source, s3_url, work)
        say(f"S3 server (moto) on {s3_url}; config {source} -> {cfg_path}")
        _make_buckets(s3_url, cfg)
        env = {**os.environ, **CREDENTIALS}
        log = open(work / "daemon.log", "w+")  # noqa: SIM115 - closed below
        daemon = subprocess.Popen([sys.executable, "-m", "trollpush", "run", str(cfg_path)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env)
        say(f"daemon started (pid {daemon.pid})")
        producer = create_publisher_from_dict_config(
            {"name": "demo-producer", "address": cfg["subscribe"]["addresses"][0],
             "nameservers": False})
        producer.start()
        listener = create_subscriber_from_dict_config(
            {"addresses": [cfg["publish"]["address"]], "nameserver": False, "topics": ["/"]})
        try:
            _wait_ready(work / "daemon.log", daemon)
            say("linking pub-sub: a message about a file on another host, repeated until "
                "its failure announcement comes back (subscriptions take a moment to join):")
            failures = _probe(producer, listener)
            granules = make_files(work, files)
            expected = {p.name for p in granules}
            seen, more, elapsed = _burst(producer, listener, granules)
            failures += more
            result = _send_one(work, cfg)
            posted = _post_one(work, cfg)
            landed = _count_objects(s3_url, cfg)
            complete = sum(1 for n in expected if len(seen.get(n, ())) >= 2)
            say(f"\nsummary: {complete}/{len(expected)} granules uploaded to both targets and "
                f"announced in {elapsed:.2f} s; {landed} objects in the store; "
                f"{failures} failure announcement(s) (1 expected)")
            ok = (complete == len(expected) and result is not None and result.ok
                  and posted in (None, 200))
        finally:
            listener.close()
            producer.stop()
            text = _stop(daemon, log)
        if verbose or not ok:
            say("\n--- daemon log ---\n" + text)
        say("demo " + ("OK" if ok else "FAILED") + f"; daemon exited with {daemon.returncode}")
        return 0 if ok else 1


def _burst(producer: Any, listener: Any, granules: list[Path]
           ) -> tuple[dict[str, set[str]], int, float]:
    """Announce every granule at once; what each landed as, failures seen, seconds."""
    from posttroll.message import Message

    say(f"announcing {len(granules)} granules on /new/file/viirs/ "
        "(each goes to 2 targets: fan-out)")
    expected = {p.name for p in granules}
    t0 = time.monotonic()
    seen: dict[str, set[str]] = {}
    published_at: dict[str, float] = {}
    failures = 0
    for p in granules:
        published_at[p.name] = time.monotonic()
        producer.send(Message("/new/file/viirs/", "file",
                              {"uri": str(p), "uid": p.name, "sensor": "viirs"}).encode())
    deadline = time.monotonic() + 60
    for m in listener.recv(timeout=0.2):
        if m is not None:
            failures += _show(m, seen, published_at)
        if all(len(seen.get(n, ())) >= 2 for n in expected) or time.monotonic() > deadline:
            break
    return seen, failures, time.monotonic() - t0


def _send_one(work: Path, cfg: Mapping[str, Any]) -> Any:
    """``trollpush send`` of one more file over REQ/REP; its result, or None."""
    say("trollpush send over REQ/REP:")
    extra = work / "manual-upload.nc"
    extra.write_bytes(os.urandom(4096))
    try:
        result = send(str(extra), "s3://trollpush-demo/manual/",
                      server=cfg["requests"]["address"], timeout=20)
    except Unreachable as err:
        say(f"  send failed: {err}")
        return None
    say(f"  send -> {result.message.data.get('uri')} ({'ok' if result.ok else result.error})")
    return result


def _post_one(work: Path, cfg: Mapping[str, Any]) -> int | None:
    """One file to the HTTP API, as a producer written for s3nd would send it (nothing
    but the standard library); the status code (None: no http section)."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    if cfg.get("http") is None:
        return None
    say("POST /upload to the HTTP API (s3nd's fields, urllib):")
    extra = work / "posted.nc"
    extra.write_bytes(os.urandom(4096))
    data = urllib.parse.urlencode({"file": str(extra), "uri": "s3://trollpush-demo/http/",
                                   "slug": "demo"}).encode()
    try:
        with urllib.request.urlopen(f"http://{cfg['http']['address']}/upload", data,
                                    timeout=30) as response:
            code, reply = response.status, json.load(response)
    except urllib.error.HTTPError as err:
        with err:
            code, reply = err.code, json.load(err)
    except OSError as err:
        say(f"  POST failed: {err}")
        return -1
    task = reply.get("task", {})
    say(f"  {code} {reply.get('msg')} -> {task.get('uri')} "
        f"({task.get('upload_total_seconds')} s)")
    return int(code)


def _stop(daemon: subprocess.Popen[bytes], log: Any) -> str:
    """SIGTERM the daemon (killed if it does not stop in 20 s); its log."""
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(timeout=20)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()
    log.seek(0)
    text: str = log.read()
    log.close()
    return text


def failure_line(data: Mapping[str, Any]) -> str:
    """One line for a failure announcement, naming the file once.

    The daemon's error texts often start with the file's URI (``URI: what went wrong``);
    the line names it already, so that prefix is dropped.
    """
    uri, error = data.get("uri"), str(data.get("error"))
    for prefix in (f"{uri}: ", f"{uri!r}: ") if uri is not None else ():
        if error.startswith(prefix):
            error = error[len(prefix):]
            break
    dest = data.get("destination")
    where = f"{uri} -> {dest}" if dest else f"{uri}"
    return f"  FAILED {where}: {error} [{data.get('reason')}]"


def _show(m: Any, seen: dict[str, set[str]], published_at: dict[str, float]) -> int:
    if m.type == "failure":
        say(failure_line(m.data))
        return 1
    if m.type == "file":
        uid = m.data["uri"].rsplit("/", 1)[-1]
        if m.data["uri"] in seen.setdefault(uid, set()):
            return 0
        seen[uid].add(m.data["uri"])
        lat = (time.monotonic() - published_at.get(uid, time.monotonic())) * 1000
        say(f"  {m.subject:<28} {m.data['uri']}  {m.data['size']:>7} B  {lat:6.0f} ms")
    return 0


def _probe(producer: Any, listener: Any, timeout: float = 30.0) -> int:
    """Publish a refused message until its failure comes back: both links are joined."""
    from posttroll.message import Message

    probe = Message("/new/file/viirs/", "file", {"uri": "ssh://elsewhere.example/data/x.h5"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        producer.send(probe.encode())
        for m in listener.recv(timeout=0.2):
            if m is not None and m.type == "failure" and m.data.get("reason") == "remote_file":
                return _show(m, {}, {})
            break
    raise SystemExit(f"no failure announcement within {timeout:g} s: pub-sub is not linked")


def _wait_ready(log: Path, daemon: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "trollpush ready" in log.read_text():
            return
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited early:\n{log.read_text()}")
        time.sleep(0.05)
    raise SystemExit(f"the daemon was not ready within {timeout:g} s:\n{log.read_text()}")


def _s3(s3_url: str) -> Any:
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3", endpoint_url=s3_url, region_name="us-east-1",
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


def _buckets(cfg: dict[str, Any]) -> set[str]:
    return {t["destination"][5:].split("/", 1)[0] for t in cfg["targets"]}


def _make_buckets(s3_url: str, cfg: dict[str, Any]) -> None:
    client = _s3(s3_url)
    for bucket in _buckets(cfg):
        client.create_bucket(Bucket=bucket)


def _count_objects(s3_url: str, cfg: dict[str, Any]) -> int:
    client = _s3(s3_url)
    return sum(client.list_objects_v2(Bucket=b).get("KeyCount", 0) for b in _buckets(cfg))
