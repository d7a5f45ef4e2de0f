"""Completions consumers can open: the ``filesystem`` JSON trollpush writes is the one
fsspec writes for the same S3FileSystem, it reads the object back from a real store
(plain, and over TLS with ``verify: false`` or a CA bundle), and it never holds a
credential."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from fsspec import AbstractFileSystem
from posttroll.message import Message
from s3fs import S3FileSystem

from trollpush import messages
from trollpush.access import Access, endpoint_access, filesystem
from trollpush.config import EndpointConfig, parse_config
from trollpush.errors import ConfigError
from trollpush.models import Job, Request, SourceFile, Upload, UploadResult

from .conftest import CREDS
from .helpers import Listener, Producer, link, running_daemon
from .test_tls import tls_store  # noqa: F401 (a fixture: moto over HTTPS)


@pytest.fixture(autouse=True)
def fresh_s3fs() -> Iterator[None]:
    """fsspec caches file systems by their arguments: no test reads through another's."""
    S3FileSystem.clear_instance_cache()
    yield
    S3FileSystem.clear_instance_cache()


def opened(item: dict[str, Any]) -> bytes:
    """What a consumer (trollflow2's launcher) does with a completion's file item."""
    fs = AbstractFileSystem.from_json(json.dumps(item["filesystem"]))
    with fs.open(item["path"], "rb") as f:
        data: bytes = f.read()
    return data


# what fsspec writes for the S3FileSystem each endpoint stands for
SAME_AS_S3FS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"url": "http://127.0.0.1:9000", "region": "eu-north-1", "addressing_style": "path"},
     {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-north-1"},
      "config_kwargs": {"s3": {"addressing_style": "path"}}}),
    ({}, {}),  # AWS, the consumer's own region and addressing
    ({"region": "us-west-2", "addressing_style": "virtual"},
     {"client_kwargs": {"region_name": "us-west-2"},
      "config_kwargs": {"s3": {"addressing_style": "virtual"}}}),
    ({"url": "https://s3.example.org", "verify": False},
     {"client_kwargs": {"endpoint_url": "https://s3.example.org", "verify": False}}),
    ({"url": "http://s3.example.org", "verify": False},  # no TLS: nothing to verify
     {"client_kwargs": {"endpoint_url": "http://s3.example.org"}}),
    ({"url": "https://s3.example.org", "verify": "/etc/pki/site-ca.pem"},  # trollpush's file
     {"client_kwargs": {"endpoint_url": "https://s3.example.org"}}),
    ({"url": "https://10.0.0.5:8333", "verify": False, "public_url": "https://s3.example.org",
      "region": "eu"},
     {"client_kwargs": {"endpoint_url": "https://s3.example.org", "region_name": "eu"}}),
]


@pytest.mark.parametrize(("endpoint", "kwargs"), SAME_AS_S3FS)
def test_the_json_is_what_fsspec_writes(endpoint: dict[str, Any], kwargs: dict[str, Any]
                                        ) -> None:
    ours = filesystem(EndpointConfig(name="e", **endpoint))
    theirs = json.loads(S3FileSystem(skip_instance_cache=True, **kwargs).to_json())
    assert ours == theirs
    back = AbstractFileSystem.from_json(json.dumps(ours))
    assert isinstance(back, S3FileSystem)
    assert back.client_kwargs == kwargs.get("client_kwargs", {})
    assert back.config_kwargs == kwargs.get("config_kwargs", {})


def _job(kind: str, data: dict[str, Any], sources: list[SourceFile]
         ) -> tuple[Job, list[UploadResult]]:
    request = Request(id="r1", subject="/new/file/", type=kind, data=data,
                      metadata={"platform_name": "NOAA-20"}, files=tuple(sources),
                      origin="subscribe")
    uploads = tuple(Upload(s, "bucket", f"out/{s.uid}") for s in sources)
    job = Job(request, "viirs", "store", uploads, {"platform_name": "NOAA-20"}, "/up/")
    return job, [UploadResult(u, 12, 1, 0.1) for u in uploads]


def _source(name: str) -> SourceFile:
    return SourceFile(uri=f"/data/{name}", path=Path(f"/data/{name}"), uid=name)


ACCESS = endpoint_access(EndpointConfig(name="store", url="http://127.0.0.1:9000",
                                        region="eu-north-1"))


def test_every_file_item_says_how_to_open_it() -> None:
    """A file at the top level, each item of a dataset, each file of a collection (a list
    with a loose file and a dataset, or a mapping of named datasets); the endpoint by
    name and by URL at the top."""
    a, b, c = _source("a.h5"), _source("b.h5"), _source("c.h5")
    cases: list[tuple[str, dict[str, Any], list[SourceFile], Any]] = [
        ("file", {"uri": a.uri}, [a], lambda d: [d]),
        ("dataset", {"dataset": [{"uri": a.uri}, {"uri": b.uri}]}, [a, b],
         lambda d: d["dataset"]),
        ("collection", {"collection": [{"dataset": [{"uri": a.uri}, {"uri": b.uri}]},
                                       {"uri": c.uri}]}, [a, b, c],
         lambda d: [*d["collection"][0]["dataset"], d["collection"][1]]),
        ("collection", {"collection": {"ir": {"dataset": [{"uri": a.uri}, {"uri": b.uri}]},
                                       "vs": {"dataset": [{"uri": c.uri}]}}}, [a, b, c],
         lambda d: [*d["collection"]["ir"]["dataset"], *d["collection"]["vs"]["dataset"]]),
    ]
    fs = filesystem(EndpointConfig(name="store", url="http://127.0.0.1:9000",
                                   region="eu-north-1"))
    for kind, data, sources, items_of in cases:
        job, results = _job(kind, data, sources)
        sent = Message.decode(messages.completion(job, results, ACCESS).encode()).data
        assert sent["endpoint"] == "store"
        assert sent["endpoint_url"] == "http://127.0.0.1:9000"
        items = items_of(sent)
        assert [i["path"] for i in items] == [f"s3://bucket/out/{s.uid}" for s in sources]
        assert [i["uri"] for i in items] == [i["path"] for i in items]
        assert [i["uid"] for i in items] == [s.uid for s in sources]  # the base name
        assert all(i["filesystem"] == fs for i in items)


def test_announce_filesystem_false_leaves_it_out() -> None:
    access = endpoint_access(EndpointConfig(name="store", url="http://127.0.0.1:9000",
                                            announce_filesystem=False))
    job, results = _job("dataset", {"dataset": [{"uri": "/data/a.h5"}]}, [_source("a.h5")])
    sent = messages.completion(job, results, access).data
    assert "filesystem" not in sent["dataset"][0] and "path" not in sent["dataset"][0]
    assert sent["endpoint_url"] == "http://127.0.0.1:9000"


def test_aws_announces_no_endpoint_url() -> None:
    job, results = _job("file", {"uri": "/data/a.h5"}, [_source("a.h5")])
    sent = messages.completion(job, results, endpoint_access(EndpointConfig(name="s"))).data
    assert "endpoint_url" not in sent
    assert sent["filesystem"] == {"cls": "s3fs.core:S3FileSystem", "protocol": "s3",
                                  "args": []}


def test_the_keys_are_read_at_load() -> None:
    endpoint: dict[str, Any] = {"url": "http://10.0.0.5:8333"}
    base = {"requests": {}, "endpoints": {"e": endpoint}}
    config = parse_config(base)
    assert config.endpoints["e"].announce_filesystem is True
    assert config.endpoints["e"].public_url is None
    endpoint.update(announce_filesystem=False, public_url="https://s3.example.org")
    ep = parse_config(base).endpoints["e"]
    assert (ep.announce_filesystem, ep.public_url) == (False, "https://s3.example.org")
    assert "public_url=https://s3.example.org announce_filesystem=false" in ep.summary()
    endpoint.update(announce_filesystem="no", public_url="s3.example.org")
    with pytest.raises(ConfigError) as err:
        parse_config(base)
    assert "endpoints.e.public_url" in str(err.value)
    assert "endpoints.e.announce_filesystem" in str(err.value)


def test_a_completion_reads_back_and_holds_no_secret(
        base_config: dict[str, Any], bucket: str, granule: Path, s3_url: str,
        listener: Listener, producer: Producer, caplog: pytest.LogCaptureFixture) -> None:
    """A real daemon uploads with explicit keys and a session token: the completion opens
    the object through s3fs (with the consumer's own keys) and shows none of them."""
    secrets = {"access_key_id": "AKIAEXPLICITKEY0001", "secret_access_key": "s3cr3t-VALUE-9",
               "session_token": "SESSION-token-value-42"}
    base_config["endpoints"]["default"].update(secrets)
    with running_daemon(base_config):
        link(producer, listener, "/new/file/viirs/")
        producer.send("/new/file/viirs/", "file", {"uri": str(granule), "sensor": "viirs"})
        got = listener.wait_for(lambda ms: bool(ms), 30, "the completion")
    completion = got[0]
    assert completion.type == "file", completion.data
    wire = completion.encode()
    for value in secrets.values():
        assert value not in wire and value not in caplog.text
    assert completion.data["endpoint_url"] == s3_url
    assert completion.data["path"].startswith(f"s3://{bucket}/j01/")
    assert opened(completion.data) == granule.read_bytes()


def _tls_object(url: str, ca: Path, bucket: str) -> dict[str, Any]:
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", verify=str(ca),
                      aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"])
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="x/tls.bin", Body=b"over TLS")
    return {"path": f"s3://{bucket}/x/tls.bin"}


def test_verify_false_is_announced_and_needed(tls_store: tuple[str, Path],  # noqa: F811
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    url, ca = tls_store
    item = _tls_object(url, ca, "tls-false")
    item["filesystem"] = filesystem(EndpointConfig(name="e", url=url, region="us-east-1",
                                                   verify=False))
    assert item["filesystem"]["client_kwargs"]["verify"] is False
    assert opened(item) == b"over TLS"
    S3FileSystem.clear_instance_cache()
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # a certificate error is not worth retrying
    del item["filesystem"]["client_kwargs"]["verify"]  # without it the consumer cannot read
    with pytest.raises(Exception, match=r"(?i)certificate"):
        opened(item)


def test_a_ca_bundle_stays_on_trollpushs_host(tls_store: tuple[str, Path],  # noqa: F811
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The path is not announced; a consumer that trusts the CA its own way reads."""
    url, ca = tls_store
    item = _tls_object(url, ca, "tls-ca")
    item["filesystem"] = filesystem(EndpointConfig(name="e", url=url, region="us-east-1",
                                                   verify=str(ca)))
    assert str(ca) not in json.dumps(item["filesystem"])
    monkeypatch.setenv("AWS_CA_BUNDLE", str(ca))
    assert opened(item) == b"over TLS"


def test_access_is_computed_once_per_endpoint() -> None:
    """The daemon keeps one Access per endpoint; each item still gets its own dict."""
    access = Access("http://x", json.dumps({"cls": "c"}))
    one, two = access.item_fields("s3://b/1"), access.item_fields("s3://b/2")
    assert one["filesystem"] == two["filesystem"] and one["filesystem"] is not two["filesystem"]
