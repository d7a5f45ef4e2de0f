"""``trollpush doctor CONFIG``: is this host, and each endpoint, ready for the config?

Three groups of checks, each a small function that returns a :class:`Check` (OK, WARN or
FAIL, with the fix in one line): the host's TCP tuning (``host``), each endpoint
(``endpoints``, ``buckets``) and this host's side of the config (``local``).  Endpoints
and local checks run concurrently; the host checks size socket buffers against the RTTs
the endpoints measured.  Every network call is bounded by ``limit`` (``--timeout``);
secrets found on the way (and every SSE-C key the probes send) are scrubbed from every
line.  docs/tuning.md says what each check means.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
from collections.abc import Sequence
from pathlib import Path

from .. import logsafe
from ..config import Config, load_config
from .checks import Check, Status

__all__ = ["Check", "Status", "command", "diagnose", "exit_code", "render"]

DEFAULT_RATE = 1e9  # bits per second
DEFAULT_TIMEOUT = 5.0


async def diagnose(config: Config, *, write: bool = True, rate: float = DEFAULT_RATE,
                   limit: float = DEFAULT_TIMEOUT, sysctl_root: Path | None = None,
                   mountinfo: Path | None = None) -> list[Check]:
    """Every check, host first, then each endpoint, then the local ones."""
    from .buckets import buckets_by_endpoint
    from .endpoints import check_endpoint
    from .host import SYSCTL_ROOT, host_checks
    from .local import MOUNTINFO, local_checks

    uses = buckets_by_endpoint(config)
    local = asyncio.ensure_future(local_checks(config, limit=limit,
                                               mountinfo=mountinfo or MOUNTINFO))
    reports = await asyncio.gather(*(
        check_endpoint(ep, uses.get(name, {}), write=write, limit=limit)
        for name, ep in config.endpoints.items()))
    host = host_checks(sysctl_root or SYSCTL_ROOT, {r.name: r.rtt for r in reports}, rate)
    checks = [*host, *(c for r in reports for c in r.checks), *await local]
    secrets = {s for r in reports for s in r.secrets} | _env_secrets() | _key_secrets(config)
    return [c.scrubbed(secrets) for c in checks]


def _env_secrets() -> set[str]:
    return {v for k, v in os.environ.items()
            if k in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID") and v}


def _key_secrets(config: Config) -> set[str]:
    """Every form of each SSE-C key the probes send (an error text must not quote one)."""
    blocks = [*(ep.object for ep in config.endpoints.values()),
              *(t.object for t in config.targets)]
    keys = {b.sse_c.key for b in blocks if b.sse_c is not None and b.sse_c.key is not None}
    return {form for key in keys
            for form in (base64.b64encode(key).decode(), key.hex(), repr(key)[2:-1])}


def exit_code(checks: Sequence[Check]) -> int:
    """0 when nothing failed (WARNs allowed), 1 otherwise."""
    return 1 if any(c.status is Status.FAIL for c in checks) else 0


def render(checks: Sequence[Check]) -> str:
    """One line per check, its fix on the next; a count at the end."""
    lines = []
    for c in checks:
        lines.append(logsafe.escape(f"{c.status.value:<4}  {c.check} {c.subject}: {c.detail}"))
        if c.fix and c.status is not Status.OK:
            lines.append(logsafe.escape(f"      fix: {c.fix}"))
    counts = {s: sum(c.status is s for c in checks) for s in Status}
    lines.append(", ".join(f"{n} {s.value}" for s, n in counts.items()))
    return "\n".join(lines)


def command(args: argparse.Namespace) -> int:
    """The ``doctor`` subcommand (see ``cli._add_doctor`` for its options)."""
    config = load_config(args.config)
    checks = asyncio.run(diagnose(config, write=not args.no_write, rate=args.rate,
                                  limit=args.timeout))
    if args.json:
        print(json.dumps([c.as_dict() for c in checks], indent=2))
    else:
        print(render(checks))
    return exit_code(checks)
