"""The node's life in the registry: register when ready, heartbeat, drain, deregister.

Runs as one daemon thread in the worker's main process, started once the pool has forked
(Celery's ``worker_ready``) so no thread crosses a fork. Every ``heartbeat_interval`` it

* refreshes the heartbeat (registering again if the node was dropped, e.g. declared lost);
* marks the node draining once the worker got SIGTERM (warm shutdown: stop consuming, finish
  the running jobs, exit), and starts that warm shutdown itself when the registry's
  ``draining`` flag was set by someone else (the autoscaler);
* redelivers the jobs of its own pool processes that died (:class:`ProcessReaper`);
* records the outcomes journaled while Redis was away (:mod:`offload.worker.journal`);
* follows its Docker engine (:class:`~offload.worker.engine.EngineWatch`, a thread of its own
  pinging it): while the engine does not answer, the node stops consuming its queues (Celery's
  ``cancel_consumer``, to this worker alone) and says ``engine down`` in the registry; once it
  answers, the node consumes again and removes what dead attempts left;
* every ``sweep_interval`` seconds, sweeps: requeues jobs whose lease expired, republishes
  lost messages (:class:`~offload.broker.sweeper.Sweeper`, one sweeper in the cluster at a
  time), and removes what this node's dead attempts left (:class:`LocalReaper`).

At start, before taking jobs, it removes what a previous run of this node left (containers,
work folders) and records that run's journal; its jobs come back through the process reaper
(their pool processes are gone) or the sweeper (their leases expire).

The heartbeat goes on while the node drains, until the worker exits; a clean exit
(``worker_shutdown``) deregisters the node.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import redis

from offload.broker.core import Broker
from offload.broker.recovery import ProcessReaper
from offload.broker.sweeper import Sweeper
from offload.cache.archive import sealed_archive
from offload.config import Settings
from offload.errors import BrokerError
from offload.worker.capacity import Capacity
from offload.worker.docker_runtime import DockerRuntime, connect
from offload.worker.engine import EngineWatch
from offload.worker.journal import Journal
from offload.worker.reaper import LocalReaper
from offload.worker.tasks import on_worker_ready, on_worker_shutdown, on_worker_shutting_down

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(
        self,
        broker: Broker,
        *,
        classes: list[str],
        slots: int,
        capacity: Capacity,
        queues: list[str] | None = None,
    ) -> None:
        settings = broker.settings
        self.broker = broker
        self.settings = settings
        self.name = settings.node_name
        self.classes, self.slots, self.capacity = classes, slots, capacity
        self.interval = settings.heartbeat_interval
        self.shutting_down = False  # this worker got SIGTERM (or asked itself to drain)
        self.marked_draining = False
        self.stopped = threading.Event()
        self.wake = threading.Event()
        self.lock = threading.Lock()
        self.last_sweep = 0.0
        self.thread: threading.Thread | None = None
        self.registry = broker.nodes
        self.records = broker.records
        runtime = DockerRuntime(connect())
        self.reaper = ProcessReaper(
            self.registry,
            self.records,
            self.name,
            grace=max(2.0, self.interval),
            max_losses=settings.max_node_losses,
            remove=runtime.remove_job_containers,  # before its room is given out again
        )
        self.journal = Journal(settings.journal_dir)
        runtime = DockerRuntime(connect(settings.engine_timeout, ping=False))
        self.leftovers = LocalReaper(
            self.name,
            self.registry.cluster_id(),
            self.records,
            runtime,
            settings.work_dir.parent,
        )
        self.queues = list(queues if queues is not None else classes)  # what the worker consumes
        self.engine = EngineWatch(runtime.health, self.interval, self.wake.set)
        self.engine_said: bool | None = None  # what the registry and consumers were told

    # -- lifecycle -------------------------------------------------------------------------

    def register(self) -> None:
        self.registry.register(
            self.name,
            provider=self.settings.provider,
            classes=self.classes,
            slots=self.slots,
            cpus=self.capacity.cpus,
            memory=self.capacity.memory,
            gpus=len(self.capacity.gpus),
            machine=self.settings.machine,
        )
        self.marked_draining = False
        self.engine_said = None if self.engine_said is False else True

    def start(self) -> None:
        self.register()
        try:
            self.journal.replay(self.records)
            self.leftovers.reap()
        except Exception:
            log.exception("node %s: cleaning up after a previous run", self.name)
        self.engine.start()
        log.warning("node %s registered (provider %s)", self.name, self.settings.provider)
        self.thread = threading.Thread(target=self.loop, name="node-heartbeat", daemon=True)
        self.thread.start()

    def draining(self) -> None:
        """The worker is shutting down warm: say so at once; keep beating until exit."""
        self.shutting_down = True
        self.wake.set()

    def stop(self) -> None:
        """Clean exit: stop beating and deregister."""
        with self.lock:
            if self.stopped.is_set():
                return
            self.stopped.set()
            self.engine.stop()
            self.wake.set()
            try:
                self.registry.deregister(self.name)
                log.warning("node %s deregistered", self.name)
            except Exception:
                log.exception("node %s: deregistering", self.name)

    # -- the loop --------------------------------------------------------------------------

    def loop(self) -> None:
        away = False  # the broker is unreachable: say so once, not at every beat
        while not self.stopped.is_set():
            try:
                self.beat(time.time())
                if away:
                    log.warning("node %s: the broker is back", self.name)
                away = False
            except (BrokerError, redis.RedisError) as exc:
                if not away:
                    log.warning("node %s: the broker is unreachable (%s)", self.name, exc)
                away = True
            except Exception:
                log.exception("node %s: heartbeat", self.name)
            self.wake.wait(self.interval)
            self.wake.clear()

    def beat(self, now: float) -> None:
        with self.lock:
            if self.stopped.is_set():
                return
            if not self.registry.heartbeat(self.name):
                log.warning("node %s was not registered (declared lost?); registering", self.name)
                self.register()
            if self.shutting_down:
                if not self.marked_draining:
                    self.registry.set_draining(self.name)
                    self.marked_draining = True
            elif self.registry.is_draining(self.name):
                log.warning("node %s asked to drain: finishing its jobs, then exiting", self.name)
                self.shutting_down = self.marked_draining = True
                os.kill(os.getpid(), signal.SIGTERM)  # Celery's warm shutdown
            self.follow_engine()
        self.reaper.reap(self.app, now)
        self.journal.replay(self.records)
        if now - self.last_sweep >= self.settings.sweep_interval:
            self.last_sweep = now
            self.sweeper.sweep()
            if self.engine.up:
                self.leftovers.reap()

    def follow_engine(self) -> None:
        """Tell the registry and this worker's consumers whether the engine answers, on a
        change (again after a failed try): while it is down the node takes no work."""
        up = self.engine.up
        if up == self.engine_said:
            return
        self.registry.set_engine(self.name, up)
        hostname = f"offload@{self.name}"
        if up and not self.shutting_down:
            for queue in self.queues:
                self.app.control.add_consumer(queue, destination=[hostname])
        elif not up:
            for queue in self.queues:
                self.app.control.cancel_consumer(queue, destination=[hostname])
        log.warning("node %s: %s", self.name, "engine up: consuming again" if up else "engine down")
        self.engine_said = up
        if up:
            self.leftovers.reap()  # what the attempts it lost left: containers, folders

    @property
    def sweeper(self) -> Sweeper:
        return self.broker.sweeper

    @property
    def app(self) -> Any:
        return self.broker.app  # this thread's broker: its own app and connections


def install(
    settings: Settings,
    *,
    classes: list[str],
    slots: int,
    capacity: Capacity,
    queues: list[str] | None = None,
) -> None:
    """Register the node once the worker is ready, heartbeat, deregister on a clean exit."""
    state: dict[str, Heartbeat] = {}

    def on_ready() -> None:  # after the pool forked: no thread crosses a fork
        # the heartbeat thread's own broker: its connections are not shared with the pool's
        hb = Heartbeat(  # with the archive: its sweeps archive finished jobs
            Broker(settings, archive=sealed_archive(settings)),
            classes=classes,
            slots=slots,
            capacity=capacity,
            queues=queues,
        )
        state["hb"] = hb
        hb.start()

    def on_shutting_down() -> None:  # in a signal handler: only flip a flag
        if "hb" in state:
            state["hb"].draining()

    def on_shutdown() -> None:
        if "hb" in state:
            state["hb"].stop()

    on_worker_ready(on_ready)
    on_worker_shutting_down(on_shutting_down)
    on_worker_shutdown(on_shutdown)
