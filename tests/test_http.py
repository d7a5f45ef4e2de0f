"""The HTTP input (s3nd-compatible): a real daemon against moto, real clients (curl and
urllib), every status code that can be provoked, hang-ups, kill -9, hostile input."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from trollpush.inputs._http_api import openapi
from trollpush.service import Service
from trollpush.stats import UPLOADS

from .helpers import Listener, free_port, running_daemon, wait_until
from .servers import CorruptingProxy

ROOT = Path(__file__).resolve().parents[1]
CURL = shutil.which("curl")
Reply = tuple[int, dict[str, Any], dict[str, str]]


def http_config(base: dict[str, Any], **http: Any) -> dict[str, Any]:
    """The suite's config with the HTTP input on a free port (and no other input)."""
    config = {k: v for k, v in base.items() if k not in ("subscribe", "requests")}
    config["http"] = {"address": f"127.0.0.1:{free_port()}", **http}
    return config


def url_of(daemon: Service, path: str = "/upload") -> str:
    return f"http://{daemon.input('http').server.address}{path}"


def post(url: str, fields: dict[str, Any] | None = None, *, as_json: bool = False,
         headers: dict[str, str] | None = None, data: bytes | None = None,
         timeout: float = 60) -> Reply:
    """A POST with the standard library, as a producer without packages would send it."""
    if data is None:
        data = (json.dumps(fields).encode() if as_json
                else urllib.parse.urlencode(fields or {}).encode())
    kind = "application/json" if as_json else "application/x-www-form-urlencoded"
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": kind, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read()), dict(err.headers)


def get(url: str, headers: dict[str, str] | None = None) -> Reply:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read()), dict(err.headers)


@pytest.fixture
def http_daemon(base_config: dict[str, Any]) -> Iterator[Service]:
    with running_daemon(http_config(base_config)) as daemon:
        yield daemon


# --- the done-when line: curl, s3nd's reply, the object landed -----------------------------


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_uploads_a_file_with_s3nds_reply(http_daemon: Service, granule: Path,
                                              bucket: str, s3: Any) -> None:
    assert CURL is not None
    proc = subprocess.run([CURL, "-sS", "-d", f"file={granule}", "-d",
                           f"uri=s3://{bucket}/l1/x.h5", "-d", "slug=banana", "-w",
                           "\n%{http_code} %{content_type}", url_of(http_daemon)],
                          capture_output=True, text=True, timeout=60, check=True)
    text, _, status = proc.stdout.rpartition("\n")
    assert status.startswith("200 application/json"), proc.stdout
    reply = json.loads(text)
    assert reply["code"] == 200 and reply["msg"] == "upload succeeded"
    assert reply["version"]
    task = reply["task"]
    assert task["uri"] == f"s3://{bucket}/l1/x.h5" and task["file"] == str(granule)
    assert task["slug"] == "banana" and task["id"]
    assert task["upload_size_bytes"] == granule.stat().st_size
    assert task["upload_attempts"] == 1 and task["upload_parts"] == 1
    assert task["upload_total_seconds"] >= task["upload_transfer_seconds"] > 0
    assert task["upload_queued_seconds"] >= 0 and task["upload_rate_bytes"] > 0
    assert task["checksum"].startswith("crc32c:")
    body = s3.get_object(Bucket=bucket, Key="l1/x.h5")["Body"].read()
    assert body == granule.read_bytes()


def test_a_json_body_and_a_key_ending_in_a_slash(http_daemon: Service, granule: Path,
                                                  bucket: str, s3: Any) -> None:
    code, reply, _ = post(url_of(http_daemon), {"file": str(granule),
                                                 "uri": f"s3://{bucket}/dir/"}, as_json=True)
    assert code == 200, reply
    assert reply["task"]["uri"] == f"s3://{bucket}/dir/{granule.name}"
    assert s3.head_object(Bucket=bucket, Key=f"dir/{granule.name}")["ContentLength"] > 0


def link_http(url: str, listener: Listener, timeout: float = 15.0) -> None:
    """Make sure the listener hears the daemon: post a missing file until its failure is
    announced; the probe's announcements are dropped from then on."""
    probe = f"/nonexistent/probe-{time.monotonic_ns()}.h5"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        post(url, {"file": probe, "uri": "s3://bucket/probe"})
        try:
            listener.wait_for(lambda ms: any(m.data.get("uri") == probe for m in ms), 0.3)
        except AssertionError:
            continue
        listener.ignored.add(probe)
        listener.clear()
        return
    raise AssertionError("pub-sub link not established")


def test_a_routed_request_fans_out_and_reports_each_destination(
        base_config: dict[str, Any], granule: Path, bucket: str, s3: Any,
        listener: Listener) -> None:
    """No uri: routed like a posttroll `file` message with the given subject, the other
    fields as metadata; every destination with its own outcome."""
    config = http_config(base_config)
    config["targets"].append({"name": "by-station", "conditions": {"station": "kiruna"},
                              "destination": f"s3://{bucket}/{{station}}/{{uid}}"})
    with running_daemon(config) as daemon:
        link_http(url_of(daemon), listener)
        code, reply, _ = post(url_of(daemon), {"file": str(granule), "station": "kiruna",
                                               "subject": "/new/file/viirs/l1"})
        completions = listener.wait_for(lambda ms: len(ms) >= 2, what="two completions")
    assert code == 200, reply
    task = reply["task"]
    keys = {f"j01/2026/11/21/{granule.name}", f"kiruna/{granule.name}"}
    assert set(task["uri"]) == {f"s3://{bucket}/{k}" for k in keys}
    assert {(u["target"], u["code"]) for u in task["uploads"]} == {("viirs", 200),
                                                                    ("by-station", 200)}
    assert all(u["attempts"] == 1 and u["size"] == granule.stat().st_size
               for u in task["uploads"])
    for key in keys:
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == granule.read_bytes()
    assert {m.data["station"] for m in completions} == {"kiruna"}
    assert {m.subject for m in completions} == {"/uploaded/viirs/j01/", "/uploaded/"}


# --- the status codes --------------------------------------------------------------------


def _bad_requests(tmp: Path, bucket: str) -> list[Any]:
    """(fields or raw body, content type, reason, text in msg) of requests answered 400."""
    good = str(tmp / "good.h5")
    form = "application/x-www-form-urlencoded"
    return [
        pytest.param({"uri": f"s3://{bucket}/k"}, form, "missing_uri", "missing field: file",
                     id="no-file"),
        pytest.param({"file": "relative/x.h5", "uri": f"s3://{bucket}/k"}, form,
                     "bad_message", "must be absolute", id="relative"),
        pytest.param({"file": str(tmp / "nope.h5"), "uri": f"s3://{bucket}/k"}, form,
                     "file_missing", "no such file", id="missing"),
        pytest.param({"file": str(tmp), "uri": f"s3://{bucket}/k"}, form, "not_a_file",
                     "not a regular file", id="directory"),
        pytest.param({"file": "/etc/hostname", "uri": f"s3://{bucket}/k"}, form,
                     "not_allowed", "outside the allowed roots", id="outside-roots"),
        pytest.param({"file": good, "uri": f"https://{bucket}/k"}, form, "bad_destination",
                     "expected s3://BUCKET/KEY", id="not-s3"),
        pytest.param({"file": good, "uri": "s3:///k"}, form, "bad_destination",
                     "no bucket", id="no-bucket-name"),
        pytest.param({"file": good}, form, "no_route", "no target matches", id="no-route"),
        pytest.param({"file": good, "uri": f"s3://{bucket}/k", "wait": "maybe"}, form,
                     "bad_message", "expected true or false", id="bad-wait"),
        pytest.param({"file": good, "subject": "a b"}, form, "bad_message", "subject",
                     id="bad-subject"),
        pytest.param(b"file=a&file=b", form, "bad_message", "given twice", id="twice"),
        pytest.param(b"file=%ff%fe", form, "bad_message", "not UTF-8", id="not-utf8"),
        pytest.param(b"{not json", "application/json", "bad_message", "not JSON",
                     id="bad-json"),
        pytest.param(b"[1, 2]", "application/json", "bad_message", "not an object",
                     id="json-list"),
        pytest.param(b'{"file": {"a": 1}}', "application/json", "bad_message",
                     "expected a string", id="json-nested"),
        pytest.param(b'{"file": "/x", "n": NaN}', "application/json", "bad_message",
                     "NaN", id="json-nan"),
        pytest.param(b"file=/x", "text/plain", "bad_message", "Content-Type", id="text"),
    ]


def test_every_kind_of_bad_request_is_a_400_with_its_reason(
        base_config: dict[str, Any], tmp_path: Path, bucket: str, listener: Listener) -> None:
    """400 for each: JSON with the reason, X-Error with the message, and the failure
    announced on posttroll with the same reason code as for REQ/REP."""
    (tmp_path / "good.h5").write_bytes(b"x" * 10)
    config = http_config(base_config)
    config["targets"] = []
    config["daemon"]["allowed_roots"] = [str(tmp_path)]
    with running_daemon(config) as daemon:
        url = url_of(daemon)
        link_http(url, listener)
        for case in _bad_requests(tmp_path, bucket):
            sent, kind, reason, text = case.values
            data = sent if isinstance(sent, bytes) else urllib.parse.urlencode(sent).encode()
            code, reply, headers = post(url, data=data, headers={"Content-Type": kind})
            assert (code, reply["code"]) == (400, 400), (case.id, reply)
            assert reply["task"]["reason"] == reason, (case.id, reply)
            assert text in reply["msg"] and headers["X-Error"] == reply["msg"], case.id
        announced = listener.wait_for(lambda ms: len(ms) >= len(_bad_requests(tmp_path, "b")),
                                      what="a failure per request")
    assert [m.data["reason"] for m in announced] == [c.values[2] for c in
                                                     _bad_requests(tmp_path, bucket)]
    assert all(m.type == "failure" for m in announced)


def test_a_missing_bucket_is_404(http_daemon: Service, granule: Path) -> None:
    code, reply, headers = post(url_of(http_daemon), {"file": str(granule),
                                                      "uri": "s3://no-such-bucket-tp/k"})
    assert code == 404 and reply["task"]["reason"] == "permanent_error"
    assert "NoSuchBucket" in reply["msg"] and headers["X-Error"] == reply["msg"]
    assert reply["task"]["upload_attempts"] == 1


def test_a_wrong_or_missing_token_is_401(base_config: dict[str, Any], tmp_path: Path,
                                         granule: Path, bucket: str) -> None:
    token = tmp_path / "token"
    token.write_text("s3cr3t-t0ken\n")
    with running_daemon(http_config(base_config, token_file=str(token))) as daemon:
        fields = {"file": str(granule), "uri": f"s3://{bucket}/t.h5"}
        for headers in ({}, {"Authorization": "Bearer wrong"},
                        {"Authorization": "s3cr3t-t0ken"}):
            code, reply, got = post(url_of(daemon), fields, headers=headers)
            assert code == 401 and reply["code"] == 401 and "X-Error" in got
            assert got["WWW-Authenticate"] == "Bearer"
        assert get(url_of(daemon, "/version"))[0] == 401
        assert get(url_of(daemon, "/openapi.json"))[0] == 200  # the document is public
        auth = {"Authorization": "Bearer s3cr3t-t0ken"}
        assert post(url_of(daemon), fields, headers=auth)[0] == 200
        assert get(url_of(daemon, "/version"), auth)[0] == 200
    assert daemon.counts["accepted"] == 1  # nothing of the refused ones reached the journal


class Refusing:
    """An S3 stand-in that refuses every request with 403 AccessDenied (an S3 error no
    retry fixes): the daemon's answer is 502."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _refuse(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied"
                        b"</Code><Message>Access Denied</Message></Error>")
                self.send_response(403)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            do_PUT = do_POST = do_GET = do_HEAD = do_DELETE = _refuse

            def log_message(self, *args: Any) -> None:
                pass

        import threading

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def _endpoint(config: dict[str, Any], url: str, **more: Any) -> None:
    config["endpoints"]["default"].update(url=url, prewarm=0, **more)


def test_another_s3_error_is_502(base_config: dict[str, Any], granule: Path) -> None:
    store = Refusing()
    config = http_config(base_config)
    _endpoint(config, store.url)
    try:
        with running_daemon(config) as daemon:
            code, reply, headers = post(url_of(daemon), {"file": str(granule),
                                                          "uri": "s3://bucket/k"})
    finally:
        store.close()
    assert code == 502 and reply["task"]["reason"] == "permanent_error"
    assert "AccessDenied" in headers["X-Error"]


def test_a_last_attempt_that_times_out_is_504(base_config: dict[str, Any], granule: Path,
                                              silent_server: str) -> None:
    """A store that never answers: each attempt runs out of time, then max_age is over."""
    config = http_config(base_config)
    _endpoint(config, silent_server, tries=1, attempt_timeout=0.3, connect_timeout=0.3)
    config["daemon"]["max_age"] = 1
    with running_daemon(config) as daemon:
        started = time.monotonic()
        code, reply, headers = post(url_of(daemon), {"file": str(granule),
                                                      "uri": "s3://bucket/k"})
    assert code == 504 and reply["task"]["reason"] == "timeout", reply
    assert "exceeded" in headers["X-Error"] and time.monotonic() - started < 10
    assert reply["task"]["upload_attempts"] >= 1


def test_waiting_longer_than_queue_timeout_for_a_slot_is_408(
        base_config: dict[str, Any], granule: Path, bucket: str, s3_url: str) -> None:
    """One slot, held by an upload the store does not answer yet: the next request waits
    queue_timeout, tries again until max_age, and is answered 408."""
    proxy = CorruptingProxy(s3_url, hold=lambda head: head.startswith(b"PUT "))
    config = http_config(base_config)
    _endpoint(config, proxy.url, max_parallel=1, max_connections=1, queue_timeout=0.2)
    config["daemon"]["max_age"] = 1
    try:
        with running_daemon(config) as daemon:
            first = post(url_of(daemon), {"file": str(granule), "wait": "false",
                                          "uri": f"s3://{bucket}/first.h5"})
            assert first[0] == 202
            wait_until(lambda: proxy.held == 1, what="the first upload at the store")
            code, reply, headers = post(url_of(daemon), {"file": str(granule),
                                                          "uri": f"s3://{bucket}/second.h5"})
            proxy.gate.set()
            wait_until(lambda: daemon.counts["completed"] == 1, what="the first upload")
    finally:
        proxy.gate.set()
        proxy.close()
    assert code == 408 and reply["task"]["reason"] == "queue_timeout", reply
    assert "queue_timeout" in headers["X-Error"]
    assert reply["task"]["upload_attempts"] == 0


def test_a_body_larger_than_max_request_bytes_is_413(base_config: dict[str, Any]) -> None:
    config = http_config(base_config)
    config["daemon"]["max_request_bytes"] = 1024
    with running_daemon(config) as daemon:
        code, reply, headers = post(url_of(daemon), {"file": "/x", "pad": "y" * 5000})
        assert code == 413 and reply["task"]["reason"] == "too_large"
        assert "max_request_bytes" in headers["X-Error"]
        # without a Content-Length (chunked): read up to the bound, then refused
        with socket.create_connection(("127.0.0.1", int(url_of(daemon).split(":")[2]
                                                        .split("/")[0]))) as sock:
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                         b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
                         + b"800\r\n" + b"a" * 0x800 + b"\r\n0\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 413")
        assert post(url_of(daemon), {"file": "/x", "uri": "s3://b/k"})[0] == 400  # still up


def test_unknown_routes_and_methods_are_clean_json_4xx(http_daemon: Service) -> None:
    code, reply, headers = get(url_of(http_daemon, "/nowhere"))
    assert (code, reply["code"], headers["X-Error"]) == (404, 404, "Not Found")
    code, reply, headers = get(url_of(http_daemon, "/upload"))
    assert code == 405 and headers["Allow"] == "POST" and "X-Error" in headers
    code, reply, _ = post(url_of(http_daemon, "/version"), {})
    assert code == 405 and reply["code"] == 405


def _port(daemon: Service) -> int:
    return int(daemon.input("http").server.address.rsplit(":", 1)[1])


def test_slow_clients_are_cut_off_and_the_daemon_stays_up(
        base_config: dict[str, Any], granule: Path, bucket: str) -> None:
    """A head that never ends, and a body that stops half-way: each is disconnected
    after http.read_timeout (the body with a 408), and others are served meanwhile."""
    with running_daemon(http_config(base_config, read_timeout=0.5)) as daemon:
        port = _port(daemon)
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port)) as head, \
                socket.create_connection(("127.0.0.1", port)) as body:
            head.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\n")  # and nothing more
            body.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                         b"Content-Type: application/x-www-form-urlencoded\r\n\r\nfile=/")
            fields = {"file": str(granule), "uri": f"s3://{bucket}/k"}
            assert post(url_of(daemon), fields)[0] == 200  # served meanwhile
            body.settimeout(10)
            answer = body.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert b"read_timeout" in answer
            head.settimeout(10)
            with contextlib.suppress(ConnectionResetError):  # closed by the server
                assert head.recv(4096) == b""
        assert time.monotonic() - started < 8
        assert post(url_of(daemon), fields)[0] == 200


def test_wait_false_answers_202_then_announces_the_outcome(
        base_config: dict[str, Any], granule: Path, bucket: str, s3: Any,
        listener: Listener) -> None:
    with running_daemon(http_config(base_config)) as daemon:
        link_http(url_of(daemon), listener)
        code, reply, _ = post(url_of(daemon), {"file": str(granule), "wait": "false",
                                               "uri": f"s3://{bucket}/later.h5",
                                               "slug": "s"}, as_json=False)
        assert code == 202
        assert reply == {"version": reply["version"], "code": 202, "msg": "accepted",
                         "task": {"id": reply["task"]["id"], "file": str(granule),
                                  "uri": f"s3://{bucket}/later.h5", "slug": "s"}}
        done = listener.wait_for(lambda ms: any(m.type == "file" for m in ms),
                                 what="the completion")
    assert [m.data["uri"] for m in done] == [f"s3://{bucket}/later.h5"]
    assert s3.head_object(Bucket=bucket, Key="later.h5")["ContentLength"] == 70_000


def test_version_shows_the_effective_config_with_secrets_hidden(
        base_config: dict[str, Any], tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t0ps3cret")
    config = http_config(base_config, token_file=str(token))
    config["endpoints"]["default"].update(access_key_id="AKIAEXAMPLE",
                                          secret_access_key="very-secret")
    with running_daemon(config) as daemon:
        code, reply, _ = get(url_of(daemon, "/version"),
                             {"Authorization": "Bearer t0ps3cret"})
    assert code == 200 and reply["version"]
    shown = json.dumps(reply)
    for secret in ("AKIAEXAMPLE", "very-secret", "t0ps3cret", str(token)):
        assert secret not in shown
    endpoint = reply["config"]["endpoints"]["default"]
    assert endpoint["secret_access_key"] == endpoint["access_key_id"] == "<hidden>"
    assert endpoint["tries"] == 2 and reply["config"]["http"]["read_timeout"] == 10.0


def test_the_openapi_document_is_served_and_committed(http_daemon: Service) -> None:
    """docs/http-api.yaml is what GET /openapi.json serves; every route is in it."""
    code, served, _ = get(url_of(http_daemon, "/openapi.json"))
    assert code == 200 and served == openapi()
    committed = yaml.safe_load((ROOT / "docs" / "http-api.yaml").read_text(encoding="utf-8"))
    assert committed == served, ("docs/http-api.yaml is stale: regenerate it with python -c "
                                 "'from trollpush.inputs._http_api import main; main()' > "
                                 "docs/http-api.yaml")
    assert served["openapi"].startswith("3.1")
    routes = {(r.method, r.resource.canonical) for r in
              http_daemon.input("http").server.routes() if r.method != "HEAD"}
    assert routes == {(m.upper(), p) for p, ops in served["paths"].items() for m in ops}


# --- hang-ups and crashes ------------------------------------------------------------------


def _big(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(size))
    return path


def _open_uploads(s3: Any, bucket: str) -> list[Any]:
    return list(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def _unfinished(path: str) -> list[Any]:
    import asyncio

    from trollpush.config import JournalConfig
    from trollpush.journal import make_journal

    async def read() -> list[Any]:
        journal = make_journal(JournalConfig(path=path))
        await journal.open()
        try:
            return list(journal.unfinished())
        finally:
            await journal.close()

    return asyncio.run(read())


def test_a_client_that_hangs_up_mid_upload_abandons_its_request(
        base_config: dict[str, Any], tmp_path: Path, bucket: str, s3: Any, s3_url: str,
        listener: Listener) -> None:
    """A real client hangs up while its multipart upload waits at a slow store: the
    upload is aborted (no parts left), client_gone is announced, and the journal holds
    nothing to resume."""
    big = _big(tmp_path, 16 * 1024 * 1024)
    proxy = CorruptingProxy(s3_url, hold=lambda head: b"partNumber=2" in head.split(b"\r\n")[0])
    config = http_config(base_config)
    _endpoint(config, proxy.url, multipart_threshold="5MiB", multipart_chunksize="5MiB",
              max_parts_in_flight=1)
    journal = str(tmp_path / "journal.sqlite")
    config["journal"] = {"path": journal}
    try:
        with running_daemon(config) as daemon:
            link_http(url_of(daemon), listener)
            body = urllib.parse.urlencode({"file": str(big), "uri": f"s3://{bucket}/big"})
            with socket.create_connection(("127.0.0.1", _port(daemon))) as sock:
                sock.sendall(f"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}"
                             "\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\n"
                             f"{body}".encode())
                wait_until(lambda: proxy.held == 1, what="the second part at the store")
                assert _open_uploads(s3, bucket), "a multipart upload in progress"
            gone = listener.wait_for(lambda ms: any(m.type == "failure" for m in ms),
                                     what="the client_gone failure")
            wait_until(lambda: not _open_uploads(s3, bucket), what="the upload aborted")
            assert daemon.counts["failed"] == 1
    finally:
        proxy.gate.set()
        proxy.close()
    assert [(m.data["reason"], m.data["destination"]) for m in gone] == [
        ("client_gone", f"s3://{bucket}/big")]
    assert "disconnected" in gone[0].data["error"]
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    assert _unfinished(journal) == []


def _serving(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return get(url.replace("/upload", "/openapi.json"))[0] == 200
        except OSError:
            return False
    wait_until(up, 30, "the daemon serving HTTP")


@pytest.mark.slow
def test_kill_9_after_the_202_and_a_restart_finishes_the_request(
        base_config: dict[str, Any], tmp_path: Path, granule: Path, bucket: str, s3: Any,
        s3_url: str, listener: Listener) -> None:
    """wait=false: 202 once journaled; the daemon is killed while the upload hangs at the
    store; the next start uploads the file and announces it."""
    from .helpers import daemon_process

    proxy = CorruptingProxy(s3_url, hold=lambda head: head.startswith(b"PUT "))
    config = http_config(base_config)
    _endpoint(config, proxy.url)
    config["journal"] = {"path": str(tmp_path / "journal.sqlite")}
    url = f"http://{config['http']['address']}/upload"
    for run in ("first", "second"):
        (tmp_path / run).mkdir()
    try:
        with daemon_process(config, tmp_path / "first") as (proc, log):
            _serving(url, proc, log)
            code, _, _ = post(url, {"file": str(granule), "wait": "false",
                                    "uri": f"s3://{bucket}/crash.h5"})
            assert code == 202
            wait_until(lambda: proxy.held == 1, what="the upload at the store")
            proc.kill()
            proc.wait(timeout=10)
    finally:
        proxy.gate.set()
        proxy.close()
    _endpoint(config, s3_url)
    with daemon_process(config, tmp_path / "second") as (proc, log):
        done = listener.wait_for(lambda ms: any(m.type == "file" for m in ms), 30,
                                 what="the completion after the restart")
        assert s3.get_object(Bucket=bucket, Key="crash.h5")["Body"].read() == \
            granule.read_bytes()
        proc.terminate()
        proc.wait(timeout=30)
    assert done[0].data["uri"] == f"s3://{bucket}/crash.h5"
    assert "resuming 1 request(s)" in log.read_text()


# --- hostile input: a fuzzer driven by the OpenAPI document ----------------------------------

#: examples per generation mode: bounded, so `make test` stays short (~10 s here)
FUZZ_EXAMPLES = 400


@pytest.mark.slow
def test_fuzzing_the_api_from_its_openapi_document(base_config: dict[str, Any],
                                                   tmp_path: Path, bucket: str) -> None:
    """schemathesis generates valid and invalid requests for every route from the
    document: never a 5xx, every reply as documented, and the daemon serves on."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    (tmp_path / "data").mkdir()
    good = tmp_path / "data" / "good.h5"
    good.write_bytes(b"x" * 100)
    config = http_config(base_config, read_timeout=2)
    config["daemon"].update(allowed_roots=[str(tmp_path / "data")], max_request_bytes=4096)
    # every documented 4xx is a rejection (413 for a body past max_request_bytes too)
    rejections = [str(code) for code in openapi()["paths"]["/upload"]["post"]["responses"]
                  if code.startswith("4")]
    settings_ = schemathesis.config.SchemathesisConfig.from_dict({"checks": {
        "negative_data_rejection": {"expected-statuses": rejections}}})
    schema = schemathesis.openapi.from_dict(openapi(), config=settings_)
    modes = st.one_of(schema.as_strategy(schemathesis.GenerationMode.POSITIVE),
                      schema.as_strategy(schemathesis.GenerationMode.NEGATIVE))
    seen: list[int] = []
    with running_daemon(config) as daemon:
        base = f"http://{daemon.input('http').server.address}"

        @settings(max_examples=2 * FUZZ_EXAMPLES, deadline=None, database=None,
                  derandomize=True, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=modes)
        def fuzz(case: Any) -> None:
            response = case.call(base_url=base, timeout=30)
            seen.append(response.status_code)
            assert response.status_code < 500, (case.as_curl_command(), response.text)
            # (a path the schema allows is most likely no file here: refused, rightly)
            case.validate_response(response, excluded_checks=[positive_data_acceptance])

        fds = len(os.listdir("/proc/self/fd"))
        started = time.monotonic()
        fuzz()
        took = time.monotonic() - started
        assert post(f"{base}/upload", {"file": str(good), "uri": f"s3://{bucket}/k"})[0] == 200
        # nothing left behind: no request running or waiting, no connection kept open
        wait_until(lambda: not daemon.pipeline.running and "queued=0 in_flight=0" in
                   repr(daemon), what="every request finished")
        assert not daemon.pipeline.gone
        wait_until(lambda: len(os.listdir("/proc/self/fd")) <= fds + 8, what="no fd leak")
    assert len(seen) >= FUZZ_EXAMPLES and took < 60
    assert {200, 400} <= set(seen)


@pytest.mark.parametrize("raw", [
    b"\x00\xff garbage\r\n\r\n",
    b"POST /upload HTTP/9.9\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Type: multipart/"
    b"form-data; boundary=zz\r\n\r\n--zz\r",
    b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n",
], ids=["garbage", "version", "huge-header", "negative-length", "cut-multipart", "long-path"])
def test_malformed_http_gets_a_4xx_and_the_daemon_stays_up(http_daemon: Service, granule: Path,
                                                          bucket: str, raw: bytes) -> None:
    with socket.create_connection(("127.0.0.1", _port(http_daemon)), timeout=15) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        answer = sock.recv(100)
    assert answer == b"" or answer[:10] in (b"HTTP/1.1 4", b"HTTP/1.0 4"), answer
    fields = {"file": str(granule), "uri": f"s3://{bucket}/after"}
    assert post(url_of(http_daemon), fields)[0] == 200


# --- the http: section ---------------------------------------------------------------------


def test_the_http_section_alone_is_an_input_with_the_documented_defaults() -> None:
    import dataclasses

    from trollpush.config import HttpConfig, config_schema, parse_config
    from trollpush.config.defaults import HTTP, HTTP_ADDRESS

    data = {"http": None, "endpoints": {"store": None}}
    config = parse_config(data)
    assert config.http == HttpConfig(address=HTTP_ADDRESS, endpoint="store")
    assert config.http.port == 15555 and config.http.host == "127.0.0.1"
    for f in dataclasses.fields(HttpConfig):
        assert f.name in HTTP
        if HTTP[f.name].default is not None:
            assert f.default == HTTP[f.name].default
    assert "input  http: POST /upload on 127.0.0.1:15555" in config.summary()
    assert parse_config({"endpoints": {"store": None}, "requests": None}).http is None
    import jsonschema
    jsonschema.Draft202012Validator(config_schema()).validate(data)


@pytest.mark.parametrize(("http", "key", "expected"), [
    ({"address": "localhost"}, "http.address", "HOST:PORT"),
    ({"address": "tcp://127.0.0.1:1"}, "http.address", "HOST:PORT"),
    ({"address": "127.0.0.1:70000"}, "http.address", "at most 65535"),
    ({"endpoint": "elsewhere"}, "http.endpoint", "a defined endpoint"),
    ({"token_file": "relative"}, "http.token_file", "an absolute path"),
    ({"token_file": "/nonexistent/token"}, "http.token_file", "a readable file"),
    ({"token_file": "/"}, "http.token_file", "a regular file"),
    ({"read_timeout": 0}, "http.read_timeout", ">= 0.1"),
    ({"port": 1}, "http.port", "no such key"),
], ids=lambda x: str(x)[:30])
def test_a_bad_http_section_is_refused_at_load(http: dict[str, Any], key: str,
                                               expected: str) -> None:
    """Reported by `trollpush check` (key, value, expectation); the schema refuses what
    it can express too."""
    import jsonschema

    from trollpush.config import config_schema, parse_config
    from trollpush.errors import ConfigError

    data = {"http": http, "endpoints": {"default": None}}
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert [p.key for p in err.value.problems] == [key]
    assert expected in str(err.value)
    if key not in ("http.endpoint", "http.token_file") and "65535" not in expected:
        assert not jsonschema.Draft202012Validator(config_schema()).is_valid(data)


def test_an_empty_token_file_and_no_default_endpoint_are_refused(tmp_path: Path) -> None:
    from trollpush.config import parse_config
    from trollpush.errors import ConfigError

    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(ConfigError) as err:
        parse_config({"http": {"token_file": str(empty)}, "endpoints": {"a": None, "b": None}})
    assert [p.key for p in err.value.problems] == ["http.endpoint", "http.token_file"]
    assert "none is called default" in str(err.value) and "empty" in str(err.value)
    assert str(empty) not in str(err.value)  # under a key named like a secret: hidden


def test_a_waiting_client_is_answered_503_at_shutdown_and_the_next_start_finishes(
        base_config: dict[str, Any], granule: Path, bucket: str, s3: Any,
        s3_url: str) -> None:
    """A stop cuts a held request off: its client gets 503 (reason shutdown), the request
    stays in the journal, and the next start uploads it."""
    import threading

    proxy = CorruptingProxy(s3_url, hold=lambda head: head.startswith(b"PUT "))
    config = http_config(base_config)
    _endpoint(config, proxy.url)
    config["daemon"]["shutdown_grace"] = 0.5
    config["journal"] = {"path": str(granule.parent / "journal.sqlite")}
    got: list[Reply] = []
    try:
        with running_daemon(config) as daemon:
            fields = {"file": str(granule), "uri": f"s3://{bucket}/held.h5"}
            client = threading.Thread(target=lambda: got.append(post(url_of(daemon), fields)))
            client.start()
            wait_until(lambda: proxy.held == 1, what="the upload at the store")
        client.join(timeout=30)
    finally:
        proxy.gate.set()
        proxy.close()
    (code, reply, headers), = got
    assert code == 503 and reply["task"]["reason"] == "shutdown", reply
    assert "next start" in headers["X-Error"]
    _endpoint(config, s3_url)
    with running_daemon(config) as daemon:
        wait_until(lambda: daemon.counts["completed"] == 1, what="the resumed upload")
    assert s3.head_object(Bucket=bucket, Key="held.h5")["ContentLength"] == 70_000


def test_if_none_match_answers_409_for_another_object_and_200_for_the_same(
        base_config: dict[str, Any], tmp_path: Path, bucket: str, s3: Any) -> None:
    """An endpoint with ``if_none_match`` (and a tag from a metadata field): curl's upload
    lands; another file for the same key is 409 ``exists`` and the object is kept; the
    same file again is 200 (it is already there); a tag beyond S3's limits is a 400
    ``bad_object_options`` before anything is sent."""
    base_config["endpoints"]["default"].update(
        # md5: moto keeps no checksum of a single PUT, the ETag is compared
        checksum="md5", object={"if_none_match": True, "tags": {"mission": "{mission}"}})
    first, other = tmp_path / "first.h5", tmp_path / "other.h5"
    first.write_bytes(os.urandom(3000))
    other.write_bytes(os.urandom(3000))
    uri = f"s3://{bucket}/kept/x.h5"
    with running_daemon(http_config(base_config)) as daemon:
        url = url_of(daemon)
        code, reply, _ = post(url, {"file": str(first), "uri": uri, "mission": "one"})
        assert code == 200, reply
        code, reply, headers = post(url, {"file": str(other), "uri": uri, "mission": "one"})
        assert code == 409 and reply["task"]["reason"] == "exists", reply
        assert "not overwritten" in headers.get("X-Error", ""), headers
        code, reply, _ = post(url, {"file": str(first), "uri": f"s3://{bucket}/bad.h5",
                                    "mission": "x" * 257})
        assert code == 400 and reply["task"]["reason"] == "bad_object_options", reply
    # a daemon with a journal of its own (nothing recorded): the store refuses the write,
    # and what is there is this same file
    base_config["journal"] = {"path": str(tmp_path / "other-journal.sqlite")}
    with running_daemon(http_config(base_config)) as daemon:
        code, reply, _ = post(url_of(daemon), {"file": str(first), "uri": uri, "mission": "one"})
        assert code == 200, reply
        # counted apart from the uploads that wrote an object
        assert daemon.transfer.completed == 0
        assert daemon.stats.count(UPLOADS, outcome="already_there") == 1
    assert s3.get_object(Bucket=bucket, Key="kept/x.h5")["Body"].read() == first.read_bytes()
    tags = s3.get_object_tagging(Bucket=bucket, Key="kept/x.h5")["TagSet"]
    assert tags == [{"Key": "mission", "Value": "one"}]
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="bad")
