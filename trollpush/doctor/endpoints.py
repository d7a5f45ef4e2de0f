"""Per endpoint: DNS, TCP connect time (the RTT), TLS, clock skew, credentials, buckets.

The network checks run in order and stop at the first that fails (a store that cannot
be resolved cannot be connected to); each is bounded by ``limit`` (``--timeout``).
TLS contexts follow the endpoint's ``verify`` exactly as the daemon's client does.
Credentials are looked up, never shown: their values go into ``secrets``, which the
doctor scrubs from every line it prints.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import ipaddress
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiobotocore.session import AioSession
from botocore.httpsession import create_urllib3_context, get_cert_path

from ..config import EndpointConfig
from .buckets import Probe, bucket_checks
from .checks import Check, Status, fail, in_thread, ms, ok, warn, why

SKEW_WARN = 60.0  # seconds; past this a clock is drifting
SKEW_FAIL = 900.0  # S3 refuses signatures more than 15 minutes off
CERT_WARN_DAYS = 14


@dataclass
class EndpointReport:
    """What the doctor found on one endpoint, and the RTT the host checks size against."""

    name: str
    checks: list[Check] = field(default_factory=list)
    rtt: float | None = None
    secrets: set[str] = field(default_factory=set)


async def check_endpoint(ep: EndpointConfig, buckets: Mapping[str, Sequence[Probe]], *,
                         write: bool, limit: float) -> EndpointReport:
    """Every check of one endpoint; ``buckets`` maps each bucket (or bucket template)
    its targets name to the probes of those targets' object options."""
    from ..transfer.pool import EndpointPool

    report = EndpointReport(ep.name)
    session = AioSession(profile=ep.profile) if ep.profile else AioSession()
    report.checks.append(await credentials(ep, session, limit, report.secrets))
    pool = EndpointPool(replace(ep, prewarm=0))  # the daemon's client, without warming
    try:
        try:
            async with asyncio.timeout(limit):
                await pool.start()
        except Exception as err:
            report.checks.append(fail("client", ep.name, f"no S3 client: {why(err)}",
                                      f"correct endpoints.{ep.name} (see the detail)"))
            return report
        url = ep.url or str(pool.client.meta.endpoint_url)
        answered = await network_checks(ep, url, session, limit, report)
        report.checks += await bucket_checks(pool.client, ep, buckets, write=write,
                                             limit=limit, reachable=answered)
    finally:
        await pool.close()
    return report


async def network_checks(ep: EndpointConfig, url: str, session: AioSession, limit: float,
                         report: EndpointReport) -> bool:
    """DNS, connect, TLS and clock into ``report``; True once the store answered HTTP."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    found, addr = await resolve(ep.name, host, port, limit, aws=ep.url is None)
    report.checks.append(found)
    if addr is None:
        return False
    done, rtt = await connect_time(ep.name, host, addr, port, limit)
    report.checks.append(done)
    if rtt is None:
        return False
    report.rtt = rtt
    context = None
    if https:
        try:
            context = ssl_context(ep, session)
        except (OSError, ssl.SSLError) as err:
            report.checks.append(fail("tls", ep.name, f"cannot load the CA bundle: {why(err)}",
                                      f"give endpoints.{ep.name}.verify a readable PEM file"))
            return False
        shake = await tls(ep, host, addr, port, context, limit)
        report.checks.append(shake)
        if shake.status is Status.FAIL:
            return False
    skew, answered = await clock_skew(ep.name, url, context, limit)
    report.checks.append(skew)
    return answered


async def resolve(name: str, host: str, port: int, limit: float, *, aws: bool = False
                  ) -> tuple[Check, str | None]:
    try:
        return ok("dns", name, f"{host}: an IP address, nothing to look up"), str(
            ipaddress.ip_address(host))
    except ValueError:
        pass
    start = time.monotonic()
    try:
        infos = await in_thread(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM,
                                limit=limit)
    except TimeoutError:
        return fail("dns", name, f"{host}: no answer within {limit:g} s",
                    "check the resolver (/etc/resolv.conf) and that it answers from "
                    "this host"), None
    except OSError as err:
        return fail("dns", name, f"{host}: {why(err)}",
                    f"give this host DNS and access to AWS, or endpoints.{name} a url"
                    if aws else f"correct the host in endpoints.{name}.url, or add it to "
                    "DNS or /etc/hosts"), None
    addrs = list(dict.fromkeys(str(info[4][0]) for info in infos))
    return ok("dns", name, f"{host} is {', '.join(addrs[:4])} ({ms(time.monotonic() - start)})"
              ), addrs[0]


async def connect_time(name: str, host: str, addr: str, port: int, limit: float,
                       tries: int = 3) -> tuple[Check, float | None]:
    """The least of ``tries`` TCP connects: one round trip each, so about the RTT."""
    times = []
    for _ in range(tries):
        start = time.monotonic()
        try:
            async with asyncio.timeout(limit):
                _, writer = await asyncio.open_connection(addr, port)
        except TimeoutError:
            return fail("connect", name, f"{host}:{port} ({addr}): no connection within "
                        f"{limit:g} s (TLS, clock and buckets not checked)",
                        "a firewall dropping packets, or a wrong host or port in "
                        f"endpoints.{name}.url"), None
        except OSError as err:
            return fail("connect", name, f"{host}:{port} ({addr}): {why(err)} (TLS, clock "
                        "and buckets not checked)",
                        f"start the store or correct the host and port in "
                        f"endpoints.{name}.url"), None
        times.append(time.monotonic() - start)
        writer.close()
        await _closed(writer)
    rtt = min(times)
    return ok("connect", name, f"{addr}:{port} in {ms(rtt)} (least of {tries}: the RTT)"), rtt


def ssl_context(ep: EndpointConfig, session: AioSession) -> ssl.SSLContext:
    """The context aiobotocore builds for this endpoint: ``verify`` true means
    AWS_CA_BUNDLE or the profile's ca_bundle if set, else botocore's default CAs."""
    verify: bool | str = ep.verify
    if verify is True:
        verify = session.get_config_variable("ca_bundle") or True
    context: ssl.SSLContext = create_urllib3_context()
    if verify:
        context.check_hostname = True
        context.load_verify_locations(get_cert_path(verify))
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def tls(ep: EndpointConfig, host: str, addr: str, port: int, context: ssl.SSLContext,
              limit: float) -> Check:
    name = ep.name
    trust = ("the CA bundle " + ep.verify if isinstance(ep.verify, str)
             else "AWS_CA_BUNDLE, the profile's ca_bundle, or the default CAs")
    try:
        async with asyncio.timeout(limit):
            _, writer = await asyncio.open_connection(addr, port, ssl=context,
                                                      server_hostname=host)
    except ssl.SSLCertVerificationError as err:
        return fail("tls", name, f"certificate not trusted: {err.verify_message}",
                    f"set endpoints.{name}.verify to the CA bundle (PEM) that signed the "
                    f"store's certificate (checked against {trust})")
    except TimeoutError:
        return fail("tls", name, f"no TLS handshake within {limit:g} s",
                    f"is {host}:{port} a TLS port? (http:// in endpoints.{name}.url if not)")
    except (OSError, ssl.SSLError) as err:
        return fail("tls", name, f"handshake failed: {why(err)}",
                    f"is {host}:{port} a TLS port? (http:// in endpoints.{name}.url if not)")
    try:
        tls_object: Any = writer.get_extra_info("ssl_object")
        version = tls_object.version() if tls_object else "TLS"
        cert = tls_object.getpeercert() if tls_object else None
    finally:
        writer.close()
        await _closed(writer)
    if ep.verify is False:
        return warn("tls", name, f"{version}; the certificate is not checked (verify: false)",
                    f"give endpoints.{name}.verify the store's CA bundle (PEM) instead")
    expires = cert.get("notAfter") if cert else None
    if not expires:
        return ok("tls", name, f"{version}, certificate trusted ({trust})")
    left = (ssl.cert_time_to_seconds(expires) - time.time()) / 86400
    if left < CERT_WARN_DAYS:
        return warn("tls", name, f"{version}; the certificate expires in {left:.1f} days "
                    f"({expires})", "renew the store's certificate")
    return ok("tls", name, f"{version}, certificate trusted until {expires}")


async def clock_skew(name: str, url: str, context: ssl.SSLContext | None, limit: float
                     ) -> tuple[Check, bool]:
    """This host's clock against the store's ``Date`` (any HTTP answer has one); also
    tells whether the store answers HTTP at all (second value)."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=limit)) as http:
            sent = time.time()
            async with http.head(url, ssl=context or True, allow_redirects=False) as resp:
                got = time.time()
                date, status = resp.headers.get("Date"), resp.status
    except TimeoutError:
        return fail("clock", name, f"no HTTP answer within {limit:g} s (buckets not checked)",
                    f"is endpoints.{name}.url an S3 store? a proxy or firewall that holds "
                    "connections open?"), False
    except (aiohttp.ClientError, OSError) as err:
        return fail("clock", name, f"HTTP request failed: {why(err)} (buckets not checked)",
                    f"check endpoints.{name}.url"), False
    try:
        # a Date is whole seconds: the store's clock is somewhere in the second after it
        when = email.utils.parsedate_to_datetime(date or "")
        if when.tzinfo is None:  # "-0000": UTC, of unknown origin
            when = when.replace(tzinfo=datetime.UTC)
        theirs = when.timestamp() + 0.5
    except (TypeError, ValueError):
        return warn("clock", name, f"no usable Date header (HTTP {status}): skew unknown",
                    "keep this host's clock synced (chrony, systemd-timesyncd)"), True
    skew = (sent + got) / 2 - theirs
    way = "ahead of" if skew > 0 else "behind"
    detail = (f"this host is {abs(skew):.1f} s {way} the store's clock" if abs(skew) >= 1
              else "this host's clock agrees with the store's (within 1 s)")
    fix = "sync this host's clock: timedatectl set-ntp true (or chrony, ntpd)"
    if abs(skew) > SKEW_FAIL:
        return fail("clock", name, f"{detail}: S3 refuses signatures past 15 min", fix), True
    if abs(skew) > SKEW_WARN:
        return warn("clock", name, f"{detail} (signatures fail past 15 min)", fix), True
    return ok("clock", name, detail), True


async def credentials(ep: EndpointConfig, session: AioSession, limit: float,
                      secrets: set[str]) -> Check:
    """Resolvable, from where; the values are collected into ``secrets``, never shown."""
    name = ep.name
    if ep.access_key_id and ep.secret_access_key:
        secrets.update(v for v in (ep.access_key_id, ep.secret_access_key, ep.session_token)
                       if v)
        return ok("credentials", name, "explicit keys in the config (not shown)")
    fix = (f"give endpoints.{name} a profile, or set AWS_ACCESS_KEY_ID and "
           "AWS_SECRET_ACCESS_KEY for the daemon (docs/config.md#credentials)")
    try:
        async with asyncio.timeout(limit):
            creds = await session.get_credentials()
            frozen = await creds.get_frozen_credentials() if creds is not None else None
    except TimeoutError:
        return fail("credentials", name, f"not resolved within {limit:g} s (an instance "
                    "role that does not answer?)", f"{fix}; off EC2 set "
                    "AWS_EC2_METADATA_DISABLED=true")
    except Exception as err:
        return fail("credentials", name, why(err), fix)
    if creds is None or frozen is None:
        return fail("credentials", name, "none found (environment, profile, shared files, "
                    "instance role)", fix)
    secrets.update(v for v in (frozen.access_key, frozen.secret_key, frozen.token) if v)
    profile = f", profile {ep.profile}" if ep.profile else ""
    return ok("credentials", name, f"found ({creds.method}{profile}; not shown)")


async def _closed(writer: asyncio.StreamWriter) -> None:
    try:
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
    except (TimeoutError, OSError, ssl.SSLError):
        pass
