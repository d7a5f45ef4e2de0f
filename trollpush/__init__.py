"""trollpush: land announced files in S3 object storage, then announce them.

The public API is small: send a request to a running daemon (``send``), load a config,
run a daemon (``serve``), and the errors.  Everything else lives in its stage's module
(see docs/architecture.md).  Names are imported on first use (PEP 562): ``trollpush
send`` and ``import trollpush.client`` must not pay for aiobotocore and the daemon, and
``trollpush run`` must reach its signal handlers within milliseconds of starting.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import SendResult, Unreachable, send
    from .config import Config, load_config, parse_config
    from .errors import (
        ConfigError,
        ConfigProblem,
        JournalError,
        MessageError,
        PermanentTransferError,
        Reason,
        RetriesExhausted,
        RouteError,
        SetupError,
        TransferError,
        TransferTimeout,
        TrollpushError,
        UsageError,
    )
    from .service import serve

__version__ = "0.1.0"

#: the module that defines each public name
_LAZY: dict[str, str] = {name: module for module, names in {
    "client": "SendResult Unreachable send",
    "config": "Config load_config parse_config",
    "service": "serve",
    "errors": "ConfigError ConfigProblem JournalError MessageError PermanentTransferError "
              "Reason RetriesExhausted RouteError SetupError TransferError TransferTimeout "
              "TrollpushError UsageError",
}.items() for name in names.split()}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    # send a request to a running daemon
    "send", "SendResult", "Unreachable",
    # configure and run one
    "Config", "load_config", "parse_config", "serve",
    # errors: one root, families by cause, reasons as an enum
    "TrollpushError", "ConfigError", "ConfigProblem", "MessageError", "RouteError", "Reason",
    "TransferError", "TransferTimeout", "PermanentTransferError", "RetriesExhausted",
    "UsageError", "SetupError", "JournalError", "__version__",
]
