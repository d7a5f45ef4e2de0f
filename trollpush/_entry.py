"""The console script's first step: ``trollpush run`` takes its signals before anything
else is imported (the CLI's own imports take ~0.1 s; a service manager's SIGTERM may come
sooner).  See :mod:`trollpush._startup`."""

from __future__ import annotations

import sys


def main() -> int:
    startup = None
    if sys.argv[1:2] == ["run"]:
        from ._startup import StartupSignals

        startup = StartupSignals()
        startup.install()
    from .cli import main as cli_main

    return cli_main(startup=startup)
