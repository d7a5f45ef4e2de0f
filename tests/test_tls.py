"""Endpoint TLS: ``verify`` true (honouring AWS_CA_BUNDLE), false, or a CA bundle path,
against a real HTTPS moto server whose certificate a CA made by the test signed."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trollpush.config import parse_config
from trollpush.errors import ConfigError

from .conftest import CREDS
from .helpers import free_port, started_engine, upload_of


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificates(where: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("trollpush test CA"))
          .issuer_name(_name("trollpush test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = where / "ca.pem", where / "server.pem", where / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@pytest.fixture
def tls_store(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """moto over HTTPS on a free loopback port: (url, the CA bundle that signed it)."""
    ca, cert, key = _certificates(tmp_path)
    port = free_port()
    with open(tmp_path / "moto.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                 "-p", str(port), "-c", str(cert), "-k", str(key)],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "moto.log").read_text()
                assert time.monotonic() < deadline, "the HTTPS moto server did not start"
                time.sleep(0.05)
        yield f"https://127.0.0.1:{port}", ca
    finally:
        proc.terminate()
        proc.wait(10)


def _bucket(url: str, ca: Path) -> str:
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", verify=str(ca),
                      aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"])
    s3.create_bucket(Bucket="tls")
    return "tls"


async def _upload(url: str, tmp_path: Path, **endpoint: Any) -> Any:
    data = tmp_path / "granule.h5"
    data.write_bytes(os.urandom(20_000))
    engine = await started_engine(url, tries=1, **endpoint)
    try:
        return await engine.upload(upload_of(data, "tls", "a/granule.h5"), "default")
    finally:
        await engine.close()


async def test_a_ca_bundle_path_verifies_the_store(tls_store: tuple[str, Path],
                                                   tmp_path: Path) -> None:
    url, ca = tls_store
    _bucket(url, ca)
    result = await _upload(url, tmp_path, verify=str(ca))
    assert result.ok, result.error
    assert result.size == 20_000


async def test_verify_true_refuses_an_unknown_ca(tls_store: tuple[str, Path],
                                                 tmp_path: Path) -> None:
    url, ca = tls_store
    _bucket(url, ca)
    result = await _upload(url, tmp_path)
    assert not result.ok
    assert "certificate" in (result.error or "").lower(), result.error


async def test_verify_true_honours_aws_ca_bundle(tls_store: tuple[str, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    url, ca = tls_store
    _bucket(url, ca)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(ca))
    result = await _upload(url, tmp_path, verify=True)
    assert result.ok, result.error


async def test_verify_false_skips_the_check(tls_store: tuple[str, Path],
                                            tmp_path: Path) -> None:
    url, ca = tls_store
    _bucket(url, ca)
    result = await _upload(url, tmp_path, verify=False)
    assert result.ok, result.error


def _endpoint(tmp_path: Path, verify: object) -> dict[str, Any]:
    return {"requests": {"address": "tcp://127.0.0.1:0"},
            "endpoints": {"default": {"url": "https://127.0.0.1:9", "verify": verify}}}


@pytest.mark.parametrize(("verify", "expected"), [
    (True, True), (False, False), ("{ca}", "{ca}"), ("~/ca.pem", "{home}/ca.pem")])
def test_verify_is_read_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                verify: object, expected: object) -> None:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    fill = {"ca": str(tmp_path / "ca.pem"), "home": str(tmp_path)}
    if isinstance(verify, str):
        verify = verify.format(**fill)
    if isinstance(expected, str):
        expected = expected.format(**fill)
    config = parse_config(_endpoint(tmp_path, verify))
    assert config.endpoints["default"].verify == expected


@pytest.mark.parametrize(("verify", "says"), [
    ("/nonexistent/ca.pem", "a readable CA bundle file"),
    ("ca.pem", "an absolute path"),
    ("", "true, false, or the path"),
    (1, "true, false, or the path"),
    (["a"], "true, false, or the path")])
def test_a_wrong_verify_is_refused(tmp_path: Path, verify: object, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_endpoint(tmp_path, verify))
    assert "endpoints.default.verify" in str(err.value)
    assert says in str(err.value)
