"""Prometheus metrics of the autoscaler: work and nodes per class, what it wants.

Each :class:`AutoscalerMetrics` has its own collector registry (several can live in one
process, as in tests); :func:`start_metrics_server` serves one on loopback::

    offload_jobs_ready{resource_class}              ready messages (all priority lists)
    offload_jobs_unacked{resource_class}            delivered, not acknowledged (incl. running)
    offload_jobs_running{resource_class}            staging / running / uploading on a node
    offload_work{resource_class}                    the work the policy scaled on
    offload_nodes{resource_class, state}            starting | up | draining | lost
    offload_nodes_desired{resource_class}           the policy's desired node count
    offload_autoscaler_last_tick_timestamp_seconds  when the last tick finished
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from offload.autoscaler.policy import ClassWork, Decision, NodeView

STATES = ("starting", "up", "draining", "lost")


class AutoscalerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        label = ["resource_class"]
        r = self.registry
        self.ready = Gauge("offload_jobs_ready", "Ready messages", label, registry=r)
        self.unacked = Gauge(
            "offload_jobs_unacked", "Delivered, unacknowledged messages", label, registry=r
        )
        self.running = Gauge("offload_jobs_running", "Jobs running on nodes", label, registry=r)
        self.work = Gauge("offload_work", "Work the policy scaled on", label, registry=r)
        self.nodes = Gauge("offload_nodes", "Nodes by state", [*label, "state"], registry=r)
        self.desired = Gauge("offload_nodes_desired", "Desired nodes", label, registry=r)
        self.last_tick = Gauge(
            "offload_autoscaler_last_tick_timestamp_seconds", "Last tick (unix time)", registry=r
        )

    def observe(
        self,
        work: Mapping[str, ClassWork],
        nodes: Sequence[NodeView],
        decision: Decision,
        now: float,
    ) -> None:
        for cls, w in work.items():
            self.ready.labels(cls).set(w.ready)
            self.unacked.labels(cls).set(w.unacked)
            self.running.labels(cls).set(w.running)
        for cls, d in decision.classes.items():
            self.work.labels(cls).set(d.work)
            self.desired.labels(cls).set(d.desired)
            for state in STATES:
                count = sum(1 for n in nodes if n.resource_class == cls and n.state == state)
                self.nodes.labels(cls, state).set(count)
        self.last_tick.set(now)


@dataclass
class MetricsServer:
    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def start_metrics_server(
    port: int, metrics: AutoscalerMetrics, addr: str = "127.0.0.1"
) -> MetricsServer:
    """Serve ``metrics`` at ``http://addr:port/metrics`` from a daemon thread (port 0: any)."""
    server, thread = start_http_server(port, addr=addr, registry=metrics.registry)
    return MetricsServer(server, thread)
