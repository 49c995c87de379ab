"""A worker node's own metrics: what its attempts did, counted where they run.

Celery's prefork pool runs attempts in child processes while the node's HTTP server
(:mod:`offload.worker.metricserver`) lives in the parent. The counters and histograms use
prometheus_client's multiprocess mode: :func:`enable`, called in the parent before the pool
forks, points ``PROMETHEUS_MULTIPROC_DIR`` at a folder of this node's own
(``<home>/metrics/<node>/``, emptied at each start) and creates the metrics there; each
process then writes its values to its own memory-mapped file (a write to mapped memory, no
system call, no lock shared between processes, no Redis round trip), and the parent sums the
files at scrape time. A pool process that dies leaves its counts behind in its file, so no
counter goes backwards until the node restarts (then every counter starts at zero: a counter
reset Prometheus's ``rate`` handles).

Until :func:`enable` is called (metrics off, or a process that is no node) every hook is a
no-op. A hook never raises: a metric must not fail a job.

Every series carries ``node`` (the node's name): per-node figures of several nodes sum without
clashing. The figures read at scrape time (slots, GPUs, the cache) are in
:mod:`offload.worker.metricserver`.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from prometheus_client import Counter, Histogram, values

from offload.broker.model import Event
from offload.broker.records import JobRecords
from offload.broker.status import JobStatus
from offload.cache import probe as cache_probe
from offload.errors import BrokerError

log = logging.getLogger(__name__)

# seconds; a no-op job waits ~0.05 s in the queue and runs ~0.3 s, batch jobs minutes to hours
QUEUE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, float("inf"))
RUN_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, float("inf"))


def multiproc_dir(home: Path, node: str) -> Path:
    return home / "metrics" / node


class NodeMetrics:
    """The metric objects of a node (every process of it, after the fork)."""

    def __init__(self, node: str) -> None:
        self.node = node
        cls = ["node", "resource_class"]
        self.started = Counter(
            "offload_attempts_started", "Attempts this node started (staging)", cls
        )
        self.ended = Counter(
            "offload_attempts_ended",
            "Attempts this node ended, by the status and reason it recorded",
            [*cls, "status", "reason"],
        )
        self.retried = Counter(
            "offload_attempts_retried",
            "Failed attempts sent back for a retry (one retry spent), by why",
            [*cls, "reason"],
        )
        self.requeued = Counter(
            "offload_attempts_requeued",
            "Attempts handed back to the queue without spending a retry, by why",
            [*cls, "reason"],
        )
        self.queue_wait = Histogram(
            "offload_job_queue_wait_seconds",
            "From a job's last move to queued to its attempt's start on this node",
            cls,
            buckets=QUEUE_BUCKETS,
        )
        self.run = Histogram(
            "offload_job_run_seconds",
            "How long attempts' containers ran (start to exit)",
            cls,
            buckets=RUN_BUCKETS,
        )
        self.cache_reads = Counter(
            "offload_cache_reads", "Objects read, from this node's cache or not", ["node", "result"]
        )
        self.s3_bytes = Counter(
            "offload_s3_bytes", "Sealed bytes to or from the shared store", ["node", "direction"]
        )


_current: list[NodeMetrics | None] = [None]


def enable(home: Path, node: str) -> Path:
    """Turn this node's metrics on, in this process and the pool it forks; returns the
    multiprocess folder (emptied: an earlier run's figures are not this run's)."""
    folder = multiproc_dir(home, node)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    if not getattr(values.ValueClass, "_multiprocess", False):  # imported before the variable
        values.ValueClass = values.MultiProcessValue()
    metrics = NodeMetrics(node)
    _current[0] = metrics
    cache_probe.install(_CacheProbe(metrics))
    return folder


def current() -> NodeMetrics | None:
    return _current[0]


class _CacheProbe(cache_probe.Probe):
    def __init__(self, m: NodeMetrics) -> None:
        self.m = m

    def read(self, local_hit: bool) -> None:
        self.m.cache_reads.labels(self.m.node, "hit" if local_hit else "miss").inc()

    def remote_bytes(self, direction: cache_probe.Direction, n: int) -> None:
        self.m.s3_bytes.labels(self.m.node, direction).inc(n)


class AttemptMetrics:
    """The hooks of one attempt (:class:`offload.worker.endings.Recorder` calls them)."""

    def __init__(self, m: NodeMetrics, resource_class: str) -> None:
        self.m, self.cls = m, resource_class

    def ended(self, status: JobStatus, reason: str, timings: Mapping[str, float]) -> None:
        try:
            self.m.ended.labels(self.m.node, self.cls, status.value, reason).inc()
            self.ran(timings)
        except Exception:  # pragma: no cover - a metric never fails a job
            log.exception("metrics: attempt end")

    def ran(self, timings: Mapping[str, float]) -> None:
        if "running" in timings:
            self.m.run.labels(self.m.node, self.cls).observe(timings["running"])

    def retried(self, reason: str) -> None:
        self.m.retried.labels(self.m.node, self.cls, reason).inc()

    def requeued(self, reason: str) -> None:
        self.m.requeued.labels(self.m.node, self.cls, reason).inc()


def attempt_began(records: JobRecords, job_id: str, attempt: int) -> AttemptMetrics | None:
    """Count an attempt that began (this process's ``begin_attempt`` gave it the job) and
    observe how long the job waited queued; one round trip. None while metrics are off."""
    m = _current[0]
    if m is None:
        return None
    try:
        cls, events = records.latest(job_id)
        cls = cls or "unknown"
        m.started.labels(m.node, cls).inc()
        wait = _queue_wait(events, attempt)
        if wait is not None:
            m.queue_wait.labels(m.node, cls).observe(wait)
        return AttemptMetrics(m, cls)
    except (BrokerError, ValueError) as exc:
        log.warning("metrics: job %s attempt %d not counted: %s", job_id, attempt, exc)
        return None


def _queue_wait(events: list[Event], attempt: int) -> float | None:
    """Seconds from the last ``queued`` entry to this attempt's ``staging`` entry, from the
    newest timeline entries (newest first)."""
    began = None
    for e in events:
        if began is None and e.status is JobStatus.STAGING:
            if e.attempt == attempt:
                began = e.at
        elif began is not None and e.status is JobStatus.QUEUED:
            return max(0.0, began - e.at)
    return None
