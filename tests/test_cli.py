"""`trollpush run` as a subprocess, driven only through its sockets; `send` exit codes."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from trollpush import cli, logsafe

from .helpers import Listener, Producer, daemon_process, free_port, link, wait_until

pytestmark = pytest.mark.slow


def trollpush(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trollpush", *args], capture_output=True,
                          text=True, timeout=timeout, env=os.environ.copy())


@pytest.fixture(params=["uvloop", "asyncio"])
def daemon_proc(base_config: dict[str, Any], tmp_path: Path, request: pytest.FixtureRequest
                ) -> Iterator[subprocess.Popen[str]]:
    """`trollpush run CONFIG` in its own process, on each event loop (daemon.event_loop);
    stopped with SIGTERM by the test."""
    base_config["daemon"]["event_loop"] = request.param
    cfg = tmp_path / "trollpush.yaml"
    cfg.write_text(yaml.safe_dump(base_config))
    log = tmp_path / "daemon.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "trollpush", "run", str(cfg)],
                                stdout=out, stderr=subprocess.STDOUT, text=True,
                                env=os.environ.copy())
    try:
        wait_until(lambda: "trollpush ready" in log.read_text() or proc.poll() is not None,
                   30, "daemon ready")
        assert proc.poll() is None, log.read_text()
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_send_exit_codes(daemon_proc: subprocess.Popen[str], ports: dict[str, int],
                         granule: Path, s3: Any, bucket: str) -> None:
    server = f"tcp://127.0.0.1:{ports['req']}"
    ok = trollpush("send", str(granule), f"s3://{bucket}/in/", "--server", server)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == ""
    assert s3.head_object(Bucket=bucket, Key=f"in/{granule.name}")["ContentLength"] == 70_000

    js = trollpush("send", str(granule), f"myalias/{bucket}/renamed.h5", "--server", server,
                   "--json", "--meta", "orbit=123", "--meta", "sensor=viirs")
    assert js.returncode == 0, js.stderr
    reply = json.loads(js.stdout)
    assert reply["type"] == "file"
    assert reply["data"]["uri"] == f"s3://{bucket}/renamed.h5"
    assert reply["data"]["orbit"] == 123 and reply["data"]["sensor"] == "viirs"

    failed = trollpush("send", str(granule), "s3://no-such-bucket-cli/x", "--server", server)
    assert failed.returncode == 1
    assert "NoSuchBucket" in failed.stderr and "permanent_error" in failed.stderr

    missing = trollpush("send", str(granule.parent / "nope.h5"), f"s3://{bucket}/x",
                        "--server", server)
    assert missing.returncode == 1 and "file_missing" in missing.stderr

    usage = trollpush("send", str(granule), "http://not-s3/x", "--server", server)
    assert usage.returncode == 2 and "s3://" in usage.stderr

    nowait = trollpush("send", str(granule), f"s3://{bucket}/later/", "--server", server,
                       "--no-wait")
    assert nowait.returncode == 0, nowait.stderr
    wait_until(lambda: bool(s3.list_objects_v2(Bucket=bucket, Prefix="later/")
                            .get("KeyCount")), 15, "no-wait upload")

    # SIGHUP reloads the (unchanged) config: the daemon goes on
    daemon_proc.send_signal(signal.SIGHUP)
    again = trollpush("send", str(granule), f"s3://{bucket}/after-hup/", "--server", server)
    assert again.returncode == 0, again.stderr

    daemon_proc.send_signal(signal.SIGTERM)
    assert daemon_proc.wait(timeout=30) == 0


def test_send_unreachable_daemon_exits_2(granule: Path) -> None:
    start = time.monotonic()
    res = trollpush("send", str(granule), "s3://b/k", "--server",
                    f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.5")
    assert res.returncode == 2 and "no answer" in res.stderr
    assert time.monotonic() - start < 20


def test_pubsub_through_the_process(daemon_proc: subprocess.Popen[str], producer: Producer,
                                    listener: Listener, granule: Path, s3: Any,
                                    bucket: str) -> None:
    """Independent posttroll publisher in, independent subscriber out, a separate daemon."""
    link(producer, listener, "/new/file/viirs/")
    producer.send("/new/file/viirs/", "file", {"uri": f"file://{granule}", "sensor": "viirs"})
    msgs = listener.wait_for(lambda ms: any(m.type == "file" for m in ms), 20)
    done = next(m for m in msgs if m.type == "file")
    assert done.data["uri"] == f"s3://{bucket}/j01/2026/11/21/{granule.name}"
    body = s3.get_object(Bucket=bucket, Key=f"j01/2026/11/21/{granule.name}")["Body"].read()
    assert body == granule.read_bytes()
    daemon_proc.send_signal(signal.SIGTERM)
    assert daemon_proc.wait(timeout=30) == 0


def test_run_with_broken_config_exits_1(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("endpoints: {}\ntargets: 3\n")
    res = trollpush("run", str(cfg))
    assert res.returncode == 1
    assert "endpoints" in res.stderr and "targets" in res.stderr


def test_demo_runs_end_to_end() -> None:
    """`trollpush demo`: embedded S3, daemon, producer, subscriber; everything stopped."""
    res = trollpush("demo", "--files", "4", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4/4 granules uploaded to both targets" in res.stdout
    assert "demo OK; daemon exited with 0" in res.stdout


def test_log_config_dictconfig(base_config: dict[str, Any], tmp_path: Path) -> None:
    """`-c/--log-config` takes a YAML dictConfig, as in the other pytroll daemons."""
    logfile = tmp_path / "trollpush.log"
    logcfg = tmp_path / "log.yaml"
    logcfg.write_text(yaml.safe_dump({
        "version": 1,
        "formatters": {"plain": {"format": "%(levelname)s %(name)s %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(logfile),
                              "formatter": "plain"}},
        "root": {"level": "INFO", "handlers": ["file"]}}))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(base_config))
    proc = subprocess.Popen([sys.executable, "-m", "trollpush", "run", str(cfg), "-c",
                             str(logcfg)], env=os.environ.copy())
    try:
        wait_until(lambda: logfile.exists() and "trollpush ready" in logfile.read_text(), 30,
                   "ready line in the configured log file")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = logfile.read_text()
    assert "INFO trollpush.service stopped" in text
    assert "testing-secret" not in text


def test_the_daemon_logs_from_a_thread_of_its_own() -> None:
    """Records reach the configured handlers, in order and all of them by the end, but
    are written by another thread than the one that logged them (the event loop's)."""
    seen: list[tuple[str, str]] = []

    class Recording(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((threading.current_thread().name, record.getMessage()))

    root = logging.getLogger()
    handler = Recording(level=logging.INFO)
    saved, root.handlers = root.handlers, [handler]
    try:
        with cli.logging_in_a_thread():
            assert root.handlers != [handler]
            for i in range(200):
                logging.getLogger("trollpush.test").warning("line %d", i)
            logging.getLogger("trollpush.test").debug("below the handler's level")
        assert root.handlers == [handler]
    finally:
        root.handlers = saved
    assert [m for _, m in seen] == [f"line {i}" for i in range(200)]
    assert threading.current_thread().name not in {t for t, _ in seen}


FORGED = "[2026-01-01 00:00:00,000 ERROR    trollpush.daemon] forged"
RECORD_START = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|"
                          r"CRITICAL) +\S+\] ")


def closed_stdout_run(*args: str, buffered: bool = True, env: dict[str, str] | None = None,
                      timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`trollpush ARGS` with stdout a pipe whose reader has gone (`| head`, early)."""
    env = dict(env or os.environ)
    if buffered:
        env.pop("PYTHONUNBUFFERED", None)
    else:
        env["PYTHONUNBUFFERED"] = "1"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "trollpush", *args], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=timeout, env=env)
    finally:
        os.close(write_end)


def assert_quiet_end(res: subprocess.CompletedProcess[str],
                     code: int = cli.EXIT_STDOUT_CLOSED) -> None:
    assert res.returncode == code, res.stderr
    for text in ("Traceback", "BrokenPipeError", "Exception ignored"):
        assert text not in res.stderr, res.stderr


def test_no_log_line_can_be_forged(base_config: dict[str, Any], tmp_path: Path,
                                   ports: dict[str, int], producer: Producer,
                                   listener: Listener, s3: Any, bucket: str) -> None:
    """File names, metadata and error texts with newlines, CR, ESC, U+2028 reach the log
    of a real `trollpush run -v` through REQ/REP and pub-sub: every line is a record of
    the log's format (or a traceback's), none is forged, the names are there escaped."""
    from trollpush.client import send

    names = [f"nl\n{FORGED}.h5", f"cr\r{FORGED}.h5", f"esc\x1b[2K\x1b[1G{FORGED}.h5",
             f"ls\u2028{FORGED}\u2029.h5", f"mix\r\n\x85\t{FORGED}\n.h5"]
    server = f"tcp://127.0.0.1:{ports['req']}"
    with daemon_process(base_config, tmp_path, "-v") as (proc, log):
        wait_until(lambda: "trollpush ready" in log.read_text() or proc.poll() is not None,
                   30, "daemon ready")
        assert proc.poll() is None, log.read_text()
        link(producer, listener, "/new/file/viirs/")
        unrouted: set[str] = set()
        for i, name in enumerate(names):
            path = tmp_path / name
            path.write_bytes(os.urandom(1000 + i))
            landed = send(str(path), f"s3://{bucket}/ok/{i}.h5", server=server, timeout=20,
                          meta={"note": f"meta\n{FORGED}"})
            assert landed.ok, landed.error
            missing = send(str(tmp_path / f"gone-{name}"), f"s3://{bucket}/gone/{i}.h5",
                           server=server, timeout=20)
            assert not missing.ok
            nobucket = send(str(path), f"s3://no-such-bucket-logs/{i}.h5", server=server,
                            timeout=20)
            assert not nobucket.ok
            unrouted.add(f"file://{tmp_path}/unrouted-{name}")
            producer.send("/new/file/viirs/", "file", {"uri": f"file://{tmp_path}/unrouted-"
                                                               f"{name}", "sensor": name})
        listener.wait_for(lambda ms: unrouted <= {m.data.get("uri") for m in ms
                                                  if m.type == "failure"}, 20,
                          "failure announcements of the pub-sub messages")
        # while the daemon is up: `send --json` into a closed pipe (issue 9, item 14)
        sent = closed_stdout_run("send", str(tmp_path / names[0]), f"s3://{bucket}/json.h5",
                                 "--server", server, "--json")
        assert_quiet_end(sent)
        assert s3.head_object(Bucket=bucket, Key="json.h5")["ContentLength"] == 1000
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0

    text = log.read_text(encoding="utf-8")
    for char in "\r\x1b\x85\u2028\u2029":
        assert char not in text, f"{char!r} in the log"
    lines = text.splitlines()
    assert not [line for line in lines if line.startswith(FORGED)]
    in_traceback = False
    for line in lines:
        if RECORD_START.match(line):
            in_traceback = False
        elif line == "Traceback (most recent call last):":
            in_traceback = True
        else:
            assert in_traceback, f"not a record of the log: {line!r}"
    for name in names:
        escaped = logsafe.escape(name)
        assert f"{tmp_path}/{escaped}" in text  # its upload was logged, in one line
        assert f"gone-{escaped}" in text and f"unrouted-{escaped}" in text


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("command", ["check", "match", "no-match", "help"])
def test_a_closed_stdout_ends_quietly(command: str, buffered: bool, tmp_path: Path) -> None:
    """`trollpush check CONFIG | head`: no traceback, no "Exception ignored", whether
    stdout is block-buffered (the default into a pipe) or not; exit 141 where it would
    have been 0, the command's own code otherwise (match: 1 when no target takes it)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "requests": {"address": f"tcp://127.0.0.1:{free_port()}"},
        "endpoints": {"default": {"url": "http://127.0.0.1:9", "region": "us-east-1"}},
        "targets": [{"name": "h5", "pattern": "{name}.h5", "destination": "s3://b/{uid}"}]}))
    args = {"check": ["check", str(cfg)], "match": ["match", str(cfg), str(tmp_path / "x.h5")],
            "no-match": ["match", str(cfg), str(tmp_path / "x.nc")], "help": ["--help"]}[command]
    read = trollpush(*args)  # with a reader: as before
    assert read.stdout and not read.stderr, read.stderr
    assert read.returncode == (1 if command == "no-match" else 0)
    closed = closed_stdout_run(*args, buffered=buffered)
    assert_quiet_end(closed, read.returncode or cli.EXIT_STDOUT_CLOSED)


def test_demo_into_a_closed_stdout(tmp_path: Path) -> None:
    """The demo carries on to its end (so it stops what it started) and exits 141."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    res = closed_stdout_run("demo", "--files", "1", env=env, timeout=120)
    assert_quiet_end(res)
    assert not list(tmp_path.glob("trollpush-demo-*"))  # its work directory is gone
    left = [p.name for p in Path("/proc").glob("[0-9]*")
            if str(tmp_path).encode() in _cmdline(p)]
    assert not left, f"processes left running: {left}"


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return b""


def test_check_and_match_show_object_options_never_the_sse_c_key(tmp_path: Path) -> None:
    """`check` shows each endpoint's and target's object options, `match` the exact ones
    a file would be sent with, a bad one as its failure; an SSE-C key only by its MD5,
    in no form (raw, base64, hex) anywhere in the output."""
    import base64
    import hashlib

    key = bytes(range(65, 97))  # 32 printable bytes: a raw leak would be readable text
    key_file = tmp_path / "sse-c.key"
    key_file.write_bytes(base64.b64encode(key) + b"\n")
    md5 = base64.b64encode(hashlib.md5(key).digest()).decode()
    cfg = tmp_path / "trollpush.yaml"
    cfg.write_text(yaml.safe_dump({
        "requests": None,
        "endpoints": {"default": {"url": "http://127.0.0.1:9", "object": {
            "storage_class": "STANDARD_IA", "content_type": "auto",
            "metadata": {"platform": "{platform_name}", "start-time": "{start_time:%Y%m%d}"},
            "tags": {"mission": "{platform_name}"},
            "encryption": "sse-c", "sse_c_key_file": str(key_file)}}},
        "targets": [
            {"name": "l1", "pattern": "{platform_name}_{start_time:%Y%m%d}.json",
             "destination": "s3://l1/{uid}",
             "object": {"acl": "bucket-owner-full-control", "if_none_match": True,
                        "tags": {"level": "l1"}}},
            {"name": "station", "destination": "s3://l1/{uid}",
             "object": {"metadata": {"station": "{station}"}}},
            {"name": "long", "destination": "s3://l1/{uid}",
             "object": {"tags": {"note": "{note}"}}},
        ]}))
    check = trollpush("check", str(cfg))
    assert check.returncode == 0, check.stderr
    sse = f"encryption=sse-c (key md5 {md5})"
    endpoint_line = next(x for x in check.stdout.splitlines() if x.startswith("endpoint "))
    assert ("object: storage_class=STANDARD_IA content_type=auto metadata=[platform, "
            f"start-time] tags=[mission] {sse}") in endpoint_line
    l1_line = next(x for x in check.stdout.splitlines() if x.startswith("target l1:"))
    assert "acl=bucket-owner-full-control" in l1_line and "if_none_match=true" in l1_line
    assert "tags=[mission, level]" in l1_line and sse in l1_line
    assert "warning: endpoints.default.object.encryption: sse-c over http://" in check.stdout

    match = trollpush("match", str(cfg), str(tmp_path / "NOAA-20_20261121.json"),
                      "--meta", "note=" + "n" * 300, "--meta", "platform_name=NOAA-20",
                      "--meta", "start_time=2026-11-21T10:00:00")
    assert match.returncode == 0, match.stderr
    lines = match.stdout.splitlines()
    at = lines.index("l1: s3://l1/NOAA-20_20261121.json (endpoint default, announce on "
                     "/trollpush/uploaded/)")
    assert lines[at + 1] == (
        "    object: storage_class=STANDARD_IA content_type=application/json "
        "acl=bucket-owner-full-control metadata={'platform': 'NOAA-20', 'start-time': "
        f"'20261121'}} tags={{'mission': 'NOAA-20', 'level': 'l1'}} {sse} "
        "if_none_match=true")
    assert ("station: FAILS compose_error: targets[station].object.metadata.station: "
            "unknown field {station}") in match.stdout
    assert "long: FAILS bad_object_options: targets[long].object.tags.note: composed" \
        in match.stdout
    for out in (check.stdout + check.stderr, match.stdout + match.stderr):
        for form in (key.decode(), base64.b64encode(key).decode(), key.hex(),
                     key.hex().upper(), repr(key)):
            assert form not in out
