"""trollpush: land announced files in S3 object storage, then announce them."""

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
from .models import Job, Rejection, Request, SourceFile, Upload, UploadResult
from .route import Router, parse_destination
from .sqlite_journal import SQLiteJournal
from .transfer import TransferEngine

__version__ = "0.1.0"

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
