"""Prometheus metrics: the stats registry in Prometheus' text format (``GET /metrics``).

Nothing is counted here.  :class:`StatsCollector` is a prometheus-client custom
collector that reads the one registry (:mod:`trollpush.stats`) when it is scraped and
turns each series of :data:`stats.SERIES` into a metric family: the ``trollpush_``
prefix, ``_total`` on counters, the labels the series declares (one missing from a
sample is empty).  Process metrics (``process_*``: CPU, memory, file descriptors) come
from prometheus-client's own collector.  docs/metrics.md lists every series.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from .stats import SERIES, Labels, Series, Stats

PREFIX = "trollpush_"
#: the Content-Type of a scrape: the classic text format, which ``generate_latest``
#: writes and every Prometheus reads (prometheus-client's own default answer too)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def exported(name: str) -> str:
    """The Prometheus name of a series (a counter's without its ``_total``)."""
    return PREFIX + name


class StatsCollector(Collector):
    """Every series of the registry, read at each scrape (no second bookkeeping)."""

    def __init__(self, registry: Stats) -> None:
        self.stats = registry

    def collect(self) -> Iterator[Metric]:
        values: dict[str, dict[tuple[str, ...], float]] = defaultdict(dict)
        for name, labels, value in self.stats.series():
            if (series := SERIES.get(name)) is not None:
                key = _values(series, labels)
                values[name][key] = values[name].get(key, 0.0) + value
        histograms: dict[str, list[tuple[Labels, list[tuple[float, int]], float]]] = (
            defaultdict(list))
        for name, labels, hist in self.stats.histograms():
            histograms[name].append((labels, hist.cumulative(), hist.total))
        for name, series in SERIES.items():
            if series.kind == "histogram":
                yield _histogram(name, series, histograms[name])
            else:
                yield _family(name, series, values[name])


def _values(series: Series, labels: Labels) -> tuple[str, ...]:
    """The sample's label values, in the series' order (a missing one: empty)."""
    given = dict(labels)
    return tuple(given.get(label, "") for label in series.labels)


def _family(name: str, series: Series, samples: dict[tuple[str, ...], float]) -> Metric:
    family: CounterMetricFamily | GaugeMetricFamily
    if series.kind == "counter":
        family = CounterMetricFamily(exported(name), series.help, labels=series.labels)
        if not series.labels and not samples:
            samples = {(): 0.0}  # a counter without labels is 0 until it counts
    else:
        family = GaugeMetricFamily(exported(name), series.help, labels=series.labels)
    for labels, value in sorted(samples.items()):
        family.add_metric(labels, value)
    return family


def _histogram(name: str, series: Series,
               found: list[tuple[Labels, list[tuple[float, int]], float]]) -> Metric:
    family = HistogramMetricFamily(exported(name), series.help, labels=series.labels)
    for labels, cumulative, total in found:
        buckets = [(_bound(bound), n) for bound, n in cumulative]
        family.add_metric(list(_values(series, labels)), buckets, total)
    return family


def _bound(bound: float) -> str:
    """A bucket's ``le``, as prometheus-client writes it (``1.0``, ``+Inf``, ``1e+10``)."""
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


def collector_registry(stats: Stats, *, process: bool = True) -> CollectorRegistry:
    """A prometheus-client registry of this stats registry (and, with ``process``,
    the process's own metrics)."""
    out = CollectorRegistry(auto_describe=False)
    out.register(StatsCollector(stats))
    if process:
        ProcessCollector(registry=out)
    return out


def scrape(registry: CollectorRegistry) -> bytes:
    """What ``GET /metrics`` answers: the text format, every series now."""
    return generate_latest(registry)


__all__ = ["CONTENT_TYPE", "PREFIX", "CollectorRegistry", "StatsCollector",
           "collector_registry", "exported", "scrape"]
