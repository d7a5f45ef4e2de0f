"""Hot reload: the diff of two configs (pure), and reloads of running daemons: through a
real SIGHUP to ``python -m trollpush run``, in-process (``Service.reload``), and by
``daemon.watch_config``; against the moto server and real posttroll sockets."""

from __future__ import annotations

import asyncio
import copy
import logging
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from trollpush import stats
from trollpush.config import parse_config
from trollpush.reload import RESTART, diff
from trollpush.service import Service

from .helpers import (
    Listener,
    Producer,
    daemon_process,
    free_port,
    link,
    running_daemon,
    started_engine,
    upload_of,
    wait_until,
)

# --- the diff (pure) ---------------------------------------------------------------------


def _config(**change: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "subscribe": {"topics": ["/new/"], "nameserver": False,
                      "addresses": ["tcp://127.0.0.1:40000"]},
        "requests": {"address": "tcp://127.0.0.1:40001"},
        "publish": {"name": "tp", "address": "tcp://127.0.0.1:40002", "nameservers": False},
        "endpoints": {"default": {"url": "http://127.0.0.1:9"},
                      "other": {"url": "http://127.0.0.1:10"}},
        "targets": [{"name": "a", "topics": ["/new/a/"], "destination": "s3://b/a/{uid}"},
                    {"name": "b", "topics": ["/new/b/"], "destination": "s3://b/b/{uid}"},
                    {"name": "c", "topics": ["/new/c/"], "destination": "s3://b/c/{uid}"}],
        "journal": {"path": "memory"},
    }
    raw.update(change)
    return raw


def test_an_unchanged_config_is_no_change() -> None:
    change = diff(parse_config(_config()), parse_config(_config()))
    assert change.empty and not change.restart
    assert change.summary() == "targets +0 -0 ~0 (no change)"


def test_the_summary_counts_targets_endpoints_and_inputs() -> None:
    new = _config()
    new["targets"] = [dict(t, destination=t["destination"].replace("s3://b/", "s3://n/"))
                      if t["name"] in ("a", "b") else t for t in new["targets"]]
    new["targets"].append({"name": "d", "topics": ["/new/d/"], "destination": "s3://b/{uid}"})
    new["endpoints"]["other"]["tries"] = 7
    new["requests"] = {"address": "tcp://127.0.0.1:40011"}
    change = diff(parse_config(_config()), parse_config(new))
    assert change.targets.added == ("d",) and change.targets.changed == ("a", "b")
    assert change.endpoints.changed == ("other",) and not change.endpoints.added
    assert change.inputs.changed == ("requests",)  # subscribe keeps its socket
    assert change.summary().startswith("targets +1 -0 ~2, endpoints ~1, inputs ~1 (")
    assert "changed endpoint other" in change.summary()


def test_added_and_removed_endpoints_and_inputs() -> None:
    new = _config(s3daemon={"address": "127.0.0.1:40012", "endpoint": "default"})
    del new["requests"]
    new["endpoints"]["third"] = {"url": "http://127.0.0.1:11"}
    del new["endpoints"]["other"]
    change = diff(parse_config(_config()), parse_config(new))
    assert change.inputs.added == ("s3daemon",) and change.inputs.removed == ("requests",)
    assert change.endpoints.added == ("third",) and change.endpoints.removed == ("other",)
    assert "endpoints +1 -1" in change.summary() and "inputs +1 -1" in change.summary()


def test_a_change_of_the_limits_needs_a_restart() -> None:
    """Each input checks requests with the daemon's limits, taken when it starts;
    applying new ones would rebind every input, and a rebound REQ/REP or HTTP input
    loses the replies of the requests in flight."""
    old = parse_config(_config())
    change = diff(old, parse_config(_config(daemon={
        "max_request_bytes": "2MiB", "file_timeout": 3, "allowed_roots": ["/data"]})))
    assert change.inputs.changed == ()
    assert set(change.restart) == {"daemon.max_request_bytes", "daemon.file_timeout",
                                   "daemon.allowed_roots"}
    assert change.config.daemon == old.daemon and change.settings == ()


def test_what_needs_a_restart_keeps_its_value_and_the_rest_applies() -> None:
    old = parse_config(_config(daemon={"max_in_flight": 4, "max_age": 60}))
    new = parse_config(_config(
        daemon={"max_in_flight": 8, "max_age": 120, "queue_size": 5, "event_loop": "asyncio"},
        journal={"path": "/tmp/elsewhere.sqlite"},
        publish={"name": "tp2", "address": "tcp://127.0.0.1:40003", "nameservers": False}))
    change = diff(old, new)
    assert set(change.restart) == {"journal.path", "publish", "daemon.max_in_flight",
                                   "daemon.queue_size", "daemon.event_loop"}
    assert set(change.restart) <= set(RESTART)
    assert change.settings == ("daemon.max_age",)
    kept = change.config
    assert kept.journal == old.journal and kept.publish == old.publish
    assert (kept.daemon.max_in_flight, kept.daemon.queue_size, kept.daemon.event_loop) == (
        4, old.daemon.queue_size, old.daemon.event_loop)
    assert kept.daemon.max_age == 120


def test_a_target_moved_in_the_list_is_no_change_of_that_target() -> None:
    new = _config()
    new["targets"] = list(reversed(new["targets"]))
    change = diff(parse_config(_config()), parse_config(new))
    assert not change.targets


# --- running daemons ---------------------------------------------------------------------


def _files(tmp_path: Path, n: int) -> list[Path]:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    out = []
    for i in range(n):
        path = data / f"NOAA-20_20261121_1005_{i:05d}.h5"
        path.write_bytes(b"x" * (100 + i))
        out.append(path)
    return out


def _message(path: Path) -> dict[str, Any]:
    return {"uri": str(path), "uid": path.name, "platform_name": "NOAA-20"}


def _keys(s3: Any, bucket: str, prefix: str) -> set[str]:
    got = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"] for o in got}


def _extra(config: dict[str, Any], bucket: str) -> dict[str, Any]:
    """``config`` with a second target taking the same files into ``extra/``."""
    new = copy.deepcopy(config)
    new["targets"].append({"name": "extra", "topics": ["/new/file/viirs/"],
                           "destination": f"s3://{bucket}/extra/{{uid}}",
                           "publish_topic": "/uploaded/extra/"})
    return new


def test_sighup_adds_a_target_with_no_message_lost_on_pub_sub(
        base_config: dict[str, Any], tmp_path: Path, producer: Producer, listener: Listener,
        s3: Any, bucket: str) -> None:
    """A producer publishes all through the reload: every message is uploaded by the old
    target, the subscription is kept, and files published after the reload land under
    the new target too."""
    files = _files(tmp_path, 120)
    with daemon_process(base_config, tmp_path) as (proc, log):
        wait_until(lambda: "trollpush ready" in log.read_text(), 30, "ready")
        link(producer, listener, "/new/file/viirs/probe")
        sent: list[float] = []
        done = threading.Event()

        def produce() -> None:
            for path in files:
                producer.send("/new/file/viirs/x", "file", _message(path))
                sent.append(time.monotonic())
                done.wait(0.02)  # a steady stream across the reload (pacing only)

        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        wait_until(lambda: len(sent) >= 20, 15, "the stream to start")
        cfg = tmp_path / "trollpush.yaml"
        cfg.write_text(yaml.safe_dump(_extra(base_config, bucket)))
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "config reloaded" in log.read_text(), 15, "the reload")
        after = len(sent)  # sent once the reload was applied
        thread.join(timeout=30)
        assert len(sent) == len(files) and after < len(files) - 20
        listener.wait_for(lambda ms: {m.data.get("uid") for m in ms if m.type == "file"
                                      and m.subject.startswith("/uploaded/viirs/")}
                          >= {p.name for p in files}, timeout=60, what="every completion")
        later = {f"extra/{p.name}" for p in files[after:]}
        wait_until(lambda: later <= _keys(s3, bucket, "extra/"), 30, "the new target")
        text = log.read_text()
        assert "targets +1 -0 ~0" in text
        assert "input subscribe stopped" not in text  # the subscription was kept
        assert "rejected subscribe message /new/file/viirs/x" not in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert _keys(s3, bucket, "j01/") and len(_keys(s3, bucket, "j01/")) == len(files)


def _reload(daemon: Service) -> bool:
    return asyncio.run_coroutine_threadsafe(daemon.reload(), daemon.loop).result(30)


def _write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_broken_config_is_refused_and_the_old_one_runs_on(
        base_config: dict[str, Any], tmp_path: Path, producer: Producer, listener: Listener,
        s3: Any, bucket: str, caplog: pytest.LogCaptureFixture) -> None:
    cfg = _write(tmp_path / "trollpush.yaml", base_config)
    broken = _extra(base_config, bucket)
    broken["targets"][-1]["endpoint"] = "nowhere"
    broken["daemon"]["queue_size"] = 0
    broken["endpoints"]["default"]["triez"] = 3
    with running_daemon(cfg) as daemon:
        link(producer, listener, "/new/file/viirs/probe")
        before = daemon.config
        _write(cfg, broken)
        with caplog.at_level(logging.ERROR, logger="trollpush.reload"):
            assert _reload(daemon) is False
        refusal = "\n".join(r.getMessage() for r in caplog.records if "refused" in
                            r.getMessage())
        for key in ("targets[1].endpoint", "daemon.queue_size", "endpoints.default.triez"):
            assert key in refusal
        assert "3 problem(s)" in refusal
        assert daemon.config is before
        assert daemon.stats.count(stats.RELOADS, outcome="refused") == 1
        assert daemon.stats.count(stats.RELOADS, outcome="applied") == 0
        # the old config routes as before: one target, nothing under extra/
        (path,) = _files(tmp_path, 1)
        producer.send("/new/file/viirs/x", "file", _message(path))
        listener.wait_for(lambda ms: any(m.type == "file" for m in ms), 30, "completion")
        assert _keys(s3, bucket, "j01/") and not _keys(s3, bucket, "extra/")


def test_an_unchanged_endpoint_keeps_its_pool_a_changed_one_gets_a_new_one(
        base_config: dict[str, Any], tmp_path: Path, s3_url: str) -> None:
    base_config["endpoints"] = {
        name: {"url": s3_url, "region": "us-east-1", "prewarm": 1, "keepalive_interval": 0}
        for name in ("default", "other")}
    cfg = _write(tmp_path / "trollpush.yaml", base_config)
    with running_daemon(cfg) as daemon:
        engine = daemon.transfer
        kept, old = engine.pool("default"), engine.pool("other")
        opened = kept.opened
        subscriber = daemon.input("subscribe")
        new = copy.deepcopy(base_config)
        new["endpoints"]["other"]["tries"] = 5
        new["requests"]["address"] = f"tcp://127.0.0.1:{free_port()}"
        _write(cfg, new)
        assert _reload(daemon) is True
        assert engine.pool("default") is kept and kept.opened == opened
        assert engine.pool("other") is not old and engine.pool("other").config.tries == 5
        wait_until(lambda: old.client is None, 15, "the replaced pool closed")
        assert kept.client is not None
        assert daemon.input("subscribe") is subscriber  # its socket kept
        assert daemon.input("requests").describe().endswith(new["requests"]["address"])
        assert daemon.stats.count(stats.RELOADS, outcome="applied") == 1


def test_watch_config_picks_up_a_change_of_the_file(
        base_config: dict[str, Any], tmp_path: Path, bucket: str) -> None:
    base_config["daemon"]["watch_config"] = True
    cfg = _write(tmp_path / "trollpush.yaml", base_config)
    with running_daemon(cfg) as daemon:
        assert [t.name for t in daemon.config.targets] == ["viirs"]
        _write(cfg, _extra(base_config, bucket))
        wait_until(lambda: [t.name for t in daemon.config.targets] == ["viirs", "extra"],
                   15, "the change picked up")
        assert daemon.stats.count(stats.RELOADS, outcome="applied") == 1
        broken = _extra(base_config, bucket)
        broken["daemon"]["queue_size"] = -1
        _write(cfg, broken)
        wait_until(lambda: daemon.stats.count(stats.RELOADS, outcome="refused") == 1, 15,
                   "the broken file refused")
        assert [t.name for t in daemon.config.targets] == ["viirs", "extra"]


def test_a_request_during_a_reload_is_done_after_it(
        base_config: dict[str, Any], tmp_path: Path) -> None:
    """The running reload may have read the file already: a second SIGHUP meanwhile
    gets a reload of its own (and a third one no more than that)."""
    cfg = _write(tmp_path / "trollpush.yaml", base_config)
    with running_daemon(cfg) as daemon:
        def three() -> None:
            for why in ("first", "second", "third"):
                daemon.reloader.request(why)
        daemon.loop.call_soon_threadsafe(three)
        wait_until(lambda: daemon.stats.count(stats.RELOADS, outcome="applied") == 2, 15,
                   "two reloads")
        assert _reload(daemon) is True  # and nothing else was pending
        assert daemon.stats.count(stats.RELOADS, outcome="applied") == 3


def test_no_reload_once_the_daemon_stops(base_config: dict[str, Any], tmp_path: Path,
                                         bucket: str) -> None:
    """A SIGHUP while the daemon shuts down would open pools and bind inputs that
    nothing closes any more."""
    cfg = _write(tmp_path / "trollpush.yaml", base_config)
    with running_daemon(cfg) as daemon:
        asyncio.run_coroutine_threadsafe(daemon.reloader.close(), daemon.loop).result(10)
        _write(cfg, _extra(base_config, bucket))
        daemon.loop.call_soon_threadsafe(daemon.reloader.request, "SIGHUP")
        assert _reload(daemon) is False
        assert [t.name for t in daemon.config.targets] == ["viirs"]
        assert daemon.stats.count(stats.RELOADS, outcome="applied") == 0


async def test_a_request_keeps_the_pool_it_started_with(s3_url: str, bucket: str,
                                                        tmp_path: Path) -> None:
    """An engine view taken before a reload uploads through the pools it had; the
    replaced pool is closed only when retired."""
    engine = await started_engine(s3_url)
    try:
        before = engine.view()
        old = engine.pool("default")
        changed = {"default": replace(old.config, tries=4)}
        opened = await engine.endpoints.open(changed, ["default"], {})
        retired = engine.reconfigure(changed, opened, warm_buckets={}, roots=(),
                                     file_timeout=30.0)
        assert [r.pool for r in retired] == [old] and engine.pool("default") is not old
        (path,) = _files(tmp_path, 1)
        (result,) = await before.upload_all([upload_of(path, bucket, "old-pool")], "default",
                                            deadline=time.time() + 30, what="test")
        assert result.ok and old.client is not None
        (result,) = await engine.view().upload_all(
            [upload_of(path, bucket, "new-pool")], "default", deadline=time.time() + 30,
            what="test")
        assert result.ok
        await engine.endpoints.retire(retired)
        assert old.client is None and engine.pool("default").client is not None
    finally:
        await engine.close()
