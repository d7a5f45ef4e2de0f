"""Peer: the trollmoves dispatcher, run with its own code in ``.venv-peers``.

trollmoves' command line publishes through a multicasting NoisyPublisher when no
nameserver is given; the benchmark must not send multicast, so this wrapper runs the
same ``Dispatcher`` and ``PublisherReporter`` code with a plain publisher bound to a
loopback address instead. Everything else (posttroll listener, conditions, s3fs mover,
one message at a time) is trollmoves' own.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import version
from typing import Any

from posttroll.publisher import create_publisher_from_dict_config
from trollmoves import dispatcher


class LoopbackReporter(dispatcher.PublisherReporter):  # type: ignore[misc]
    """trollmoves' reporter, with a plain (non-multicast) posttroll publisher."""

    def __init__(self, config: dict[str, Any], address: str) -> None:
        self.config = config
        self._pub_starter = create_publisher_from_dict_config(
            {"name": "dispatcher", "address": address, "nameservers": False})
        self.publisher = self._pub_starter.start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trollmoves_dispatcher.py")
    parser.add_argument("config")
    parser.add_argument("--publish-address", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="[%(asctime)s %(levelname)-8s %(name)s] %(message)s")
    logging.getLogger("trollmoves").info("trollmoves %s dispatcher starting",
                                         version("trollmoves"))
    disp = dispatcher.Dispatcher(args.config)
    disp.publisher = LoopbackReporter(disp.config, args.publish_address)
    try:
        disp.run()
    except KeyboardInterrupt:
        pass
    finally:
        disp.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
