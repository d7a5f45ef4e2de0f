"""posttroll nameserver mode: the daemon finds its producer through a real NameServer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import posttroll
import posttroll.publisher
import pytest
from posttroll.message import Message
from posttroll.ns import NameServer
from posttroll.publisher import create_publisher_from_dict_config

from .helpers import Listener, free_port, running_daemon, wait_until


@pytest.fixture
def nameserver(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A NameServer on free ports, multicast off; publishers advertise 127.0.0.1."""
    # posttroll advertises the host's outward address; keep all traffic on loopback
    monkeypatch.setattr(posttroll.publisher, "get_own_ip", lambda: "127.0.0.1")
    with posttroll.config.set(nameserver_port=free_port(), address_publish_port=free_port(),
                              broadcast_port=free_port()):
        ns = NameServer(multicast_enabled=False, restrict_to_localhost=True)
        thread = threading.Thread(target=ns.run, daemon=True)
        thread.start()
        try:
            yield
        finally:
            ns.stop()
            thread.join(timeout=10)


def test_subscribe_through_nameserver(nameserver: None, base_config: dict[str, Any],
                                      ports: dict[str, int], granule: Path, s3: Any,
                                      bucket: str) -> None:
    producer = create_publisher_from_dict_config(
        {"name": "tp-producer", "port": 0, "nameservers": ["localhost"],
         "broadcast_interval": 0.2})
    producer.start()
    listener = Listener(f"tcp://127.0.0.1:{ports['pub']}")
    base_config["subscribe"] = {"topics": ["/new/file/"], "nameserver": "localhost",
                                "services": ["tp-producer"], "addr_listener": True,
                                "timeout": 5}
    try:
        with running_daemon(base_config) as daemon:
            probe = Message("/new/file/viirs/", "file", {"uri": "ssh://elsewhere.invalid/p"})

            def linked() -> bool:
                producer.send(probe.encode())
                time.sleep(0.1)  # paces the probes (bounded by wait_until's timeout)
                return bool(listener.of_type("failure"))

            wait_until(linked, 20, "the daemon to find the producer via the nameserver")
            producer.send(Message("/new/file/viirs/", "file", {"uri": str(granule)}).encode())
            msgs = listener.wait_for(lambda ms: any(m.type == "file" for m in ms))
            assert daemon.subscriber is not None and daemon.subscriber.received >= 2
    finally:
        listener.close()
        producer.stop()
    done = next(m for m in msgs if m.type == "file")
    assert done.data["uri"] == f"s3://{bucket}/j01/2026/11/21/{granule.name}"
