"""Starting a worker node: a Celery worker consuming the classes this node serves and its own
queue, ``node.<name>`` (jobs routed to it because its cache holds their inputs)."""

from __future__ import annotations

import logging
import threading
import time

from offload.broker.core import Broker
from offload.broker.publish import declare_node_queue
from offload.cache.factory import index_this_node, object_index, open_store
from offload.config import Settings
from offload.spec import format_memory
from offload.worker import capacity as cap_mod
from offload.worker import staging
from offload.worker.docker_runtime import connect
from offload.worker.heartbeat import install as install_heartbeat
from offload.worker.tasks import busy_slots, on_worker_ready, on_worker_shutdown, register

log = logging.getLogger(__name__)


def plan(settings: Settings) -> tuple[cap_mod.Capacity, list[str], int]:
    cap = cap_mod.allocatable(settings, cap_mod.detect())
    classes = [c.name for c in cap_mod.served_classes(settings, cap)]
    return cap, classes, cap_mod.slots(settings, cap)


def start_uploader(settings: Settings, interval: float = 5.0) -> None:
    """Once the worker is ready, upload held blobs (S3 was unreachable) every ``interval`` s."""
    if not settings.s3_bucket:
        return

    def loop() -> None:
        store = open_store(settings, Broker(settings).redis)  # this thread's own connections
        while True:
            try:
                sent = store.flush_pending()
                if sent:
                    log.warning("uploaded %d pending blob(s) to the remote store", sent)
            except Exception:
                log.exception("pending uploads")
            time.sleep(interval)

    on_worker_ready(threading.Thread(target=loop, name="pending-uploads", daemon=True).start)


def start_metrics(settings: Settings, slots: int, cap: cap_mod.Capacity) -> None:
    """With ``OFFLOAD_METRICS_PORT`` set: counters on before the pool forks (its processes
    write them), the endpoint once it has (no thread crosses a fork); its address is checked
    now, so a bad one stops the worker before it takes a job."""
    if settings.metrics_port is None:
        return
    from offload.worker import metrics, metricserver

    metricserver.check_address(settings)
    folder = metrics.enable(settings.home, settings.node_name)
    servers: list[metricserver.MetricsServer] = []

    def start() -> None:
        servers.append(metricserver.start_node_server(settings, folder, slots, cap, busy_slots))

    def stop() -> None:
        for server in servers:
            server.close()

    on_worker_ready(start)
    on_worker_shutdown(stop)


def run_worker(settings: Settings, *, loglevel: str = "INFO") -> None:
    """Run until stopped (SIGTERM: finish running jobs, then exit)."""
    connect(settings.engine_timeout).close()  # fail now, clearly, when there is no engine
    cap, classes, slots = plan(settings)
    log.warning(
        "offload worker %s (machine %s): %g CPU, %s for jobs, %d GPU; serving %s, "
        "at most %d job(s) at once",
        settings.node_name,
        settings.machine,
        cap.cpus,
        format_memory(cap.memory - cap.memory % (1024 * 1024)),
        len(cap.gpus),
        ",".join(classes),
        slots,
    )
    # Before the pool forks, no attempt of this node is live: whatever a killed run left in
    # its work folder (plaintext inputs, outputs, params.json) goes now.
    left = staging.clear(settings.work_dir)
    if left:
        log.warning(
            "node %s: removed %d work folder(s) left by an earlier run",
            settings.node_name,
            len(left),
        )
    broker = Broker(settings)
    app = broker.app
    queues = list(classes)
    if settings.locality:
        # The index describes this run's cache from now on: what an earlier run recorded may
        # have been evicted or removed since (`offload cache gc`). Stores opened from here on,
        # in this process and the pool's, keep it current.
        try:
            object_index(settings, broker.redis).clear()
        except Exception as exc:  # an unreachable broker: Celery waits for it below
            log.warning("node %s: cannot clear its object index: %s", settings.node_name, exc)
        index_this_node()
        queues.append(declare_node_queue(app, settings.node_name))
    register(broker, cap)
    start_metrics(settings, slots, cap)
    start_uploader(settings)
    install_heartbeat(settings, classes=classes, slots=slots, capacity=cap, queues=queues)
    app.worker_main(
        [
            "worker",
            "--queues",
            ",".join(queues),
            "--concurrency",
            str(slots),
            "--pool",
            "prefork",
            "--hostname",
            f"offload@{settings.node_name}",
            "--loglevel",
            loglevel,
            "--without-mingle",
            "--without-gossip",
            "--task-events",
        ]
    )
