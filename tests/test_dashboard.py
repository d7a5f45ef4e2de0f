"""examples/grafana-dashboard.json: valid JSON, templated on a Prometheus data source and
the endpoint, and every metric it queries is one the daemon exports (as prometheus-client
names them: ``_total`` on counters, ``_bucket``/``_sum``/``_count`` on histograms)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from trollpush.metrics import PREFIX, collector_registry
from trollpush.stats import SERIES, Stats

DASHBOARD = Path(__file__).resolve().parents[1] / "examples" / "grafana-dashboard.json"
#: a metric name of the daemon's (its own series, and prometheus-client's process_*)
METRIC = re.compile(r"\b(?:trollpush|process)_[a-z0-9_]+\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "gauge": ("",)}


def exported() -> set[str]:
    """The sample names a scrape can hold, from the collector's own families."""
    names: set[str] = set()
    for family in collector_registry(Stats()).collect():
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def load() -> dict[str, Any]:
    out: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return out


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # (a collapsed row holds its panels)
    return found


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL text: the panels' targets and the variables' queries."""
    out = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            out.append(var["query"]["query"])
    return out


def test_the_names_come_from_the_registry() -> None:
    names = exported()
    assert "trollpush_requests_total" in names and "trollpush_requests" not in names
    assert "trollpush_upload_total_seconds_bucket" in names
    assert "trollpush_journal_backlog_requests" in names and "process_open_fds" in names
    assert len([n for n in names if n.startswith(PREFIX)]) == sum(
        len(SUFFIXES[s.kind]) for s in SERIES.values())


def test_the_dashboard_queries_only_what_the_daemon_exports() -> None:
    dashboard, names = load(), exported()
    texts = queries(dashboard)
    assert len(texts) >= 20
    for text in texts:
        used = set(METRIC.findall(text))
        assert used, f"queries none of the daemon's series: {text}"
        assert used <= names, f"not exported: {sorted(used - names)} in {text}"


def test_series_by_endpoint_are_filtered_by_the_endpoint_variable() -> None:
    by_endpoint = {PREFIX + name for name, s in SERIES.items() if "endpoint" in s.labels}
    for text in queries(load()):
        for name in METRIC.findall(text):
            base = re.sub(r"_(total|bucket|sum|count)$", "", name)
            if base in by_endpoint and not text.startswith("label_values("):
                assert re.search(rf'{name}\{{[^}}]*endpoint=~"\$endpoint"', text), text


def test_it_is_templated_on_a_prometheus_data_source() -> None:
    dashboard = load()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["endpoint"]["type"] == "query"
    assert "label_values(" in variables["endpoint"]["query"]["query"]
    every = panels(dashboard)
    assert len({p["id"] for p in every}) == len(every)
    for panel in every:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"] and all(t["datasource"] == panel["datasource"]
                                        for t in panel["targets"])
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
    titles = " ".join(p["title"] for p in every).lower()
    for topic in ("bytes uploaded", "files uploaded", "queue", "reason", "round-trip",
                  "retransmissions", "journal backlog", "last upload landed"):
        assert topic in titles, topic
