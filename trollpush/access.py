"""How consumers reach what trollpush announces: per endpoint, the URL to announce and
the fsspec JSON of an ``s3fs.core.S3FileSystem`` that opens the endpoint's objects.

trollflow2 (and anything else built on fsspec) opens a completion's file item with
``AbstractFileSystem.from_json(json.dumps(item["filesystem"])).open(item["path"])``, as it
does for pytroll-collectors' s3stalker.  s3fs is not a dependency of the daemon: the
JSON is written here, in the form ``AbstractFileSystem.to_json`` writes and ``from_json``
reads (``tests/test_access.py`` holds the two side by side), once per endpoint at start,
never per message.  It never holds credentials: consumers bring their own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config.model import EndpointConfig

#: how fsspec's to_json names the class and the protocol of an s3fs file system
S3FS_CLASS = "s3fs.core:S3FileSystem"
S3FS_PROTOCOL = "s3"


@dataclass(frozen=True)
class Access:
    """What completions tell consumers about the endpoint their objects landed through."""

    #: ``public_url``, else ``url``; None: AWS (the consumer's own default applies)
    endpoint_url: str | None
    #: the fsspec JSON text; None when the endpoint says ``announce_filesystem: false``
    filesystem: str | None

    def item_fields(self, url: str) -> dict[str, Any]:
        """``filesystem`` and ``path`` of one file item whose object is ``url``.  The
        filesystem is a new dict for each item: no two messages share a mutable part."""
        if self.filesystem is None:
            return {}
        return {"filesystem": json.loads(self.filesystem), "path": url}


def filesystem(endpoint: EndpointConfig) -> dict[str, Any]:
    """The fsspec JSON (as a dict) of the S3FileSystem that reads ``endpoint``'s objects.

    Only what reaches the store: the URL (``public_url`` if set), the region, the
    addressing style.  ``verify: false`` is passed on for an ``https://`` URL that
    consumers share with trollpush (they could not read otherwise); a CA bundle path is
    not: it is a path on trollpush's host, and a consumer elsewhere names its own
    (``AWS_CA_BUNDLE``).  Behind a ``public_url`` the consumers' TLS is that URL's own
    business, so nothing is passed on.
    """
    client: dict[str, Any] = {}
    url = endpoint.public_url or endpoint.url
    if url:
        client["endpoint_url"] = url
    if endpoint.region:
        client["region_name"] = endpoint.region
    if (endpoint.verify is False and not endpoint.public_url and url
            and url.startswith("https://")):
        client["verify"] = False
    out: dict[str, Any] = {"cls": S3FS_CLASS, "protocol": S3FS_PROTOCOL, "args": []}
    if client:
        out["client_kwargs"] = client
    if endpoint.addressing_style != "auto":  # auto is botocore's default: nothing to say
        out["config_kwargs"] = {"s3": {"addressing_style": endpoint.addressing_style}}
    return out


def endpoint_access(endpoint: EndpointConfig) -> Access:
    """What completions through ``endpoint`` announce about it."""
    fs = json.dumps(filesystem(endpoint)) if endpoint.announce_filesystem else None
    return Access(endpoint.public_url or endpoint.url, fs)


def accesses(endpoints: Mapping[str, EndpointConfig]) -> Mapping[str, Access]:
    """Each endpoint's Access by name, computed once (the daemon's endpoints are fixed)."""
    return MappingProxyType({name: endpoint_access(ep) for name, ep in endpoints.items()})


__all__ = ["Access", "accesses", "endpoint_access", "filesystem"]
