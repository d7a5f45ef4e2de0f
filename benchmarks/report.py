"""Turn raw benchmark results into ``docs/benchmarks.md`` and a PNG chart (matplotlib)."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
TOOL_LABELS = {"trollpush": "trollpush", "trollmoves": "trollmoves dispatcher",
               "naive-boto3": "naive boto3", "direct-aiobotocore": "direct aiobotocore"}
PEERS = ("trollmoves", "naive-boto3", "direct-aiobotocore")
COLORS = {"trollpush": "#1f77b4", "trollmoves": "#d62728", "naive-boto3": "#ff7f0e",
          "direct-aiobotocore": "#2ca02c"}
TARGETS = {"P1": 1.10, "P2": 1.15, "P3": 0.80, "P4": 1.10}
RSS_TARGET_MIB = 256
TITLES = {
    "P1": "P1 burst: {n} x {size} announced at once",
    "P2": "P2 first file after {idle} idle: one {size} file",
    "P3": "P3 small-file firehose: {n} x {size}",
    "P4": "P4 one large file: {size}",
    "P5": "P5 scaling: N instances on one JetStream consumer, {n} x {size}",
}


# --- numbers ---------------------------------------------------------------------------------


def human_size(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1024)):
        if n >= scale:
            value = n / scale
            return f"{value:g} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n:g} B"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def fmt_s(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.3f} s" if x < 1 else f"{x:.2f} s"


def fmt_x(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}x"


def valid(run: dict[str, Any]) -> bool:
    """Complete, and every announced object found in the store afterwards."""
    return (run.get("elapsed") is not None
            and not run.get("verify", {}).get("wrong_or_missing"))


def ok_runs(runs: list[dict[str, Any]], tool: str) -> list[dict[str, Any]]:
    return [r for r in runs if r.get("tool") == tool and valid(r)]


def tool_runs(runs: list[dict[str, Any]], tool: str) -> list[dict[str, Any]]:
    return [r for r in runs if r.get("tool") == tool]


def one_line(out: dict[str, Any]) -> str:
    """A progress line for one tool's run."""
    tool = out.get("tool", "?")
    if "error" in out and "files" not in out:
        return f"{tool}: ERROR {str(out['error']).splitlines()[0][:200]}"
    parts = [f"{tool}: {fmt_s(out.get('elapsed') or out.get('elapsed_partial'))}",
             f"{out.get('ok', 0)}/{out.get('files', 0)} ok"]
    if out.get("verify", {}).get("wrong_or_missing"):
        parts.append("INVALID")
    elif out.get("elapsed") is None:
        parts.append(f"INCOMPLETE (failed {out.get('failed')}, missing {out.get('missing')})")
    lat = out.get("latencies_ms") or []
    if len(lat) > 1:
        parts.append(f"p50 {percentile(lat, 0.5):.0f} ms, p99 {percentile(lat, 0.99):.0f} ms")
    if out.get("idle_s") is not None:
        parts.append(f"after {out['idle_s']:.1f} s idle")
    if out.get("peak_rss_kib"):
        parts.append(f"peak RSS {out['peak_rss_kib'] / 1024:.0f} MiB")
    verify = out.get("verify")
    if verify and verify.get("wrong_or_missing"):
        parts.append(f"VERIFY: {verify['wrong_or_missing']} object(s) wrong or missing")
    if out.get("errors"):
        parts.append(f"errors: {'; '.join(out['errors'])[:200]}")
    return ", ".join(parts)


def link_line(link: dict[str, Any]) -> str:
    if "unavailable" in link:
        return f"no emulated link: {link['unavailable']}"
    check = link.get("check", {})
    rtt = check.get("rtt_ms") or {}
    tput = check.get("throughput") or {}
    return (f"link check: ping RTT min/median/max {rtt.get('min', 0):.1f}/"
            f"{rtt.get('median', 0):.1f}/{rtt.get('max', 0):.1f} ms "
            f"({check.get('ping_received')}/{check.get('ping_sent')} answered), TCP connect "
            f"{check.get('tcp_connect_ms', 0):.1f} ms, one TCP stream "
            f"{human_size(tput.get('bytes', 0))}: {tput.get('mbit', 0):.1f} Mbit/s average, "
            f"{tput.get('steady_mbit', 0):.1f} Mbit/s after slow start")


P5_FIGURES = ("rate", "instance", "trollpush", "nats", "store", "driver", "all", "cores",
              "machine")


def p5_figures(run: dict[str, Any]) -> dict[str, float | None] | None:
    """One P5 run: files/s; CPU seconds per file of an instance (the mean over the
    instances, each over the files it did), of all instances together, of the NATS server,
    the store and the driver, and of all of them; the cores they kept busy, and the cores
    busy on the whole machine (other work included)."""
    files, elapsed = run.get("ok") or 0, run.get("elapsed")
    if not files or not elapsed:
        return None
    inst = run.get("per_instance") or []
    own = [i["cpu_s"] / i["files"] for i in inst if i.get("files") and i.get("cpu_s") is not None]
    cpu = run.get("cpu_s") or {}
    tp = sum(i["cpu_s"] for i in inst if i.get("cpu_s") is not None) if inst else None
    parts = {"trollpush": tp, "nats": cpu.get("nats"), "store": cpu.get("store"),
             "driver": cpu.get("driver")}
    known = [v for v in parts.values() if v is not None]
    total = sum(known) if known else None
    return {"rate": files / elapsed, "instance": statistics.mean(own) if own else None,
            **{k: (v / files if v is not None else None) for k, v in parts.items()},
            "all": total / files if total is not None else None,
            "cores": total / elapsed if total is not None else None,
            "machine": cpu["machine"] / elapsed if cpu.get("machine") is not None else None}


def p5_line(out: dict[str, Any]) -> str:
    """A progress line for one P5 run (N instances)."""
    n = out.get("instances", "?")
    if "error" in out and "files" not in out:
        return f"N={n}: ERROR {str(out['error']).splitlines()[0][:200]}"
    parts = [f"N={n}: " + one_line(out).split(": ", 1)[1]]
    f = p5_figures(out) if valid(out) else None
    if f:
        parts.append(f"{f['rate']:.0f} files/s")
        if f["instance"] is not None:
            parts.append(f"CPU per file: {f['instance'] * 1000:.2f} ms per instance")
        parts.append(", ".join(f"{k} {_ms(f[k])}" for k in ("nats", "store", "all")
                               if f[k] is not None))
        if f["cores"] is not None:
            parts.append(f"{f['cores']:.2f} cores busy"
                         + ("" if f["machine"] is None else f" (machine {f['machine']:.2f})"))
    parts.append("files per instance " + "/".join(
        str(i.get("files")) for i in out.get("per_instance") or []))
    st = out.get("stream") or {}
    if st.get("redelivered"):
        parts.append(f"REDELIVERED {st['redelivered']}")
    return ", ".join(parts)


class Analysis:
    """Medians, limits, ratios and targets computed from the raw results."""

    def __init__(self, meta: dict[str, Any], results: dict[str, Any]) -> None:
        self.meta = meta
        self.results = results
        s = meta["settings"]
        self.settings = s
        link = meta.get("link", {})
        self.wan = "check" in link
        self.rtt = s["rtt_ms"] / 1000
        self.rate = s["rate_mbit"] * 1e6 / 8  # bytes per second
        self.tools: list[str] = list(s["tools"])

    def net(self, scenario: str) -> str:
        return str(self.results.get(scenario, {}).get("net", "loopback"))

    def bytes_of(self, scenario: str) -> int:
        s = self.settings
        return int({"P1": s["p1_files"] * s["p1_size"], "P2": s["p2_size"],
                    "P4": s["p4_size"]}.get(scenario, s["p3_files"] * s["p3_size"]))

    def limit(self, scenario: str) -> float | None:
        """1 RTT + bytes / link rate, for the scenarios on the emulated link."""
        if scenario == "P3" or self.net(scenario) != "wan":
            return None
        return float(self.rtt + self.bytes_of(scenario) / self.rate)

    def time(self, scenario: str, tool: str) -> float | None:
        runs = self.results.get(scenario, {}).get("runs", [])
        return median([r["elapsed"] for r in ok_runs(runs, tool)])

    def complete(self, scenario: str, tool: str, server: str | None = None) -> str:
        runs = (self.results.get("P3", {}).get(server or "", {}).get("runs", [])
                if scenario == "P3" else self.results.get(scenario, {}).get("runs", []))
        return f"{len(ok_runs(runs, tool))}/{len(tool_runs(runs, tool))}"

    def rss(self, scenario: str, tool: str) -> float | None:
        runs = self.results.get(scenario, {}).get("runs", [])
        return median([r["peak_rss_kib"] / 1024 for r in tool_runs(runs, tool)
                       if r.get("peak_rss_kib")])

    def p3(self, server: str, tool: str) -> dict[str, float | None]:
        runs = ok_runs(self.results.get("P3", {}).get(server, {}).get("runs", []), tool)
        return {
            "rate": median([r["ok"] / r["elapsed"] for r in runs if r["elapsed"]]),
            "elapsed": median([r["elapsed"] for r in runs]),
            "p50": median([v for r in runs if (v := percentile(r["latencies_ms"], 0.5))]),
            "p99": median([v for r in runs if (v := percentile(r["latencies_ms"], 0.99))]),
        }

    def p3_servers(self) -> list[str]:
        return list(self.results.get("P3", {}))

    def p5_counts(self) -> list[int]:
        runs = self.results.get("P5", {}).get("runs", [])
        return sorted({int(r["instances"]) for r in runs if r.get("instances")})

    def p5(self, n: int) -> dict[str, float | None]:
        """Medians over N instances' valid runs; ``ratio`` is files/s over N = 1's."""
        runs = [r for r in self.results.get("P5", {}).get("runs", [])
                if r.get("instances") == n and valid(r)]
        figures = [f for f in (p5_figures(r) for r in runs) if f]
        out = {k: median([v for f in figures if (v := f.get(k)) is not None])
               for k in P5_FIGURES}
        one = self.p5(1)["rate"] if n != 1 else out["rate"]
        out["ratio"] = out["rate"] / one if out["rate"] and one else None
        return out

    def targets(self) -> list[dict[str, Any]]:
        """Each target with the measured value and whether it is met (None: not measured)."""
        rows: list[dict[str, Any]] = []
        for sc, what in (("P1", "time / link limit"), ("P4", "time / link limit")):
            if sc not in self.results:
                continue
            t, lim = self.time(sc, "trollpush"), self.limit(sc)
            ratio = t / lim if t is not None and lim else None
            rows.append({"scenario": sc, "what": what, "target": f"<= {TARGETS[sc]:.2f}x",
                         "measured": fmt_x(ratio),
                         "met": None if ratio is None else ratio <= TARGETS[sc]})
        if "P2" in self.results:
            t = self.time("P2", "trollpush")
            ratio = t / self.rtt if t is not None and self.net("P2") == "wan" else None
            rows.append({"scenario": "P2", "what": "time / one RTT",
                         "target": f"<= {TARGETS['P2']:.2f}x", "measured": fmt_x(ratio),
                         "met": None if ratio is None else ratio <= TARGETS["P2"]})
        for server in self.p3_servers():
            tp, direct = self.p3(server, "trollpush")["rate"], self.p3(
                server, "direct-aiobotocore")["rate"]
            ratio = tp / direct if tp and direct else None
            rows.append({"scenario": f"P3 ({server})", "what": "files/s / direct aiobotocore",
                         "target": f">= {TARGETS['P3']:.2f}x", "measured": fmt_x(ratio),
                         "met": None if ratio is None else ratio >= TARGETS["P3"]})
        if "P4" in self.results:
            rss = self.rss("P4", "trollpush")
            rows.append({"scenario": "P4", "what": "peak RSS of the daemon",
                         "target": f"< {RSS_TARGET_MIB} MiB",
                         "measured": "—" if rss is None else f"{rss:.0f} MiB",
                         "met": None if rss is None else rss < RSS_TARGET_MIB})
        for sc in ("P1", "P2", "P4"):
            if sc not in self.results:
                continue
            tp = self.time(sc, "trollpush")
            for peer in ("trollmoves", "naive-boto3"):
                if peer not in self.tools:
                    continue
                other = self.time(sc, peer)
                ratio = other / tp if tp and other else None
                rows.append({"scenario": sc, "what": f"faster than {TOOL_LABELS[peer]}",
                             "target": "> 1x", "measured": fmt_x(ratio),
                             "met": None if ratio is None else ratio > 1})
        for server in self.p3_servers():
            tp = self.p3(server, "trollpush")["rate"]
            for peer in ("trollmoves", "naive-boto3"):
                if peer not in self.tools:
                    continue
                other = self.p3(server, peer)["rate"]
                ratio = tp / other if tp and other else None
                rows.append({"scenario": f"P3 ({server})",
                             "what": f"faster than {TOOL_LABELS[peer]}", "target": "> 1x",
                             "measured": fmt_x(ratio),
                             "met": None if ratio is None else ratio > 1})
        return rows


def _met(flag: bool | None) -> str:
    return "not measured" if flag is None else ("**met**" if flag else "**not met**")


# --- markdown ------------------------------------------------------------------------------


def title(a: Analysis, scenario: str) -> str:
    s = a.settings
    fields = {"P1": {"n": s["p1_files"], "size": human_size(s["p1_size"])},
              "P2": {"idle": f"{s['idle']:g} s", "size": human_size(s["p2_size"])},
              "P3": {"n": f"{s['p3_files']:,}", "size": human_size(s["p3_size"])},
              "P4": {"size": human_size(s["p4_size"])},
              "P5": {"n": f"{s['p3_files']:,}", "size": human_size(s["p3_size"])}}[scenario]
    where = ("loopback" if scenario in ("P3", "P5") else
             f"{s['rtt_ms']:g} ms RTT / {s['rate_mbit']:g} Mbit/s" if a.net(scenario) == "wan"
             else "loopback (no emulated link)")
    return TITLES[scenario].format(**fields) + f", {where}"


def summary_table(a: Analysis) -> list[str]:
    tools = a.tools
    head = ["Scenario", "Physical limit", *[TOOL_LABELS[t] for t in tools]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sc in ("P1", "P2", "P4"):
        if sc not in a.results:
            continue
        lim = a.limit(sc)
        cells = [title(a, sc).split(":")[0], fmt_s(lim)]
        tp = a.time(sc, "trollpush")
        for tool in tools:
            t = a.time(sc, tool)
            text = fmt_s(t)
            if t is not None and lim:
                text += f" ({t / lim:.2f}x limit)"
            if t is not None and tp and tool != "trollpush":
                text += f", {t / tp:.2f}x trollpush"
            if a.complete(sc, tool).split("/")[0] != a.complete(sc, tool).split("/")[1]:
                text += f" [{a.complete(sc, tool)} runs complete]"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    for server in a.p3_servers():
        cells = [f"P3 files/s ({server})", "— (CPU-bound)"]
        tp = a.p3(server, "trollpush")["rate"]
        direct = a.p3(server, "direct-aiobotocore")["rate"]
        for tool in tools:
            rate = a.p3(server, tool)["rate"]
            text = "—" if rate is None else f"{rate:.0f}/s"
            if rate is not None and direct:
                text += f" ({rate / direct:.2f}x direct)"
            if rate and tp and tool != "trollpush":
                text += f", trollpush {tp / rate:.2f}x faster"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    if "P5" in a.results:
        rows = [(n, a.p5(n)) for n in a.p5_counts()]
        text = "; ".join(f"N={n}: " + ("—" if f["rate"] is None else f"{f['rate']:.0f}/s"
                                       + (f" ({f['ratio']:.2f}x)" if n > 1 and f["ratio"]
                                          else ""))
                         for n, f in rows)
        lines.append("| " + " | ".join(
            [f"P5 files/s, N instances on JetStream ({a.results['P5'].get('server')})",
             "— (CPU-bound)", *[text if t == "trollpush" else "—" for t in tools]]) + " |")
    return lines


def scenario_detail(a: Analysis, sc: str, runs: list[dict[str, Any]],
                    label: str | None = None) -> list[str]:
    lines = [f"### {label or title(a, sc)}", ""]
    lim = a.limit(sc)
    if lim is not None:
        lines.append(f"Physical limit: 1 RTT ({a.rtt * 1000:g} ms) + "
                     f"{human_size(a.bytes_of(sc))} / {a.settings['rate_mbit']:g} Mbit/s = "
                     f"**{fmt_s(lim)}**.")
        lines.append("")
    head = ["Tool", "Median", "Runs (s)"]
    if sc == "P3":
        head = ["Tool", "Median files/s", "Median p50 latency", "Median p99 latency",
                "Runs (files/s)"]
    if sc in ("P1", "P4") and lim is not None:
        head.insert(2, "x limit")
    if sc == "P2":
        head.insert(2, "x RTT")
        head.append("Idle before (s)")
    if sc == "P4":
        head.append("Peak RSS (MiB)")
    with_link = any(r.get("link") for r in runs)
    if with_link:
        head.append("Packets dropped by the link queue / sent")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for tool in a.tools:
        mine = tool_runs(runs, tool)
        if not mine:
            continue
        per_run = []
        for r in mine:
            if valid(r):
                per_run.append(f"{r['ok'] / r['elapsed']:.0f}" if sc == "P3"
                               else f"{r['elapsed']:.3f}")
            elif r.get("verify", {}).get("wrong_or_missing"):
                per_run.append(f"invalid ({r['verify']['objects']}/{r['verify']['expected']} "
                               "objects in the store)")
            elif "files" in r:
                per_run.append(f"incomplete ({r.get('ok')}/{r.get('files')} ok)")
            else:
                per_run.append("error")
        done = [r for r in mine if valid(r)]
        if sc == "P3":
            rates = [r["ok"] / r["elapsed"] for r in done]
            p50 = median([v for r in done if (v := percentile(r["latencies_ms"], 0.5))])
            p99 = median([v for r in done if (v := percentile(r["latencies_ms"], 0.99))])
            row = [TOOL_LABELS[tool], f"{median(rates):.0f}" if rates else "—",
                   "—" if p50 is None else f"{p50:.0f} ms", "—" if p99 is None else f"{p99:.0f} ms",
                   ", ".join(per_run)]
        else:
            t = median([r["elapsed"] for r in done])
            row = [TOOL_LABELS[tool], fmt_s(t), ", ".join(per_run)]
            if sc in ("P1", "P4") and lim is not None:
                row.insert(2, fmt_x(t / lim if t is not None else None))
            if sc == "P2":
                row.insert(2, fmt_x(t / a.rtt if t is not None and a.net("P2") == "wan"
                                    else None))
                row.append(", ".join(f"{r['idle_s']:.1f}" for r in mine if "idle_s" in r))
            if sc == "P4":
                rss = [r["peak_rss_kib"] / 1024 for r in mine if r.get("peak_rss_kib")]
                row.append(", ".join(f"{x:.0f}" for x in rss) or "—")
        if with_link:
            row.append(", ".join(_drops(r["link"]) for r in mine if r.get("link")) or "—")
        lines.append("| " + " | ".join(row) + " |")
    problems = [f"- {TOOL_LABELS.get(r.get('tool', ''), r.get('tool'))} run {r.get('run')}: "
                + (str(r["error"]).splitlines()[0][:300] if "error" in r and "files" not in r
                   else f"{r.get('failed')} failed, {r.get('missing')} missing; "
                   + "; ".join(r.get("errors", []))[:300])
                for r in runs if r.get("elapsed") is None and not r.get("verify", {}).get(
                    "wrong_or_missing")]
    bad = [f"- {TOOL_LABELS.get(r['tool'], r['tool'])} run {r['run']}: the store holds "
           f"{r['verify']['objects']} of {r['verify']['expected']} objects "
           f"({r['verify']['wrong_or_missing']} wrong or missing)"
           for r in runs if r.get("verify", {}).get("wrong_or_missing")]
    if problems or bad:
        lines += ["", "Problems:", *problems, *bad]
    lines.append("")
    return lines


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x * 1000:.2f} ms"


def p5_detail(a: Analysis) -> list[str]:
    """The scaling table, where the CPU went, and what it predicts on real hosts."""
    block = a.results["P5"]
    runs = block.get("runs", [])
    nproc = a.meta["machine"].get("nproc") or "?"
    lines = [f"### {title(a, 'P5')}, {block.get('server')}", "",
             "N `trollpush run` processes, each with a `jetstream` section naming the same "
             "stream and consumer (its own journal, its own posttroll publisher), pull the "
             "firehose from one `nats-server -js`; the files are published straight into "
             "the stream (posttroll-encoded `file` messages, nats-py), so this measures the "
             "shared consumer, not a bridge. CPU time is utime + stime from `/proc/PID/stat` "
             "over the measured window; per file = over the files that process did (an "
             "instance: the completions it announced). Cores busy: the CPU time of the "
             "processes measured over the elapsed time; in brackets the whole machine's, "
             "from `/proc/stat` (the difference is other work on the machine).", "",
             "| Instances | Median files/s | x N = 1 | CPU per file, per instance (mean) "
             "| CPU per file, all instances | NATS server | S3 store | Driver | All measured "
             "| Cores busy | Files per instance | Runs (files/s) |",
             "|" + "---|" * 12]
    for n in a.p5_counts():
        f = a.p5(n)
        mine = [r for r in runs if r.get("instances") == n]
        per_run = [f"{r['ok'] / r['elapsed']:.0f}" if valid(r) else
                   (f"invalid ({r['verify']['objects']}/{r['verify']['expected']} objects)"
                    if r.get("verify", {}).get("wrong_or_missing") else
                    f"incomplete ({r.get('ok')}/{r.get('files')} ok)" if "files" in r
                    else "error") for r in mine]
        spread = "; ".join("/".join(str(i.get("files")) for i in r.get("per_instance") or [])
                           for r in mine if valid(r))
        lines.append("| " + " | ".join([
            str(n), "—" if f["rate"] is None else f"{f['rate']:.0f}", fmt_x(f["ratio"]),
            _ms(f["instance"]), _ms(f["trollpush"]), _ms(f["nats"]), _ms(f["store"]),
            _ms(f["driver"]), _ms(f["all"]),
            "—" if f["cores"] is None else f"{f['cores']:.2f} of {nproc}"
            + ("" if f["machine"] is None else f" (machine: {f['machine']:.2f})"),
            spread or "—",
            ", ".join(per_run)]) + " |")
    lines.append("")
    one, top = a.p5(1), a.p5(max(a.p5_counts(), default=1))
    n_top = max(a.p5_counts(), default=1)
    lines.append(
        f"On this {nproc}-core machine the gain is bounded by CPU: every instance, the NATS "
        f"server, the S3 store and the driver share the same {nproc} cores, so N instances "
        f"do at most {nproc} / (all measured CPU per file) files/s"
        + (f" (at N = {n_top}: a ceiling of {nproc / top['all']:.0f}/s; the processes "
           f"measured kept {top['cores']:.2f} of {nproc} cores busy"
           + ("" if top["machine"] is None else f", the whole machine {top['machine']:.2f}")
           + ")" if top["cores"] is not None and top["all"] and isinstance(nproc, int)
           else "")
        + "; beyond that more instances only split the same CPU time"
        + (f". At N = 1 the processes measured kept {one['cores']:.2f} of {nproc} cores busy"
           if one["cores"] is not None and n_top > 1 else "")
        + ". Per-instance CPU time "
        "per file is what predicts scaling on real hosts: an instance with a core of its own "
        "does at most 1 / (its CPU time per file) files/s"
        + (f" (about {1 / one['instance']:.0f}/s at N = 1's {one['instance'] * 1000:.2f} "
           "ms)" if one["instance"] else "")
        + ", and N instances on hosts of their own about N times that, until the store or "
        "the NATS server saturates"
        + (f" (here they spent {one['store'] * 1000:.2f} and {one['nats'] * 1000:.2f} ms "
           "of CPU per file)" if one["store"] is not None and one["nats"] is not None else "")
        + ".")
    lines.append("")
    problems = [f"- N = {r.get('instances')} run {r.get('run')}: "
                + (str(r["error"]).splitlines()[0][:300] if "error" in r and "files" not in r
                   else f"{r.get('failed')} failed, {r.get('missing')} missing; "
                   + "; ".join(r.get("errors", []))[:300])
                for r in runs if not valid(r)]
    problems += [f"- N = {r.get('instances')} run {r.get('run')}: JetStream redelivered "
                 f"{r['stream']['redelivered']} message(s)"
                 for r in runs if (r.get("stream") or {}).get("redelivered")]
    if problems:
        lines += ["Problems:", *problems, ""]
    return lines


def _drops(link: dict[str, Any]) -> str:
    """Client -> server packets the link queue dropped, of those offered."""
    up = link["a_to_b"]
    return f"{up['drops']:,}/{up['packets'] + up['drops']:,}"


def machine_section(meta: dict[str, Any]) -> list[str]:
    m = meta["machine"]
    v = meta["versions"]
    pv = meta.get("peer_versions", {})
    lines = [
        "## Machine and software", "",
        f"- Date: {meta['date']}; run took {meta.get('duration_s', 0) / 60:.1f} min.",
        f"- Machine: {m['nproc']} CPU(s) ({m['cpu']}), {m['ram_gib']} GiB RAM, Linux "
        f"{m['kernel']}, Python {m['python']}."
        + (f" Load average (1 min) when the run started: {m['load_start']:.2f}, when it "
           f"ended: {m.get('load_end', 0):.2f} (other work on the machine shows up in P3 and P5)."
           if "load_start" in m else ""),
        f"- trollpush {v['trollpush']}"
        + (f" (content {v['trollpush_content']}, copied at the start: every daemon of the "
           "run used that copy"
           + (f"; trollpush/ changed during the run, to {v.get('trollpush_end')} "
              f"(content {v.get('trollpush_content_end')})"
              if v.get("trollpush_content_end", v["trollpush_content"])
              != v["trollpush_content"] else "") + ")"
           if "trollpush_content" in v else "")
        + f"; aiobotocore {v['aiobotocore']}, botocore "
        f"{v['botocore']}, aiohttp {v['aiohttp']}, boto3 {v['boto3']}, posttroll "
        f"{v['posttroll']}, pyzmq {v['pyzmq']}.",
    ]
    if pv:
        lines.append(f"- Peers' virtualenv (`.venv-peers`): trollmoves {pv.get('trollmoves')}, "
                     f"s3fs {pv.get('s3fs')}, aiobotocore {pv.get('aiobotocore')}, posttroll "
                     f"{pv.get('posttroll')}.")
    for name, version in meta.get("servers", {}).items():
        lines.append(f"- S3 server `{name}`: {version}.")
    ep = meta.get("tp_endpoint", {})
    lines.append("- trollpush endpoint settings in force (the engine's defaults, only `url`, "
                 "`region` and `addressing_style: path` set"
                 + (f", plus overrides {meta['settings']['tp_endpoint']}"
                    if meta["settings"].get("tp_endpoint") else "") + "): "
                 + ", ".join(f"`{k}={v}`" for k, v in ep.items()) + ".")
    lines.append(f"- The direct aiobotocore loop runs {meta.get('concurrency')} uploads at once "
                 "(trollpush's per-endpoint concurrency).")
    lines.append("")
    return lines


def link_section(meta: dict[str, Any]) -> list[str]:
    link = meta.get("link", {})
    lines = ["## The emulated link", ""]
    if "unavailable" in link:
        lines += [f"Not available in this run: {link['unavailable']}. P1, P2 and P4 ran on "
                  "loopback, so they have no physical limit and no RTT ratio.", ""]
        return lines
    if "check" not in link:
        lines += ["Not used in this run.", ""]
        return lines
    lines += [
        f"Two network namespaces joined by TUN devices and a user-space relay "
        f"(`benchmarks/wan.py`): {link['describe']}. Addresses 198.18.0.1 (clients) and "
        "198.18.0.2 (S3 server), only inside the namespaces.", "",
        "Verified before the scenarios: " + link_line(link) + ". A TCP stream's goodput "
        "tops out at 1448/1500 of the IP rate (headers), i.e. about "
        f"{link['rate_mbit'] * 1448 / 1500:.1f} Mbit/s; the physical limits below use the "
        "full link rate, as the targets do.", ""]
    relay = link.get("relay")
    if relay:
        a, b = relay["a_to_b"], relay["b_to_a"]
        lines += [f"Relay totals over the whole run: clients -> server {human_size(a['bytes'])} "
                  f"in {a['packets']:,} packets ({a['drops']:,} dropped at the queue limit), "
                  f"server -> clients {human_size(b['bytes'])} in {b['packets']:,} packets "
                  f"({b['drops']:,} dropped).", ""]
    sysctls = link.get("sysctls", {})
    settings = meta["settings"]
    tuned = settings.get("client_sysctl") or settings.get("route_options")
    if sysctls:
        lines += ["TCP settings in the client namespace ("
                  + ("tuned for this run" if tuned else "host defaults, not tuned") + "): "
                  + ", ".join(f"`{k}={v}`" for k, v in sysctls.items()) + "."
                  + (f" Route options on the link: `{' '.join(settings['route_options'])}`."
                     if settings.get("route_options") else ""), ""]
    return lines


METHOD = """## Method

- Every tool is driven as its users run it. trollpush is `python -m trollpush run CONFIG`
  with a generated config (posttroll subscriber without nameserver, posttroll publisher,
  one endpoint, one target `s3://trollpush-bench/{prefix}/`). The trollmoves dispatcher is
  trollmoves' own `Dispatcher` (s3fs mover) in `.venv-peers`, fed the same posttroll
  messages; only its publisher is a plain one on loopback instead of its multicasting
  default. The naive boto3 script calls `upload_file` for one file after the other with
  boto3's defaults. The direct aiobotocore loop `put_object`s every file behind a semaphore
  as wide as trollpush's concurrency, with `Expect: 100-continue` removed and a long
  keep-alive, on uvloop like trollpush (`daemon.event_loop`'s default): no pipeline around
  it, the ceiling for P3.
- Timing is the whole pipeline: from just before the first announcement is published
  (posttroll) to the moment the last completion message is read off the subscriber's
  socket. For the two library peers: from handing the file list to the worker process to
  its last completion stamp. All stamps are `time.monotonic()` (one clock for every
  process). Per-file latency (P3) is announcement -> that file's completion.
- Each run starts the tool fresh, waits until its pub-sub links are joined (trollpush: a
  message it must refuse, until the refusal comes back; trollmoves: a probe copied to a
  local directory), waits the settle time (2 s: lets trollpush pre-warm its pool), then
  announces the work. P2 instead starts every tool, uploads one warm-up file through each,
  idles, then announces one file to each tool in turn (the order rotates between runs).
- Tools run one at a time (P2 excepted, where only the idle overlaps) and the tool order
  rotates between runs. After each run the objects are listed and checked (count and
  sizes) and deleted.
- Physical limit = 1 RTT + bytes / link rate. Ratios are the median time over the limit,
  over one RTT (P2), or a peer's median over trollpush's. Targets are the engine's goals;
  they are reported as measured, not adjusted.
- Every daemon of a run imports a copy of `trollpush/` taken when the run started, so
  edits to the working tree during the run do not mix engine versions.
- Peak RSS is `VmHWM` of the uploading process (the daemon, the dispatcher, the worker)
  just before it is stopped: its whole life, imports included.
- P5 (`benchmarks/scale.py`) runs only trollpush: for each N a fresh `nats-server -js`
  and N instances whose only input is one `jetstream` stream and consumer (`ack_wait`
  long enough that nothing is redelivered during a run), each linked by probes published
  into the stream until every instance has refused one. The P3 files are then published
  into the stream with nats-py, up to 256 unacknowledged publishes at once; the time runs
  from just before the first publish to the last completion heard on any instance's
  publisher. The N order rotates between runs; the store is the P3 SeaweedFS.
"""

HOW_TO = """## How to run

```sh
make bench                            # the full suite (~30 min on 2 cores; needs root for the link)
.venv/bin/python -m benchmarks.run --quick        # 1 run, 10 s idle, 64 MiB P4, 500 files in P3, P5
.venv/bin/python -m benchmarks.run --scenarios P5 --p5-instances 1,2  # scaling only, no root
.venv/bin/python -m benchmarks.run --scenarios P1,P4 --tools trollpush,direct-aiobotocore
.venv/bin/python -m benchmarks.run --tp-endpoint prewarm=16 --tp-endpoint max_parallel=64
```

`--help` lists every option (RTT, rate, queue limit, idle time, servers, output paths).
Without root the emulated link cannot be built and P1, P2 and P4 run on loopback. The raw
numbers of every run are written to a JSON file under `/tmp` (its path is printed).
"""


def markdown(a: Analysis, chart_name: str | None) -> str:
    meta = a.meta
    quick = meta["settings"].get("quick")
    s = meta["settings"]
    lines = ["# Benchmarks", "",
             "Generated by `make bench` (`python -m benchmarks.run`); do not edit by hand: "
             "run it again.", ""]
    if quick:
        lines += [f"**Quick mode** (`--quick`): {s['runs']} run(s) per tool, P2 idle "
                  f"{s['idle']:g} s instead of 60 s, P4 {human_size(s['p4_size'])} instead of "
                  f"512 MiB, P3 and P5 {s['p3_files']:,} files instead of 2,000. Numbers for "
                  "development only.", ""]
    else:
        lines += [f"{s['runs']} runs per tool and scenario; medians.", ""]
    if meta.get("overlapping_runs"):
        lines += [f"**Warning:** other benchmark runs were active on the machine during this "
                  f"one (pid {', '.join(map(str, meta['overlapping_runs']))}); they shared "
                  "the CPUs, so the numbers are disturbed (P3 most).", ""]
    lines += ["## Summary", "", *summary_table(a), ""]
    lines += ["## Targets", "",
              "The goals the transfer engine is tuned against, next to what this run measured.",
              ""]
    targets = a.targets()
    if targets:
        lines += ["| Scenario | Measure | Target | Measured | |", "|---|---|---|---|---|"]
    else:
        lines.append("None for the scenarios of this run (P5 has none).")
    for row in targets:
        lines.append(f"| {row['scenario']} | {row['what']} | {row['target']} | "
                     f"{row['measured']} | {_met(row['met'])} |")
    lines.append("")
    if chart_name:
        lines += [f"![benchmark chart]({chart_name})", ""]
    lines += ["## Scenarios", ""]
    for sc in ("P1", "P2", "P3", "P4"):
        if sc not in a.results:
            continue
        if sc == "P3":
            for server, block in a.results["P3"].items():
                lines += scenario_detail(a, "P3", block["runs"],
                                         label=f"{title(a, 'P3')}, {server}")
        else:
            lines += scenario_detail(a, sc, a.results[sc]["runs"])
    if "P5" in a.results:
        lines += p5_detail(a)
    lines += machine_section(meta)
    lines += link_section(meta)
    for note in meta.get("notes", []):
        lines += [f"Note: {note}", ""]
    lines += [METHOD, HOW_TO]
    return "\n".join(lines).rstrip() + "\n"


# --- chart -----------------------------------------------------------------------------------


def chart(a: Analysis, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        return False
    panels = [sc for sc in ("P1", "P2", "P3", "P4", "P5") if sc in a.results]
    if not panels:
        return False
    cols = 2 if len(panels) > 1 else 1
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    tools = a.tools
    labels = [TOOL_LABELS[t].replace(" ", "\n", 1) for t in tools]
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for ax, sc in zip(axes.flat, panels, strict=False):
        if sc == "P5":
            _p5_panel(ax, a)
            continue
        if sc == "P3":
            servers = a.p3_servers()
            width = 0.8 / max(1, len(servers))
            top = 0.0
            for k, server in enumerate(servers):
                values = [a.p3(server, t)["rate"] or 0.0 for t in tools]
                xs = [i + (k - (len(servers) - 1) / 2) * width for i in range(len(tools))]
                ax.bar(xs, values, width * 0.95, color=[COLORS[t] for t in tools],
                       alpha=1.0 if k == 0 else 0.55, edgecolor="k", linewidth=0.4)
                for x, v in zip(xs, values, strict=True):
                    ax.text(x, v, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
                top = max(top, *values)
                direct = a.p3(server, "direct-aiobotocore")["rate"]
                if direct:
                    ax.axhline(direct * TARGETS["P3"], ls=":", color="k", lw=1)
            ax.plot([], [], ls=":", color="k", label=f"target {TARGETS['P3']:.1f}x direct loop")
            ax.legend(fontsize=8, loc="upper left")
            ax.set_xticks(range(len(tools)), labels)
            ax.set_ylim(0, top * 1.3 or 1)
            ax.set_ylabel("files/s (higher is better)")
            ax.set_title(f"P3 {a.settings['p3_files']:,} x {human_size(a.settings['p3_size'])}"
                         f", loopback\n{' / '.join(servers)} (dark / light)", fontsize=10)
            continue
        values = [a.time(sc, t) or 0.0 for t in tools]
        ax.bar(labels, values, color=[COLORS[t] for t in tools])
        lim = a.limit(sc)
        if sc == "P2" and a.net("P2") == "wan":
            ax.axhline(a.rtt, ls="--", color="k", lw=1, label=f"one RTT {a.rtt * 1000:g} ms")
            ax.axhline(a.rtt * TARGETS["P2"], ls=":", color="k", lw=1,
                       label=f"target {TARGETS['P2']:.2f}x RTT")
        elif lim:
            ax.axhline(lim, ls="--", color="k", lw=1, label=f"link limit {lim:.2f} s")
            ax.axhline(lim * TARGETS[sc], ls=":", color="k", lw=1,
                       label=f"target {TARGETS[sc]:.1f}x limit")
        positive = [v for v in values if v > 0]
        if positive and min(positive) * 8 < max(positive):
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_ylim(min(min(positive), lim or min(positive)) * 0.7, max(positive) * 2)
        elif positive:
            ax.set_ylim(0, max(positive) * 1.3)
        ax.set_ylabel("seconds, median (lower is better)")
        ax.set_title(title(a, sc).replace(", ", "\n", 1), fontsize=10)
        for i, v in enumerate(values):
            text = "n/a" if not v else (f"{v:.3f} s" if v < 1 else f"{v:.2f} s")
            ax.text(i, v, text, ha="center", va="bottom", fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left")
    quick = " (quick mode)" if a.settings.get("quick") else ""
    m = a.meta["machine"]
    fig.suptitle(f"trollpush benchmarks{quick}: {a.meta['date']}, {m['nproc']} CPUs, "
                 f"Python {m['python']}, medians of {a.settings['runs']} run(s)",
                 fontsize=11 if cols > 1 else 8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _p5_panel(ax: Any, a: Analysis) -> None:
    """files/s against N, with N times N = 1's rate (perfect scaling) dotted."""
    counts = a.p5_counts()
    rates = [a.p5(n)["rate"] or 0.0 for n in counts]
    ax.bar([str(n) for n in counts], rates, color=COLORS["trollpush"])
    one = a.p5(1)["rate"]
    if one:
        ax.plot([str(n) for n in counts], [one * n for n in counts], ls=":", color="k",
                marker=".", label="N x the rate of N = 1")
        ax.legend(fontsize=8, loc="upper left")
    for i, (n, v) in enumerate(zip(counts, rates, strict=True)):
        ratio = a.p5(n)["ratio"]
        ax.text(i, v * 0.97, f"{v:.0f}" + (f"\n{ratio:.2f}x" if n > 1 and ratio else ""),
                ha="center", va="top", fontsize=8, color="white")
    top = max([*rates, *(one * n for n in counts)] if one else rates or [1.0])
    ax.set_ylim(0, top * 1.25 or 1)
    ax.set_xlabel("trollpush instances on one JetStream consumer")
    ax.set_ylabel("files/s (higher is better)")
    ax.set_title(f"P5 scaling: {a.settings['p3_files']:,} x "
                 f"{human_size(a.settings['p3_size'])}, loopback\n"
                 f"{a.results['P5'].get('server')}, {a.meta['machine'].get('nproc')} CPUs "
                 "shared by all", fontsize=10)


def summary_text(a: Analysis) -> str:
    lines = [*summary_table(a), "", "Targets:"]
    for row in a.targets():
        lines.append(f"  {row['scenario']:<14} {row['what']:<34} target {row['target']:<9} "
                     f"measured {row['measured']:<8} {_met(row['met']).replace('*', '')}")
    return "\n".join(lines)


def write(meta: dict[str, Any], results: dict[str, Any], out: Path, chart_path: Path) -> str:
    """Write the markdown report and the chart; return a plain-text summary."""
    a = Analysis(meta, results)
    have_chart = chart(a, chart_path)
    rel = os.path.relpath(chart_path, out.parent) if have_chart else None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(a, rel))
    return summary_text(a)
