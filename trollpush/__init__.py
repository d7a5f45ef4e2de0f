"""trollpush: land announced files in S3 object storage, then announce them.

The names below are imported on first use (PEP 562): ``trollpush send`` and ``import
trollpush.client`` must not pay for aiobotocore and the daemon, and ``trollpush run``
must reach its signal handlers within milliseconds of starting.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import SendResult, Unreachable, send
    from .config import (
        Config,
        DaemonConfig,
        EndpointConfig,
        PublishConfig,
        RequestsConfig,
        SubscribeConfig,
        TargetConfig,
        load_config,
        parse_config,
    )
    from .daemon import Daemon, run_daemon
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
    from .journal import Journal, MemoryJournal
    from .messages import parse_destination
    from .models import Job, Rejection, Request, SourceFile, Upload, UploadResult
    from .route import Router
    from .sqlite_journal import SQLiteJournal
    from .transfer import TransferEngine

__version__ = "0.1.0"

#: the module that defines each public name
_LAZY: dict[str, str] = {name: module for module, names in {
    "client": "SendResult Unreachable send",
    "config": "Config DaemonConfig EndpointConfig PublishConfig RequestsConfig "
              "SubscribeConfig TargetConfig load_config parse_config",
    "daemon": "Daemon run_daemon",
    "errors": "ConfigError ConfigProblem JournalError MessageError PermanentTransferError "
              "Reason RetriesExhausted RouteError SetupError TransferError TransferTimeout "
              "TrollpushError UsageError",
    "journal": "Journal MemoryJournal",
    "messages": "parse_destination",
    "models": "Job Rejection Request SourceFile Upload UploadResult",
    "route": "Router",
    "sqlite_journal": "SQLiteJournal",
    "transfer": "TransferEngine",
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
    # configuration
    "Config", "DaemonConfig", "EndpointConfig", "PublishConfig", "RequestsConfig",
    "SubscribeConfig", "TargetConfig", "load_config", "parse_config",
    # the pipeline
    "Daemon", "run_daemon", "Router", "parse_destination", "TransferEngine", "Journal",
    "MemoryJournal", "SQLiteJournal",
    # data flowing through it
    "Request", "Rejection", "SourceFile", "Job", "Upload", "UploadResult",
    # client
    "send", "SendResult", "Unreachable",
    # errors
    "TrollpushError", "ConfigError", "ConfigProblem", "MessageError", "RouteError", "Reason",
    "TransferError", "TransferTimeout", "PermanentTransferError", "RetriesExhausted",
    "UsageError", "SetupError", "JournalError", "__version__",
]
