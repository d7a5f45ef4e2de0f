"""``trollpush doctor``: host tuning from a fake /proc/sys, endpoints against a real moto
server, a closed port, a silent server, loopback HTTP(S) servers with a skewed clock or a
test CA, and this host's addresses, journal and directories."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from aiobotocore.session import AioSession

from trollpush.cli import build_parser, main
from trollpush.config import EndpointConfig, JournalConfig, default_journal_path, parse_config
from trollpush.doctor import Check, Status, diagnose, exit_code, render
from trollpush.doctor.buckets import buckets_by_endpoint, check_bucket
from trollpush.doctor.checks import in_thread
from trollpush.doctor.endpoints import clock_skew, ssl_context, tls
from trollpush.doctor.host import host_checks
from trollpush.doctor.local import (
    bind_check,
    directory_check,
    journal_checks,
    nameserver_check,
)

from .conftest import CREDS
from .helpers import daemon_process, free_port, wait_until
from .test_light import _heavy, _imports
from .test_tls import _certificates

TUNED = {"net/ipv4/tcp_slow_start_after_idle": "0", "net/core/wmem_max": "536870912",
         "net/ipv4/tcp_wmem": "4096\t131072\t536870912",
         "net/ipv4/tcp_congestion_control": "bbr", "net/core/default_qdisc": "fq",
         "net/ipv4/tcp_available_congestion_control": "reno cubic bbr"}


def _sysctls(root: Path, **changed: str) -> Path:
    """A fake /proc/sys: tuned as docs/tuning.md says, except ``changed`` (a/b/c=value)."""
    for name, value in {**TUNED, **{k.replace("__", "/"): v for k, v in changed.items()}
                        }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(value + "\n")
    return root


def _one(checks: list[Check], check: str, subject: str = "") -> Check:
    found = [c for c in checks if c.check == check and subject in c.subject]
    assert len(found) == 1, render(checks)
    return found[0]


def _config(tmp_path: Path, url: str, *buckets: str, **endpoint: Any) -> dict[str, Any]:
    return {"requests": {"address": f"tcp://127.0.0.1:{free_port()}"},
            "endpoints": {"default": {"url": url, "region": "us-east-1", **endpoint}},
            "targets": [{"name": f"t{i}", "destination": f"s3://{b}/{{uid}}"}
                        for i, b in enumerate(buckets)],
            "journal": {"path": str(tmp_path / "state" / "journal.sqlite")}}


def _cli(tmp_path: Path, config: dict[str, Any], *args: str,
         capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    path = tmp_path / "doctor.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["doctor", str(path), "--timeout", "3", *args])
    out, err = capsys.readouterr()
    return code, out, err


# --- host -------------------------------------------------------------------------------

def test_slow_start_after_idle_1_is_a_warn_with_the_fix(tmp_path: Path) -> None:
    root = _sysctls(tmp_path, net__ipv4__tcp_slow_start_after_idle="1",
                    net__ipv4__tcp_congestion_control="cubic",
                    net__ipv4__tcp_available_congestion_control="reno cubic",
                    net__core__default_qdisc="fq_codel", net__core__wmem_max="4194304",
                    net__ipv4__tcp_wmem="4096 16384 4194304")
    checks = host_checks(root, {"far": 0.2, "near": 0.0005, "down": None}, 1e9)
    slow = _one(checks, "sysctl", "tcp_slow_start_after_idle")
    assert slow.status is Status.WARN
    assert slow.detail.startswith("1 (should be 0)")
    assert "sysctl -w net.ipv4.tcp_slow_start_after_idle=0" in slow.fix
    far = _one(checks, "send_buffers", "far")  # 1 Gbit/s x 200 ms = 25 MB > 4 MiB
    assert far.status is Status.WARN
    assert "net.core.wmem_max=33554432" in far.fix
    assert "net.ipv4.tcp_wmem='4096 16384 33554432'" in far.fix
    assert _one(checks, "send_buffers", "near").status is Status.OK
    assert not [c for c in checks if "down" in c.subject]  # no RTT, nothing to size
    cc = _one(checks, "sysctl", "congestion_control")
    assert cc.status is Status.WARN and "modprobe tcp_bbr" in cc.fix
    assert _one(checks, "sysctl", "default_qdisc").status is Status.WARN


def test_a_tuned_host_is_ok_and_an_unreadable_one_warns(tmp_path: Path) -> None:
    tuned = host_checks(_sysctls(tmp_path / "tuned"), {"far": 0.2}, 10e9)
    assert [c.status for c in tuned] == [Status.OK] * 4, render(tuned)
    empty = host_checks(tmp_path / "empty", {"far": 0.2}, 1e9)
    assert [c.status for c in empty] == [Status.WARN] * 4
    assert all("cannot be read" in c.detail for c in empty)


# --- endpoints against moto ---------------------------------------------------------------

def test_a_missing_bucket_fails_with_the_fix(s3_url: str, bucket: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    missing = f"tp-missing-{uuid.uuid4().hex[:8]}"
    code, out, _ = _cli(tmp_path, _config(tmp_path, s3_url, bucket, missing), capsys=capsys)
    assert code == 1, out
    assert f"FAIL  bucket s3://{missing} @default: does not exist" in out
    assert f"fix: create it (aws s3 mb s3://{missing} --endpoint-url {s3_url})" in out
    assert f"OK    bucket s3://{bucket} @default: exists; a probe object written" in out


def test_a_writable_bucket_is_ok_and_the_probe_is_gone(s3_url: str, s3: Any, bucket: str,
                                                       tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    code, out, _ = _cli(tmp_path, _config(tmp_path, s3_url, bucket), "--json", capsys=capsys)
    checks = json.loads(out)
    assert code == 0, out
    assert {tuple(c) for c in checks} == {("check", "subject", "status", "detail", "fix")}
    found = [c for c in checks if c["check"] == "bucket"]
    assert [c["status"] for c in found] == ["OK"]
    assert "written" in found[0]["detail"] and "deleted" in found[0]["detail"]
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=".trollpush-doctor/")
    assert listed["KeyCount"] == 0  # gone ...
    versions = s3.list_object_versions(Bucket=bucket, Prefix=".trollpush-doctor/")
    assert len(versions.get("Versions", [])) == 1  # ... after a real PUT
    assert len(versions.get("DeleteMarkers", [])) == 1  # and a real DELETE


def test_no_write_skips_the_probe(s3_url: str, s3: Any, bucket: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    code, out, _ = _cli(tmp_path, _config(tmp_path, s3_url, bucket), "--no-write",
                        capsys=capsys)
    assert code == 0, out
    assert f"OK    bucket s3://{bucket} @default: exists (writing not tried: --no-write)" in out
    versions = s3.list_object_versions(Bucket=bucket, Prefix=".trollpush-doctor/")
    assert not versions.get("Versions") and not versions.get("DeleteMarkers")


def test_a_templated_bucket_is_said_to_be_unchecked(s3_url: str, tmp_path: Path) -> None:
    config = parse_config(_config(tmp_path, s3_url, "{platform_name}-l1"))
    checks = _run(diagnose(config, limit=3))
    found = _one(checks, "bucket")
    assert found.status is Status.WARN and "template" in found.detail
    assert found.subject == "s3://{platform_name}-l1 @default"


def test_an_unreachable_endpoint_fails_in_bounded_time(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    code, out, _ = _cli(tmp_path, _config(tmp_path, url, "somewhere"), capsys=capsys)
    assert time.monotonic() - start < 10
    assert code == 1
    assert "FAIL  connect default: 127.0.0.1" in out and "Connection refused" in out
    assert "bucket" not in out.replace("buckets not checked", "")


def test_a_silent_server_does_not_hang(silent_server: str, tmp_path: Path) -> None:
    config = parse_config(_config(tmp_path, silent_server, "somewhere"))
    start = time.monotonic()
    checks = _run(diagnose(config, limit=1.0))
    assert time.monotonic() - start < 10
    clock = _one(checks, "clock")
    assert clock.status is Status.FAIL and "no HTTP answer within 1 s" in clock.detail
    assert _one(checks, "connect").status is Status.OK  # it does accept
    assert not [c for c in checks if c.check == "bucket"]
    assert exit_code(checks) == 1


def test_secrets_are_never_printed(s3_url: str, bucket: str, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    key, secret, token = "AKIDDOCTORKEY0001", "doctor/secret+Value0001", "doctorTOKEN0001"
    explicit = _config(tmp_path, s3_url, bucket, f"tp-missing-{uuid.uuid4().hex[:8]}",
                       access_key_id=key, secret_access_key=secret, session_token=token)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFROMTHEENV0002")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env/secret+Value0002")
    env = _config(tmp_path, s3_url, bucket)
    said = []
    for config in (explicit, env):
        for args in ((), ("--json",)):
            said.append(_cli(tmp_path, config, *args, capsys=capsys))
    text = "\n".join(out + err for _, out, err in said)
    assert "credentials default: explicit keys in the config (not shown)" in text
    assert "credentials default: found (env; not shown)" in text
    for value in (key, secret, token, "AKIDFROMTHEENV0002", "env/secret+Value0002"):
        assert value not in text


# --- the probe carries the targets' object options -----------------------------------------

def _with_object(config: dict[str, Any], **block: Any) -> dict[str, Any]:
    """``config`` whose first target has this ``object`` block."""
    config["targets"][0]["object"] = block
    return config


def _weed_client(url: str) -> Any:
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"])


def _probes_left(s3: Any, bucket: str) -> list[str]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=".trollpush-doctor/")
    return [o["Key"] for o in listed.get("Contents", [])]


def test_the_probe_carries_the_object_options(s3_url: str, s3: Any, bucket: str,
                                              tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """moto: storage class, SSE-S3, ACL, content type ``auto``, metadata and tags (those
    composed per file left out), ``if_none_match``; the probe's old version shows them."""
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    config = _with_object(
        _config(tmp_path, s3_url, bucket), storage_class="STANDARD_IA", encryption="sse-s3",
        acl="bucket-owner-full-control", content_type="auto", if_none_match=True,
        metadata={"site": "kiruna", "platform": "{platform_name}"},
        tags={"project": "eo", "mission": "{platform_name}"})
    code, out, _ = _cli(tmp_path, config, capsys=capsys)
    assert code == 0, out
    line = next(x for x in out.splitlines() if x.startswith(f"OK    bucket s3://{bucket}"))
    assert line.startswith(
        f"OK    bucket s3://{bucket} @default: exists; a probe object with the object "
        "options of target t0 (storage_class=STANDARD_IA "
        "content_type=application/octet-stream acl=bucket-owner-full-control "
        "metadata=[site] tags=[project] encryption=sse-s3 if_none_match=true) written ("), line
    assert line.endswith(") and deleted")  # entries left out do not matter here
    assert _probes_left(s3, bucket) == []
    versions = s3.list_object_versions(Bucket=bucket, Prefix=".trollpush-doctor/")
    assert len(versions["DeleteMarkers"]) == 1
    [version] = versions["Versions"]
    head = s3.head_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])
    assert head["StorageClass"] == "STANDARD_IA" and head["ServerSideEncryption"] == "AES256"
    assert head["Metadata"] == {"site": "kiruna"}
    assert head["ContentType"] == "application/octet-stream"
    tags = s3.get_object_tagging(Bucket=bucket, Key=version["Key"],
                                 VersionId=version["VersionId"])["TagSet"]
    assert tags == [{"Key": "project", "Value": "eo"}]


def test_one_probe_per_distinct_set_of_options(s3_url: str, s3: Any, bucket: str,
                                               tmp_path: Path) -> None:
    config = _config(tmp_path, s3_url, bucket, bucket, bucket)
    for target, tags in zip(config["targets"][:2], ("{platform_name}", "{orbit}"), strict=True):
        target["object"] = {"storage_class": "STANDARD_IA", "tags": {"mission": tags}}
    checks = _run(diagnose(parse_config(config), limit=3))
    found = sorted((c for c in checks if c.check == "bucket"), key=lambda c: c.detail)
    assert [c.status for c in found] == [Status.OK] * 2, render(checks)
    assert found[0].detail.startswith("exists; a probe object for target t2 written (")
    assert found[1].detail.startswith("exists; a probe object with the object options of "
                                      "target t0, t1 (storage_class=STANDARD_IA) written (")
    assert found[1].detail.endswith(" and deleted; tags not tried (composed per file: "
                                    "mission)")
    assert _probes_left(s3, bucket) == []


def test_sse_kms_without_a_kms_is_named_as_refused(seaweed: str, weed_bucket: str,
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]
                                                   ) -> None:
    """SeaweedFS 4.48 without a KMS answers SSE-KMS with 500 InternalError, which the
    daemon would retry for max_age; the storage class beside it is taken."""
    config = _with_object(_config(tmp_path, seaweed, weed_bucket),
                          storage_class="STANDARD_IA", encryption="sse-kms",
                          metadata={"site": "kiruna"})
    code, out, _ = _cli(tmp_path, config, capsys=capsys)
    assert code == 1, out
    lines = out.splitlines()
    at = next(i for i, x in enumerate(lines) if x.startswith("FAIL  bucket"))
    assert lines[at].startswith(
        f"FAIL  bucket s3://{weed_bucket} @default: exists, but a PUT of .trollpush-doctor/")
    assert (" with the object options of target t0 failed: InternalError (HTTP 500); a plain "
            "PUT succeeds: the store refuses encryption=sse-kms (InternalError, HTTP 500) "
            "(the daemon would try each upload again until daemon.max_age before failing "
            "it)") in lines[at]
    assert "storage_class" not in lines[at] and "metadata" not in lines[at]
    assert lines[at + 1] == (
        "      fix: configure the store's KMS (or give kms_key_id a key these credentials "
        "may use: kms:GenerateDataKey), or choose another encryption (sse-s3, or none: the "
        "bucket's default); in the object block of target t0 or endpoints.default.object")
    assert _probes_left(_weed_client(seaweed), weed_bucket) == []


def test_a_storage_class_the_store_lacks_is_named(s3_url: str, s3: Any, bucket: str,
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = _with_object(_config(tmp_path, s3_url, bucket), storage_class="COLD_TAPE",
                          encryption="sse-s3", tags={"project": "eo"})
    code, out, _ = _cli(tmp_path, config, "--json", capsys=capsys)
    assert code == 1, out
    [found] = [c for c in json.loads(out) if c["check"] == "bucket"]
    assert found["status"] == "FAIL"
    assert found["detail"].endswith(
        "failed: InvalidStorageClass (HTTP 400); a plain PUT succeeds: the store refuses "
        "storage_class=COLD_TAPE (InvalidStorageClass, HTTP 400)")  # refused at once
    assert found["fix"].startswith("use one of the store's storage classes instead of "
                                   "COLD_TAPE (or leave storage_class out")
    assert _probes_left(s3, bucket) == []


def test_an_sse_c_probe_names_its_key_by_md5_only(seaweed: str, weed_bucket: str,
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """SeaweedFS enforces SSE-C; the probe's DELETE needs no key."""
    raw = os.urandom(32)
    key_file = tmp_path / "sse-c.key"
    key_file.write_bytes(raw)
    key_file.chmod(0o600)
    md5 = base64.b64encode(hashlib.md5(raw).digest()).decode()
    config = _with_object(_config(tmp_path, seaweed, weed_bucket), encryption="sse-c",
                          sse_c_key_file=str(key_file))
    code, out, err = _cli(tmp_path, config, capsys=capsys)
    assert code == 0, out
    assert (f"OK    bucket s3://{weed_bucket} @default: exists; a probe object with the "
            f"object options of target t0 (encryption=sse-c (key md5 {md5})) written") in out
    _, json_out, _ = _cli(tmp_path, config, "--json", capsys=capsys)
    for form in (base64.b64encode(raw).decode(), raw.hex(), repr(raw)[2:-1]):
        assert form not in out + err + json_out
    assert _probes_left(_weed_client(seaweed), weed_bucket) == []


class _Refusing:
    """A client whose bucket exists and that refuses every PUT, as a store does to
    credentials without s3:PutObject."""

    def __init__(self) -> None:
        self.puts: list[dict[str, Any]] = []

    async def head_bucket(self, **kw: Any) -> None:
        return None

    async def put_object(self, **kw: Any) -> None:
        from botocore.exceptions import ClientError

        self.puts.append(kw)
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"},
                           "ResponseMetadata": {"HTTPStatusCode": 403}}, "PutObject")


async def test_no_write_access_is_told_from_refused_options(tmp_path: Path) -> None:
    config = parse_config(_with_object(_config(tmp_path, "http://127.0.0.1:1", "b"),
                                       storage_class="GLACIER", acl="private"))
    client = _Refusing()
    [check] = await check_bucket(client, config.endpoints["default"], "b",
                                 buckets_by_endpoint(config)["default"]["b"], write=True,
                                 limit=3)
    assert check.status is Status.FAIL
    assert check.detail.endswith("a PUT without them failed too: AccessDenied (HTTP 403)")
    assert check.fix == "grant the endpoint's credentials s3:PutObject on arn:aws:s3:::b/*"
    given = sorted((p.get("StorageClass", ""), p.get("ACL", "")) for p in client.puts)
    assert given == [("", ""), ("", "private"), ("GLACIER", ""), ("GLACIER", "private")]


# --- clock and TLS on loopback HTTP servers -------------------------------------------------

class _Dated(BaseHTTPRequestHandler):
    """Answers every HEAD with 200 and a Date ``offset`` seconds off this host's clock."""

    offset = 0.0

    def date_time_string(self, timestamp: float | None = None) -> str:
        return email.utils.formatdate(time.time() + self.offset, usegmt=True)

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that refuses the certificate: expected here


@contextmanager
def _server(offset: float = 0.0, context: ssl.SSLContext | None = None) -> Iterator[int]:
    handler = type("Handler", (_Dated,), {"offset": offset})
    server = _Quiet(("127.0.0.1", 0), handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize(("offset", "status"), [
    (0, Status.OK), (600, Status.WARN), (-600, Status.WARN), (1200, Status.FAIL),
    (-1200, Status.FAIL)])
async def test_clock_skew_against_the_date_header(offset: float, status: Status) -> None:
    with _server(offset) as port:
        check, answered = await clock_skew("s", f"http://127.0.0.1:{port}", None, 3.0)
    assert answered
    assert check.status is status, check
    if status is not Status.OK:
        way = "behind" if offset > 0 else "ahead of"
        assert f" s {way} the store's clock" in check.detail
        assert "timedatectl set-ntp true" in check.fix


async def test_tls_honours_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca, cert, key = _certificates(tmp_path)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    with _server(context=served) as port:
        async def shake(verify: bool | str) -> Check:
            ep = EndpointConfig(name="s", url=f"https://127.0.0.1:{port}", verify=verify)
            context = ssl_context(ep, AioSession())
            return await tls(ep, "127.0.0.1", "127.0.0.1", port, context, 3.0)

        by_path = await shake(str(ca))  # trusted; the test CA's certificates last a day
        assert by_path.status is Status.WARN, by_path
        assert "the certificate expires in 1.0 days" in by_path.detail
        assert by_path.fix == "renew the store's certificate"
        untrusted = await shake(True)
        assert untrusted.status is Status.FAIL
        assert "certificate not trusted" in untrusted.detail
        assert "verify to the CA bundle" in untrusted.fix
        unchecked = await shake(False)
        assert unchecked.status is Status.WARN and "verify: false" in unchecked.detail
        monkeypatch.setenv("AWS_CA_BUNDLE", str(ca))  # verify true honours it, as botocore
        assert "expires in" in (await shake(True)).detail


# --- this host: addresses, nameservers, journal, directories ------------------------------

async def test_an_address_in_use_by_another_program_fails() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        address = f"tcp://127.0.0.1:{held.getsockname()[1]}"
        check = await bind_check("requests.address", address, limit=3)
    assert check.status is Status.FAIL and check.detail == "in use by another program"
    free = await bind_check("requests.address", f"tcp://127.0.0.1:{free_port()}", limit=3)
    assert free.status is Status.OK


def test_an_address_a_running_daemon_holds_is_a_warn(base_config: dict[str, Any],
                                                     ports: dict[str, int],
                                                     tmp_path: Path) -> None:
    with daemon_process(base_config, tmp_path) as (proc, log):
        def bound() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", ports["req"]), timeout=1).close()
            except OSError:
                return False
            return True

        wait_until(bound, 30, "the daemon's request socket")
        check = _run(bind_check("requests.address", f"tcp://127.0.0.1:{ports['req']}",
                                limit=3))
        journal = _run(journal_checks(JournalConfig(path=str(default_journal_path())),
                                      limit=3, mountinfo=Path("/proc/self/mountinfo")))
        proc.terminate()
        proc.wait(30)
    assert check.status is Status.WARN, check
    assert f"in use by trollpush (pid {proc.pid}): a daemon running?" == check.detail
    assert journal[0].status is Status.OK
    assert journal[0].detail == f"writable, in use by pid {proc.pid} (a daemon running)"


async def test_a_nameserver_is_reachable_or_fails() -> None:
    closed = await nameserver_check("subscribe.nameserver", f"tcp://127.0.0.1:{free_port()}",
                                    limit=2)
    assert closed.status is Status.FAIL and "nameserver: false" in closed.fix
    with socket.socket() as ns:
        ns.bind(("127.0.0.1", 0))
        ns.listen(1)
        up = await nameserver_check("publish.nameservers",
                                    f"tcp://127.0.0.1:{ns.getsockname()[1]}", limit=2)
    assert up.status is Status.OK


async def test_the_journal_is_writable_and_local(tmp_path: Path) -> None:
    mounts = tmp_path / "mountinfo"
    mounts.write_text(f"27 1 254:0 / / rw - ext4 /dev/vda rw\n"
                      f"90 27 0:50 / {tmp_path}/nfs rw - nfs4 srv:/export rw\n")
    (tmp_path / "nfs").mkdir()
    path = str(tmp_path / "state" / "journal.sqlite")
    local = await journal_checks(JournalConfig(path=path), limit=3, mountinfo=mounts)
    assert [(c.check, c.status) for c in local] == [("journal", Status.OK),
                                                    ("journal_fs", Status.OK)]
    assert "will be made at start" in local[0].detail and "on ext4" in local[1].detail
    remote = await journal_checks(JournalConfig(path=str(tmp_path / "nfs" / "j.sqlite")),
                                  limit=3, mountinfo=mounts)
    assert remote[1].status is Status.WARN and "on nfs4" in remote[1].detail
    (tmp_path / "a-file").write_text("")
    blocked = await journal_checks(JournalConfig(path=str(tmp_path / "a-file" / "j.sqlite")),
                                   limit=3, mountinfo=mounts)
    assert [c.status for c in blocked] == [Status.FAIL]
    memory = await journal_checks(JournalConfig(path=None), limit=3, mountinfo=mounts)
    assert memory[0].status is Status.WARN


async def test_directories(tmp_path: Path) -> None:
    here = await directory_check("allowed_root", str(tmp_path), limit=3, missing_is_ok=False)
    assert here.status is Status.OK
    gone = str(tmp_path / "gone")
    assert (await directory_check("allowed_root", gone, limit=3, missing_is_ok=False)
            ).status is Status.FAIL
    assert (await directory_check("watch", gone, limit=3, missing_is_ok=True)
            ).status is Status.WARN


async def test_a_call_that_hangs_is_cut_off() -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        await in_thread(time.sleep, 5, limit=0.2)
    assert time.monotonic() - start < 2


# --- the command ---------------------------------------------------------------------------

def test_doctor_help_stays_light() -> None:
    modules, out = _imports("-m", "trollpush", "doctor", "--help")
    assert "usage: trollpush doctor" in out
    assert _heavy(modules) == [] and "trollpush.doctor" not in modules


def test_rate_is_read_as_a_bit_rate(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["doctor", "c.yaml", "--rate", "10Gbit"])
    assert args.rate == 10e9 and args.timeout == 5.0 and not args.no_write
    with pytest.raises(SystemExit) as end:
        main(["doctor", "c.yaml", "--rate", "fast"])
    assert end.value.code == 2
    assert "expected a rate like 1Gbit" in capsys.readouterr().err


def test_render_counts_and_fixes() -> None:
    checks = [Check("a", "x", Status.OK, "fine", "unused"),
              Check("b", "y", Status.WARN, "meh\nline", "do this")]
    assert render(checks).splitlines() == [
        "OK    a x: fine", "WARN  b y: meh\\nline", "      fix: do this", "1 OK, 1 WARN, 0 FAIL"]
    assert exit_code(checks) == 0
    assert exit_code([*checks, Check("c", "z", Status.FAIL, "no", "yes")]) == 1


def _run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)
