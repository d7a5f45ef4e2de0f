"""Prometheus metrics: GET /metrics scraped with prometheus-client's parser from a real
daemon (moto in server mode, a real HTTP client) before and after a burst; the series,
their names and labels; ``http.upload: false``; no secret in a scrape; TCP_INFO."""

from __future__ import annotations

import os
import platform
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from trollpush import __version__
from trollpush.client import send
from trollpush.config import parse_config
from trollpush.errors import ConfigError
from trollpush.metrics import PREFIX, collector_registry, scrape
from trollpush.service import Service
from trollpush.stats import (
    RATE_BUCKETS,
    REQUESTS,
    SERIES,
    TRANSFER_SECONDS,
    UPLOADS,
    Stats,
)
from trollpush.transfer.tcpinfo import TCP_INFO, TcpStats, read

from .helpers import free_port, running_daemon, started_engine, wait_until

#: a sample: (name, labels) -> value
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
UNITS = ("_seconds", "_bytes", "_bytes_per_second", "_requests", "_segments", "_info",
         "_connections_open", "_connections_idle", "_in_flight", "_queued", "_messages")


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Every sample of a scrape, and every family's type, by prometheus-client's parser;
    an empty label is no label (as Prometheus stores it)."""
    samples: Samples = {}
    kinds = {}
    for family in text_string_to_metric_families(text):
        kinds[family.name] = family.type
        for s in family.samples:
            labels = frozenset((k, v) for k, v in s.labels.items() if v)
            assert (s.name, labels) not in samples, f"{s.name} {labels}: twice"
            samples[(s.name, labels)] = s.value
    return samples, kinds


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample (0 when the series has no such sample yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode(), err.headers.get("Content-Type", "")


def post(url: str, fields: dict[str, str], headers: dict[str, str] | None = None
         ) -> tuple[int, str]:
    req = urllib.request.Request(url, data=urllib.parse.urlencode(fields).encode(),
                                 method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode()


def base_url(daemon: Service) -> str:
    return f"http://{daemon.input('http').server.address}"


def scraped(daemon: Service, headers: dict[str, str] | None = None) -> Samples:
    code, text, kind = http_get(base_url(daemon) + "/metrics", headers)
    assert code == 200, text
    assert kind.startswith("text/plain") and "version=0.0.4" in kind
    return parse(text)[0]


def metrics_config(base: dict[str, Any], **http: Any) -> dict[str, Any]:
    """The suite's config with the HTTP input on a free port (and no pub-sub input)."""
    config = {k: v for k, v in base.items() if k not in ("subscribe", "requests")}
    config["http"] = {"address": f"127.0.0.1:{free_port()}", **http}
    return config


@pytest.fixture
def http_daemon(base_config: dict[str, Any]) -> Iterator[Service]:
    with running_daemon(metrics_config(base_config)) as daemon:
        yield daemon


# --- the done-when line: a burst moves the counters by exactly what happened ---------------


def test_a_burst_moves_the_scraped_counters_by_exactly_what_happened(
        http_daemon: Service, tmp_path: Path, bucket: str, s3: Any) -> None:
    n, m, k = 12, 3, 2  # landed, failed at the store (no such bucket), refused (no file)
    files = []
    for i in range(n + m):
        path = tmp_path / f"f{i:02d}.dat"
        path.write_bytes(os.urandom(1000 + 997 * i))
        files.append(path)
    sizes = sum(p.stat().st_size for p in files[:n])
    url = base_url(http_daemon) + "/upload"
    jobs = ([{"file": str(p), "uri": f"s3://{bucket}/burst/{p.name}"} for p in files[:n]]
            + [{"file": str(p), "uri": f"s3://nonexistent-{bucket}/{p.name}"}
               for p in files[n:]]
            + [{"file": str(tmp_path / f"missing{i}.dat"), "uri": f"s3://{bucket}/x{i}"}
               for i in range(k)])
    started = time.time()
    before = scraped(http_daemon)
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda fields: post(url, fields)[0], jobs))
    assert codes == [200] * n + [404] * m + [400] * k
    assert len(s3.list_objects_v2(Bucket=bucket, Prefix="burst/")["Contents"]) == n

    # failures are published after their answer: wait until the publisher counted them
    def settled() -> bool:
        now = scraped(http_daemon)
        return (value(now, "trollpush_announcements_total", outcome="published")
                - value(before, "trollpush_announcements_total", outcome="published")
                == n + m + k and value(now, "trollpush_journal_backlog_requests") == 0)
    wait_until(settled, what="every announcement published and the journal caught up")
    after = scraped(http_daemon)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    http, ep = {"input": "http"}, {"endpoint": "default"}
    assert moved("trollpush_requests_received_total", **http) == n + m + k
    assert moved("trollpush_requests_total", **http, outcome="accepted") == n + m
    assert moved("trollpush_requests_total", **http, outcome="completed") == n
    assert moved("trollpush_requests_total", **http, outcome="failed",
                 reason="permanent_error") == m
    assert moved("trollpush_requests_total", **http, outcome="rejected",
                 reason="file_missing") == k
    assert moved("trollpush_uploads_total", **ep, outcome="completed") == n
    assert moved("trollpush_uploads_total", **ep, outcome="failed",
                 reason="permanent_error") == m
    assert moved("trollpush_upload_bytes_total", **ep) == sizes
    retries = moved("trollpush_upload_retries_total", **ep)
    assert moved("trollpush_upload_attempts_total", **ep) == n + m + retries
    assert moved("trollpush_announcements_total", outcome="failed") == 0
    for histogram in ("upload_transfer_seconds", "upload_total_seconds",
                      "upload_rate_bytes_per_second"):
        assert moved(f"trollpush_{histogram}_count", **ep) == n, histogram
        assert moved(f"trollpush_{histogram}_sum", **ep) > 0
        assert moved(f"trollpush_{histogram}_bucket", **ep, le="+Inf") == n
    assert moved("trollpush_request_queued_seconds_count", **http) == n + m
    assert value(after, "trollpush_last_success_timestamp_seconds", **ep) >= started - 1
    for idle in ("requests_queued", "requests_in_flight"):
        assert value(after, f"trollpush_{idle}") == 0
    for idle in ("uploads_in_flight", "parts_in_flight"):
        assert value(after, f"trollpush_{idle}", **ep) == 0
    assert value(after, "trollpush_journal_size_bytes") > 0
    assert value(after, "trollpush_keepwarm_requests_total", **ep) >= 1  # prewarm: 8
    assert value(after, "trollpush_config_reloads_total", outcome="applied") == 0
    assert value(after, "trollpush_config_reloads_total", outcome="refused") == 0
    assert value(after, "trollpush_build_info", version=__version__,
                 python=platform.python_version(),
                 aiobotocore=_version("aiobotocore")) == 1
    # the registry holds nothing the exporter would not show, and no label it would drop
    for name, labels, _ in http_daemon.stats.series():
        assert name in SERIES and {k for k, _ in labels} <= set(SERIES[name].labels), name
    for name, labels, _ in http_daemon.stats.histograms():
        assert name in SERIES and {k for k, _ in labels} <= set(SERIES[name].labels), name


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


# --- names, types and labels ----------------------------------------------------------------


def test_every_series_is_exported_with_its_type_labels_and_unit() -> None:
    """Each series of stats.SERIES is a family, Prometheus style: the prefix, counters
    ending in _total, the labels declared; an empty series has its HELP and TYPE."""
    stats = Stats()
    stats.inc(REQUESTS, input="http", outcome="failed", reason="timeout")
    stats.inc(UPLOADS, 2, endpoint="s3", outcome="completed")  # reason: None, dropped
    stats.observe(TRANSFER_SECONDS, 0.3, endpoint="s3")
    text = scrape(collector_registry(stats, process=False)).decode()
    samples, kinds = parse(text)
    assert set(kinds) == {PREFIX + name for name in SERIES}
    for name, series in SERIES.items():
        assert kinds[PREFIX + name] == series.kind, name
        assert f"# HELP {PREFIX}{name}" in text
        assert re.fullmatch(r"[a-z_]+", name), name
        assert not name.endswith("_total")
        if series.kind != "counter":
            assert name.endswith(UNITS), f"{name}: a gauge or histogram names its unit"
    for (name, labels), _ in samples.items():
        assert name.startswith(PREFIX)
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)[len(PREFIX):]
        extra = {"le"} if name.endswith("_bucket") else set()
        assert {k for k, _ in labels} <= set(SERIES[base].labels) | extra, name
    assert value(samples, "trollpush_requests_total", input="http", outcome="failed",
                 reason="timeout") == 1
    assert value(samples, "trollpush_uploads_total", endpoint="s3", outcome="completed") == 2
    assert 'outcome="completed",reason=""} 2.0' in text  # declared, and empty
    assert value(samples, "trollpush_journal_errors_total") == 0  # no labels: shown as 0
    assert value(samples, "trollpush_upload_transfer_seconds_bucket", endpoint="s3",
                 le="0.25") == 0
    assert value(samples, "trollpush_upload_transfer_seconds_bucket", endpoint="s3",
                 le="0.5") == 1
    assert value(samples, "trollpush_upload_transfer_seconds_sum", endpoint="s3") == 0.3


def test_followed_counters_and_gauges_are_read_when_scraped() -> None:
    stats = Stats()
    box = {"n": 0.0, "rtt": None}
    stats.follow("keepwarm_requests", lambda: box["n"], endpoint="a")
    stats.inc("keepwarm_requests", 2, endpoint="a")  # counted here too: the two add up
    stats.set("tcp_rtt_seconds", lambda: box["rtt"], endpoint="a")
    assert stats.total("keepwarm_requests") == 2
    assert ("tcp_rtt_seconds", (("endpoint", "a"),), 0.0) not in list(stats.series())
    box.update(n=5.0, rtt=0.0123)
    samples, _ = parse(scrape(collector_registry(stats, process=False)).decode())
    assert value(samples, "trollpush_keepwarm_requests_total", endpoint="a") == 7
    assert value(samples, "trollpush_tcp_rtt_seconds", endpoint="a") == 0.0123
    assert len(RATE_BUCKETS) == len(set(RATE_BUCKETS)) == 19


def test_a_scrape_includes_the_process_metrics() -> None:
    text = scrape(collector_registry(Stats())).decode()
    if os.path.exists("/proc/self/stat"):
        assert "process_open_fds" in text and "process_resident_memory_bytes" in text


# --- upload: false, tokens and secrets --------------------------------------------------------


def test_http_without_the_upload_api_serves_only_the_views(base_config: dict[str, Any],
                                                            granule: Path, bucket: str,
                                                            ports: dict[str, int]) -> None:
    """``http: {upload: false}`` beside the REQ/REP input: /metrics and /version answer,
    /upload and /openapi.json do not, and the metrics count the other input's work."""
    config = {k: v for k, v in base_config.items() if k != "subscribe"}
    config["http"] = {"address": f"127.0.0.1:{free_port()}", "upload": False}
    with running_daemon(config) as daemon:
        base = base_url(daemon)
        assert "metrics, status and version only" in daemon.input("http").describe()
        code, _ = post(base + "/upload", {"file": str(granule),
                                          "uri": f"s3://{bucket}/no.h5"})
        assert code in (404, 405)
        assert http_get(base + "/openapi.json")[0] == 404
        assert http_get(base + "/version")[0] == 200
        before = scraped(daemon)
        result = send(str(granule), f"s3://{bucket}/yes.h5",
                      server=f"tcp://127.0.0.1:{ports['req']}", timeout=30)
        assert result.ok, result.error
        after = scraped(daemon)
    # (the REQ/REP input's requests, and its series, are labelled input="request")
    for input_ in ("request", "http"):
        assert value(before, "trollpush_requests_received_total", input=input_) == 0
    assert value(after, "trollpush_requests_received_total", input="request") == 1
    assert value(after, "trollpush_requests_total", input="request", outcome="completed") == 1
    assert value(after, "trollpush_upload_bytes_total",
                 endpoint="default") == granule.stat().st_size


def test_upload_false_is_no_input_of_its_own(base_config: dict[str, Any]) -> None:
    config = {k: v for k, v in base_config.items() if k not in ("subscribe", "requests")}
    config["http"] = {"upload": False}
    with pytest.raises(ConfigError, match="http with upload: false takes no requests"):
        parse_config(config)
    config["requests"] = {"address": "tcp://127.0.0.1:0"}
    summary = parse_config(config).summary()
    assert "views  http: GET /metrics, /status and /version on 127.0.0.1:15555" in summary


def test_a_scrape_never_shows_a_secret(base_config: dict[str, Any], tmp_path: Path,
                                       granule: Path, bucket: str) -> None:
    """Credentials in the config and the bearer token: never in a scrape (which needs
    the token, like /version)."""
    secrets = {"access_key_id": "AKIAMETRICSKEY0001",
               "secret_access_key": "metrics-secret-value-0001",
               "session_token": "metrics-session-token-0001"}
    token = tmp_path / "token"
    token.write_text("metrics-bearer-token-0001\n")
    config = metrics_config(base_config, token_file=str(token))
    config["endpoints"]["default"].update(secrets)
    with running_daemon(config) as daemon:
        auth = {"Authorization": "Bearer metrics-bearer-token-0001"}
        fields = {"file": str(granule), "uri": f"s3://{bucket}/s.h5"}
        assert post(base_url(daemon) + "/upload", fields)[0] == 401
        assert post(base_url(daemon) + "/upload", fields, auth)[0] == 200
        denied = http_get(base_url(daemon) + "/metrics")
        assert denied[0] == 401
        code, text, _ = http_get(base_url(daemon) + "/metrics", auth)
    assert code == 200 and "trollpush_uploads_total" in text
    for secret in [*secrets.values(), "metrics-bearer-token-0001"]:
        assert secret not in text and secret not in denied[1]
        assert secret[:12] not in text  # not even a prefix


# --- TCP_INFO -----------------------------------------------------------------------------------


@pytest.mark.skipif(TCP_INFO is None, reason="TCP_INFO is Linux's")
def test_tcp_info_of_a_loopback_connection() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname()[:2])
        peer, _ = server.accept()
        with client, peer:
            client.sendall(b"x" * 100_000)
            got = b""
            while len(got) < 100_000:
                got += peer.recv(65536)
            reading = read(client)
            assert reading is not None and reading.established
            assert 0 < reading.rtt < 1 and reading.retrans_segments == 0
            tcp = TcpStats()
            tcp.sample([client, peer])
            assert tcp.rtt is not None and 0 < tcp.rtt < 1
            assert tcp.retrans_segments == 0 and tcp.retrans_bytes == 0
        assert read(client) is None  # closed: nothing to read, and skipped
        tcp.sample([client])
        assert tcp.readings == 2 and tcp.rtt is not None  # the last one known stays


@pytest.mark.skipif(TCP_INFO is None, reason="TCP_INFO is Linux's")
async def test_the_pool_reads_its_sockets(seaweed: str) -> None:
    """SeaweedFS keeps connections open: the warm pool's sockets show an RTT, and the
    registry reads the pool's connections."""
    engine = await started_engine(seaweed, prewarm=2)
    try:
        pool = engine.pool("default")
        assert pool.warm_requests == 2
        assert pool.connections_open >= 1
        assert pool.connections_idle == pool.connections_open  # nothing in flight
        pool.read_tcp()
        assert pool.tcp.rtt is not None and 0 < pool.tcp.rtt < 1
        stats = dict(((n, lb), v) for n, lb, v in engine.stats.series())
        where = (("endpoint", "default"),)
        assert stats[("tcp_rtt_seconds", where)] == pool.tcp.rtt
        assert stats[("pool_connections_open", where)] == pool.connections_open
        assert stats[("keepwarm_requests", where)] == 2
        assert stats[("tcp_retransmitted_segments", where)] == 0
    finally:
        await engine.close()
    assert pool.connections_open == 0
