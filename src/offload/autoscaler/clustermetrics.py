"""The cluster-wide figures the autoscaler exports, read from Redis when Prometheus scrapes.

They are the cluster's, not this process's: the counters live in Redis
(:mod:`offload.broker.stats`) and survive restarts of every process, the gauges are Redis's
state now. Only the autoscaler exports them, so each series comes once (run two autoscalers
and they come twice, with their ``instance``: take ``max without (instance)``).
``docs/metrics.md`` lists them. A scrape while Redis is away yields only
``offload_redis_up 0``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from offload.broker.core import Broker
from offload.broker.stats import ClusterStats
from offload.errors import OffloadError

log = logging.getLogger(__name__)


class ClusterCollector(Collector):
    def __init__(self, broker: Broker, classes: Sequence[str]) -> None:
        self.broker, self.classes = broker, list(classes)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("offload_redis_up", "Whether the autoscaler could read Redis")
        try:
            stats = self.broker.stats(self.classes)
        except OffloadError as exc:
            log.warning("metrics: cannot read Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families(stats, self.classes)


def families(stats: ClusterStats, classes: Sequence[str]) -> Iterator[Metric]:
    submitted = CounterMetricFamily(
        "offload_jobs_submitted", "Jobs submitted, per class", labels=["resource_class"]
    )
    for cls in sorted(set(classes) | set(stats.submitted)):
        submitted.add_metric([cls], stats.submitted.get(cls, 0))
    yield submitted
    finished = CounterMetricFamily(
        "offload_jobs_finished",
        "Jobs that reached a terminal status, per class, status and reason",
        labels=["resource_class", "status", "reason"],
    )
    for f in stats.finished:
        finished.add_metric([f.resource_class, f.status, f.reason or "none"], f.count)
    yield finished
    waiting = GaugeMetricFamily(
        "offload_jobs_waiting", "Jobs waiting now, by what for", labels=["waiting_for"]
    )
    w = stats.waiting
    for why, n in (("limit", w.limit), ("held", w.held), ("parents", w.parents)):
        waiting.add_metric([why], n)
    yield waiting
    fires = CounterMetricFamily(
        "offload_schedule_fires", "Schedule fire times handled, by outcome", labels=["outcome"]
    )
    for outcome in sorted({"submitted", "skipped", "error", *stats.schedules} - {"missed"}):
        fires.add_metric([outcome], stats.schedules.get(outcome, 0))
    yield fires
    missed = CounterMetricFamily(
        "offload_schedule_misses", "Fires that made up for fire times missed (scheduler down)"
    )
    missed.add_metric([], stats.schedules.get("missed", 0))
    yield missed
    if stats.memory is not None:
        m = stats.memory
        for name, doc, value in (
            ("offload_redis_used_memory_bytes", "Redis used_memory (INFO memory)", m.used),
            ("offload_redis_max_memory_bytes", "Redis maxmemory (0: none set)", m.max),
        ):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            yield g
        if m.max:
            g = GaugeMetricFamily(
                "offload_redis_high_water_bytes",
                "OFFLOAD_REDIS_HIGH_WATER of maxmemory: above it Redis counts as too full",
            )
            g.add_metric([], m.high_water)
            yield g
