"""Serving metrics over HTTP, and a worker node's endpoint.

:func:`serve` serves a registry at ``http://address:port/metrics`` from a daemon thread and
writes where it listens to ``<home>/run/metrics/<name>.json``, a Prometheus ``file_sd``
target file (``file_sd_configs: [{files: ["<home>/run/metrics/*.json"]}]`` finds every
process of a machine, the nodes an autoscaler starts on ephemeral ports included). The
autoscaler uses it too (:mod:`offload.autoscaler.metrics`).

:func:`start_node_server` is a worker node's endpoint, started in the worker's main process
once the pool has forked: the counters and histograms its pool processes write
(:mod:`offload.worker.metrics`, summed from their files) plus figures read at scrape time
(:class:`NodeCollector`): slots, GPUs and the cache, none of which costs a job anything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from offload.cache.factory import local_tier
from offload.config import Settings
from offload.errors import ConfigError
from offload.worker.capacity import Capacity
from offload.worker.gpus import GpuAllocator, lock_dir

log = logging.getLogger(__name__)


@dataclass
class MetricsServer:
    server: WSGIServer
    thread: threading.Thread
    target: Path | None = None  # the file_sd file saying where it listens
    extra: list[Callable[[], None]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        host = str(self.server.server_address[0])
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        if self.target is not None:
            self.target.unlink(missing_ok=True)
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def serve(
    registry: CollectorRegistry,
    address: str,
    port: int,
    *,
    targets: Path | None = None,
    name: str = "",
    labels: dict[str, str] | None = None,
) -> MetricsServer:
    """Serve ``registry`` on ``address:port`` (0: any free port); with ``targets``, write
    ``<targets>/<name>.json`` saying where. A port or address it cannot listen on is a
    :class:`ConfigError` naming the settings."""
    try:
        server, thread = start_http_server(port, addr=address, registry=registry)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot serve metrics on {address}:{port} (OFFLOAD_METRICS_ADDRESS / "
            f"OFFLOAD_METRICS_PORT): {exc}"
        ) from None
    ms = MetricsServer(server, thread)
    if targets is not None and name:
        host = socket.gethostname() if address in ("0.0.0.0", "::") else address
        host = f"[{host}]" if ":" in host else host
        ms.target = write_target(targets, name, f"{host}:{ms.port}", labels or {})
    return ms


def check_address(settings: Settings, port: int | None = None) -> None:
    """Fail now, naming the settings, when ``OFFLOAD_METRICS_ADDRESS`` / ``_PORT`` (or
    ``port``) cannot be listened on."""
    port = settings.metrics_port if port is None else port
    where = f"{settings.metrics_address}:{port}"
    try:
        info = socket.getaddrinfo(settings.metrics_address, port or 0, type=socket.SOCK_STREAM)
        family, kind, proto, _, addr = info[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {where} (OFFLOAD_METRICS_ADDRESS / OFFLOAD_METRICS_PORT): "
            f"{exc}"
        ) from None


def write_target(folder: Path, name: str, where: str, labels: dict[str, str]) -> Path:
    """A Prometheus file_sd file for one target, written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps([{"targets": [where], "labels": labels}]))
    os.replace(tmp, path)
    return path


class NodeCollector(Collector):
    """A node's figures read when Prometheus scrapes: slots, GPUs, its cache."""

    OBJECTS_EVERY = 30.0  # seconds between scans of the cache folder (its byte total is free)

    def __init__(
        self, settings: Settings, slots: int, capacity: Capacity, busy: Callable[[], int]
    ) -> None:
        self.node, self.slots, self.busy = settings.node_name, slots, busy
        self.gpus = GpuAllocator(capacity.gpus, lock_dir(settings.home))
        self.cache = local_tier(settings)
        self._objects: tuple[float, int] = (-1e9, 0)

    def _gauge(self, name: str, doc: str, value: float, **labels: str) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=["node", *labels])
        g.add_metric([self.node, *labels.values()], value)
        return g

    def objects(self) -> int:
        at, n = self._objects
        if time.monotonic() - at >= self.OBJECTS_EVERY:
            n = self.cache.stats().count
            self._objects = (time.monotonic(), n)
        return n

    def collect(self) -> Iterator[Metric]:
        busy = min(self.busy(), self.slots)
        yield self._gauge("offload_node_slots", "Job slots of this node", self.slots)
        yield self._gauge("offload_node_slots_busy", "Slots running an attempt now", busy)
        yield self._gauge("offload_node_slots_free", "Slots free now", self.slots - busy)
        gpus = len(self.gpus.gpus)
        held = len(self.gpus.holders()) if gpus else 0
        yield self._gauge("offload_node_gpus", "GPUs of this node", gpus)
        yield self._gauge("offload_node_gpus_busy", "GPUs held by an attempt now", held)
        with contextlib.suppress(Exception):  # a cache folder not made yet: no figures
            yield self._gauge(
                "offload_cache_bytes", "Bytes in this node's cache", self.cache.used()
            )
            yield self._gauge(
                "offload_cache_objects", "Objects in this node's cache", self.objects()
            )
            budget = self.cache.budget
            yield self._gauge(
                "offload_cache_budget_bytes", "The cache's budget (0: none)", budget or 0
            )


def start_node_server(
    settings: Settings, folder: Path, slots: int, capacity: Capacity, busy: Callable[[], int]
) -> MetricsServer:
    """The node's endpoint: its pool's counters (summed from ``folder``) and its gauges."""
    assert settings.metrics_port is not None
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    registry.register(NodeCollector(settings, slots, capacity, busy))
    ms = serve(
        registry,
        settings.metrics_address,
        settings.metrics_port,
        targets=settings.metrics_targets,
        name=settings.node_name,
        labels={"role": "worker"},
    )
    log.warning("node %s: metrics on %s", settings.node_name, ms.url)
    return ms
