"""The stdin/stdout protocol shared by the library peers."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def ready(**fields: Any) -> None:
    emit(ready=True, pid=os.getpid(), t=time.monotonic(), **fields)


def parse(line: str) -> dict[str, Any] | None:
    """One request line, or None at the end of input."""
    line = line.strip()
    if not line:
        return None
    request: dict[str, Any] = json.loads(line)
    return request


def result(key: str, *, ok: bool, error: str | None = None) -> None:
    emit(key=key, t=time.monotonic(), ok=ok, error=error)
