"""A posttroll producer in its own process, for burst tests: ``python -m tests.burst_producer
ADDRESS PATH COUNT SECONDS SNDHWM``.

It publishes a probe (a file on another host, which the daemon refuses) every 50 ms until
a line arrives on stdin, then COUNT file announcements for PATH paced evenly over SECONDS,
prints ``sent <seconds>``, and exits at the next line (or end) of stdin.  Its own process,
as a real producer has: its ZeroMQ I/O thread and its GIL are not the daemon's.
"""

from __future__ import annotations

import select
import sys
import time
import uuid

import zmq
from posttroll.message import Message
from posttroll.publisher import create_publisher_from_dict_config


def main(argv: list[str]) -> int:
    address, path, count, seconds, hwm = argv[0], argv[1], int(argv[2]), float(argv[3]), \
        int(argv[4])
    pub = create_publisher_from_dict_config({"name": "burst", "address": address,
                                             "nameservers": False})
    pub.start()
    pub._publisher.publish_socket.setsockopt(zmq.SNDHWM, hwm)
    frames = [Message("/new/file/viirs/", "file", {"uri": path, "n": i}).encode()
              for i in range(count)]
    probe = Message("/new/file/viirs/", "file",
                    {"uri": f"ssh://elsewhere.invalid/probe-{uuid.uuid4().hex}.h5"}).encode()
    deadline = time.monotonic() + 60  # bounded: the test says go long before this
    while not select.select([sys.stdin], [], [], 0.05)[0] and time.monotonic() < deadline:
        pub.send(probe)
    sys.stdin.readline()
    start = time.monotonic()
    for i in range(0, count, 500):
        for raw in frames[i:i + 500]:
            pub.send(raw)
        ahead = start + seconds * min(i + 500, count) / count - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)  # pacing
    print(f"sent {time.monotonic() - start:.3f}", flush=True)
    select.select([sys.stdin], [], [], 120)
    pub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
