"""Transfer: files to S3 objects through one warm pool per endpoint, under one retry policy.

``engine`` is the facade (``TransferEngine``); ``policy`` decides what is tried again, at
once or later; ``single`` and ``multipart`` make the store calls of one upload;
``conditional`` decides what a conditional write's 412 means; ``pool`` keeps each
endpoint's connections warm and its slots; ``source`` opens and reads the files;
``checksum`` computes what the store verifies.

The names below are imported on first use (PEP 562), as in ``trollpush`` itself: the
config and the receivers need only ``checksum`` and ``source``, and must not pay for
aiobotocore (nor import the engine, which imports the config).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import TransferEngine
    from .multipart import Progress, part_size
    from .policy import classify, retry_later
    from .pool import EndpointPool
    from .source import SourceChanged

#: the module that defines each public name
_LAZY = {"TransferEngine": "engine", "Progress": "multipart", "part_size": "multipart",
         "classify": "policy", "retry_later": "policy", "EndpointPool": "pool",
         "SourceChanged": "source"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    return value


__all__ = ["EndpointPool", "Progress", "SourceChanged", "TransferEngine", "classify",
           "part_size", "retry_later"]
