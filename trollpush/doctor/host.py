"""Host tuning that decides long-haul speed (docs/tuning.md), read from ``/proc/sys``.

``sysctl_root`` is ``/proc/sys`` unless a test gives a tree of its own; nothing here
starts a process or changes a setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .checks import Check, ok, warn

SYSCTL_ROOT = Path("/proc/sys")
CONF = "/etc/sysctl.d/90-trollpush.conf"
#: the smallest buffer maximum the fix proposes (the kernel's usual default is 4 MiB)
FLOOR = 4 * 1024 * 1024


def size(n: float) -> str:
    """Bytes in the largest binary unit they fill, three digits: ``48.8 KiB``."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def rate(bits: float) -> str:
    """Bits per second, three digits: ``1 Gbit/s``, ``168 Mbit/s``."""
    for unit, scale in (("Gbit", 1e9), ("Mbit", 1e6), ("kbit", 1e3)):
        if bits >= scale:
            return f"{bits / scale:.3g} {unit}/s"
    return f"{bits:.3g} bit/s"


def sysctl(root: Path, name: str) -> str | None:
    """``net.ipv4.tcp_wmem`` read from ``root/net/ipv4/tcp_wmem``; None if unreadable."""
    try:
        return (root / name.replace(".", "/")).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _unreadable(check: str, name: str) -> Check:
    return warn(check, name, "cannot be read (not Linux, or /proc/sys not mounted here)",
                "run the doctor on the daemon's host, outside a sandbox that hides /proc/sys")


def host_checks(root: Path, rtts: Mapping[str, float | None], bits_per_second: float
                ) -> list[Check]:
    """Every host check; ``rtts`` is each endpoint's measured round trip (None if the
    endpoint could not be reached), ``bits_per_second`` the rate the link should carry."""
    return [slow_start(root), *send_buffers(root, rtts, bits_per_second),
            congestion_control(root), qdisc(root)]


def _expect(root: Path, name: str, want: str, good: str, why: str, fix: str) -> Check:
    """A sysctl that should read ``want``: OK saying ``good``, else a WARN saying
    ``why`` it matters and ``fix``."""
    value = sysctl(root, name)
    if value is None:
        return _unreadable("sysctl", name)
    if value == want:
        return ok("sysctl", name, good)
    return warn("sysctl", name, f"{value} (should be {want}): {why}", fix)


def slow_start(root: Path) -> Check:
    name = "net.ipv4.tcp_slow_start_after_idle"
    return _expect(root, name, "0", "0: windows stay open through idle gaps",
                   "after each idle gap every connection starts again in slow start, "
                   "several round trips per burst",
                   f"sysctl -w {name}=0, and put '{name} = 0' in {CONF}")


def send_buffers(root: Path, rtts: Mapping[str, float | None], bits_per_second: float
                 ) -> list[Check]:
    """Per endpoint: can one connection keep ``rate x RTT`` bytes in flight?"""
    wmem_max = sysctl(root, "net.core.wmem_max")
    tcp_wmem = sysctl(root, "net.ipv4.tcp_wmem")
    fields = (tcp_wmem or "").split()
    if wmem_max is None or not wmem_max.isdigit() or len(fields) != 3 or \
            not all(f.isdigit() for f in fields):
        return [_unreadable("send_buffers", "net.core.wmem_max, net.ipv4.tcp_wmem")]
    have = min(int(wmem_max), int(fields[2]))
    measured = {name: rtt for name, rtt in rtts.items() if rtt is not None}
    if not measured:
        return [warn("send_buffers", "net.core.wmem_max, net.ipv4.tcp_wmem",
                     f"wmem_max {size(int(wmem_max))}, tcp_wmem max {size(int(fields[2]))}; "
                     "no endpoint answered, so there is no RTT to size them against",
                     "make an endpoint reachable (see its checks), then run the doctor again")]
    out = []
    for name, rtt in measured.items():
        need = bits_per_second / 8 * rtt
        detail = (f"{rate(bits_per_second)} x RTT {rtt * 1000:.1f} ms = "
                  f"{size(need)} in flight; wmem_max {size(int(wmem_max))}, "
                  f"tcp_wmem max {size(int(fields[2]))}")
        if have >= need:
            out.append(ok("send_buffers", f"endpoint {name}", detail))
            continue
        enough = max(FLOOR, 1 << (int(need) - 1).bit_length())  # the next power of two
        out.append(warn(
            "send_buffers", f"endpoint {name}",
            f"{detail}: one connection is capped at "
            f"{rate(have * 8 / rtt)}",
            f"sysctl -w net.core.wmem_max={enough} net.ipv4.tcp_wmem='{fields[0]} {fields[1]} "
            f"{enough}', and the same in {CONF} (or a lower --rate if the link is slower)"))
    return out


def congestion_control(root: Path) -> Check:
    name = "net.ipv4.tcp_congestion_control"
    available = (sysctl(root, "net.ipv4.tcp_available_congestion_control") or "").split()
    load = "" if "bbr" in available else "modprobe tcp_bbr (and list it in " \
        "/etc/modules-load.d/), then "
    return _expect(root, name, "bbr", "bbr",
                   "on a long link with a little loss it keeps far less throughput",
                   f"{load}sysctl -w {name}=bbr, and put it in {CONF}")


def qdisc(root: Path) -> Check:
    name = "net.core.default_qdisc"
    return _expect(root, name, "fq", "fq: every connection's packets are paced",
                   "packets leave in bursts (TCP still paces itself on Linux >= 4.13, at "
                   "more CPU)",
                   f"sysctl -w {name}=fq and put it in {CONF}; it applies to interfaces set "
                   "up later: 'tc qdisc replace dev IFACE root fq' (or a reboot) for the "
                   "running one")
