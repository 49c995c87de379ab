"""The node's life in the registry: register when ready, heartbeat, drain, deregister.

Runs as one daemon thread in the worker's main process, started once the pool has forked
(Celery's ``worker_ready``) so no thread crosses a fork. Every ``heartbeat_interval`` it

* refreshes the heartbeat (registering again if the node was dropped, e.g. declared lost);
* marks the node draining once the worker got SIGTERM (warm shutdown: stop consuming, finish
  the running jobs, exit), and starts that warm shutdown itself when the registry's
  ``draining`` flag was set by someone else (the autoscaler);
* redelivers the jobs of its own pool processes that died (:class:`ProcessReaper`);
* every ``RECOVER_EVERY`` seconds, redelivers the jobs of lost nodes (:func:`recover_lost`).

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

from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from offload.broker.app import make_app, redis_client
from offload.broker.nodes import NodeRegistry
from offload.broker.records import JobRecords
from offload.config import Settings
from offload.worker.capacity import Capacity
from offload.worker.recovery import ProcessReaper, recover_lost

log = logging.getLogger(__name__)

RECOVER_EVERY = 5.0  # seconds between looks for lost nodes


class Heartbeat:
    def __init__(
        self, settings: Settings, *, classes: list[str], slots: int, capacity: Capacity
    ) -> None:
        self.settings = settings
        self.name = settings.node_name
        self.classes, self.slots, self.capacity = classes, slots, capacity
        self.interval = settings.heartbeat_interval
        self.shutting_down = False  # this worker got SIGTERM (or asked itself to drain)
        self.marked_draining = False
        self.stopped = threading.Event()
        self.wake = threading.Event()
        self.lock = threading.Lock()
        self.last_recovery = 0.0
        self.thread: threading.Thread | None = None
        client = redis_client(settings)
        self.registry = NodeRegistry(client, lost_after=settings.lost_after)
        self.records = JobRecords(
            client, record_ttl=settings.record_ttl, log_max_entries=settings.log_max_entries
        )
        self.reaper = ProcessReaper(
            self.registry, self.records, self.name, grace=max(2.0, self.interval)
        )
        self._app: Any = None

    # -- lifecycle -------------------------------------------------------------------------

    def register(self, fresh: bool = True) -> None:
        self.registry.register(
            self.name,
            provider=self.settings.provider,
            classes=self.classes,
            slots=self.slots,
            cpus=self.capacity.cpus,
            memory=self.capacity.memory,
            gpus=len(self.capacity.gpus),
            fresh=fresh,
        )
        self.marked_draining = False

    def start(self) -> None:
        self.register()
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
            self.wake.set()
            try:
                self.registry.deregister(self.name)
                log.warning("node %s deregistered", self.name)
            except Exception:
                log.exception("node %s: deregistering", self.name)

    # -- the loop --------------------------------------------------------------------------

    def loop(self) -> None:
        while not self.stopped.is_set():
            try:
                self.beat(time.time())
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
                self.register(fresh=False)
            if self.shutting_down:
                if not self.marked_draining:
                    self.registry.set_draining(self.name)
                    self.marked_draining = True
            elif self.registry.is_draining(self.name):
                log.warning("node %s asked to drain: finishing its jobs, then exiting", self.name)
                self.shutting_down = self.marked_draining = True
                os.kill(os.getpid(), signal.SIGTERM)  # Celery's warm shutdown
        self.reaper.reap(self.app, now)
        if now - self.last_recovery >= RECOVER_EVERY:
            self.last_recovery = now
            recover_lost(self.registry, self.records, self.app, now)

    @property
    def app(self) -> Any:
        if self._app is None:  # our own app (and connections) for this thread
            self._app = make_app(self.settings)
        return self._app


def install(settings: Settings, *, classes: list[str], slots: int, capacity: Capacity) -> None:
    """Register the node once the worker is ready, heartbeat, deregister on a clean exit."""
    state: dict[str, Heartbeat] = {}

    def on_ready(**_: object) -> None:  # after the pool forked: no thread crosses a fork
        hb = Heartbeat(settings, classes=classes, slots=slots, capacity=capacity)
        state["hb"] = hb
        hb.start()

    def on_shutting_down(**_: object) -> None:  # in a signal handler: only flip a flag
        if "hb" in state:
            state["hb"].draining()

    def on_shutdown(**_: object) -> None:
        if "hb" in state:
            state["hb"].stop()

    worker_ready.connect(on_ready, weak=False)
    worker_shutting_down.connect(on_shutting_down, weak=False)
    worker_shutdown.connect(on_shutdown, weak=False)
