"""Configuration: typed and frozen (``model``), with every default and rule in one place
(``defaults``), read and validated completely at load (``load``), and described as a JSON
Schema for editors (``schema``).

Every name that ``trollpush.config`` has always offered is here.  Nothing heavier than
PyYAML and trollsift is imported: ``trollpush send`` and ``client`` come through here.
"""

from __future__ import annotations

from .defaults import EVENT_LOOPS, RECEIVE_HWM, REQUEST_ADDRESS, default_journal_path
from .load import load_config, parse_config
from .model import (
    Choice,
    Comparison,
    Condition,
    ConditionSet,
    Config,
    DaemonConfig,
    EndpointConfig,
    HttpConfig,
    JetStreamConfig,
    JournalConfig,
    ObjectConfig,
    PublishConfig,
    RequestsConfig,
    S3DaemonConfig,
    Scalar,
    SubscribeConfig,
    TargetConfig,
    WatchConfig,
    default_endpoint,
)
from .schema import config_schema
from .units import MiB

__all__ = [
    # the configuration and its sections
    "Config", "SubscribeConfig", "RequestsConfig", "S3DaemonConfig", "HttpConfig",
    "WatchConfig", "JetStreamConfig", "PublishConfig", "EndpointConfig", "TargetConfig",
    "DaemonConfig",
    "JournalConfig", "ObjectConfig", "Scalar", "default_endpoint",
    # a target's conditions
    "ConditionSet", "Condition", "Comparison", "Choice",
    # reading it
    "load_config", "parse_config", "config_schema",
    # defaults other modules use
    "REQUEST_ADDRESS", "RECEIVE_HWM", "EVENT_LOOPS", "MiB", "default_journal_path",
]
