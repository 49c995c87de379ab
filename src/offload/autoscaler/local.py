"""The local provider: worker nodes as processes on this machine (the embedded default).

Each node is ``python -m offload worker`` in a session of its own, named
``<class>-<8 hex>``, serving only that class, with its own cache folder::

    <home>/nodes/<name>/cache     the node's local store (OFFLOAD_CACHE_DIR) -- when an S3
                                  bucket is configured; without one the store on this
                                  machine is the only store, so every node shares it
                                  (see :func:`node_cache`)
    <home>/work/<name>/           job workspaces (the worker puts them there)
    <home>/logs/<name>.log        the node's output
    <home>/run/nodes/<name>.json  pid, class, slots, start time, draining — so an autoscaler
                                  that restarts finds its nodes again

**The machine is one budget.** Every node on this machine (the embedded worker of
``offload up`` and this provider's nodes: they name the same ``machine``) admits jobs from
one room (:mod:`offload.broker.room`), so together they never give out more CPU, memory or
GPUs than the machine has (:class:`MachineBudget`: psutil's, less the memory reserve),
however many nodes run. Whether one more node is worth starting is judged on what the nodes
actually use: the room their running jobs hold, and for each node of this provider at least
one job of its class as big as the class allows here (:meth:`LocalProvider.unit`), so one
idle node is not started again and again. An idle embedded worker holds nothing: on an idle
2-CPU machine a ``cpu-large`` node starts for a 2-CPU job. A node that would not fit is not
started; :meth:`LocalProvider.headroom` tells the policy how many fit, so the class's status
says ``at machine capacity: …`` with the figures and its jobs wait.

Draining sends SIGTERM to the node's main process: Celery's warm shutdown (stop consuming,
finish the running jobs, exit). Nothing here ever sends SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from offload.autoscaler.nodeenv import new_node_name, node_cache, node_env
from offload.autoscaler.provider import Headroom, NodeProvider, ProvidedNode
from offload.broker.core import Broker
from offload.broker.room import Room, Share
from offload.config import Settings
from offload.errors import BrokerError, ProviderError
from offload.spec import GiB, ResourceClass
from offload.worker.capacity import allocatable, detect


@dataclass(frozen=True)
class MachineBudget:
    """CPUs and memory of the machine the local provider shares out."""

    cpus: float
    memory: int

    @classmethod
    def detect(cls, settings: Settings) -> MachineBudget:
        """This machine's allocatable room (what its nodes give jobs: less the reserve)."""
        cap = allocatable(settings, detect())
        return cls(cap.cpus, cap.memory)


def _gib(n: float) -> str:
    return f"{n / GiB:.3g}"


class LocalProvider(NodeProvider):
    """Worker processes on this machine, one per node."""

    name = "local"

    def __init__(
        self,
        settings: Settings,
        *,
        slots: int | None = None,
        python: str = sys.executable,
        loglevel: str = "INFO",
        machine: MachineBudget | None = None,
        broker: Broker | None = None,
    ) -> None:
        self.settings = settings
        self.slots = slots or settings.worker_slots
        self.python = python
        self.loglevel = loglevel
        self.machine = machine or MachineBudget.detect(settings)
        self._broker = broker
        self.state_dir = settings.home / "run" / "nodes"
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # -- the seam --------------------------------------------------------------------------

    def start_nodes(self, resource_class: str, count: int) -> list[str]:
        """Start up to ``count`` nodes, as many as the machine's budget leaves room for.

        None fits: :class:`ProviderError` saying what is in use.
        """
        cls = self.settings.resource_class(resource_class)  # unknown: ConfigError, no start
        used = self.in_use()
        names: list[str] = []
        for _ in range(count):
            if not self._fits(cls, used):
                break
            names.append(self._start(resource_class, self.slots))
            used = used + self.unit(cls)
        if count and not names:
            raise ProviderError(self._capacity_reason(used))
        return names

    def headroom(self, classes: Sequence[str]) -> dict[str, Headroom]:
        """Per class, how many more nodes fit the machine beside those on it now."""
        used = self.in_use()
        out = {}
        for name in classes:
            cls = self.settings.resource_class(name)
            n, more = 0, used
            while self._fits(cls, more) and n < 1024:
                more, n = more + self.unit(cls), n + 1
            out[name] = Headroom(n, self._capacity_reason(used))
        return out

    def drain(self, node: str) -> None:
        """SIGTERM to the node's main process (warm shutdown), once; a node already gone or
        already draining is a no-op."""
        state = self._read(node)
        if state is None or not self._alive(state):
            return
        if state.get("draining"):
            return  # told once: a SIGTERM again, mid-shutdown, can hang Celery's warm shutdown
        state["draining"] = True
        state["drained_at"] = time.time()
        self._write(node, state)
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(state["pid"]), signal.SIGTERM)

    def nodes(self) -> list[ProvidedNode]:
        out = []
        for path in sorted(self.state_dir.glob("*.json")):
            node = path.stem
            state = self._read(node)
            if state is None:
                continue
            if not self._alive(state):
                self._forget(node, state)
                continue
            out.append(
                ProvidedNode(
                    name=node,
                    resource_class=str(state["resource_class"]),
                    state="draining" if state.get("draining") else "running",
                    created_at=float(state["created_at"]),
                )
            )
        return out

    # -- helpers ---------------------------------------------------------------------------

    def node_dir(self, node: str) -> Path:
        return self.settings.home / "nodes" / node

    def log_path(self, node: str) -> Path:
        return self.settings.home / "logs" / f"{node}.log"

    def pid(self, node: str) -> int | None:
        """The node's main process id while it runs, else ``None``."""
        state = self._read(node)
        return int(state["pid"]) if state is not None and self._alive(state) else None

    def in_use(self) -> Share:
        """What the machine's nodes use of it: the room their running jobs hold (every node
        naming this machine: this provider's, and the embedded worker), and for each node of
        this provider at least one job of its class (:meth:`unit`), so an idle node started
        for work is not started twice. An idle embedded worker holds nothing."""
        try:
            per_node = self.room.used_by_node(self.settings.machine)
        except BrokerError as exc:
            raise ProviderError(f"reading the machine's room: {exc}") from exc
        used = Share()
        for share in per_node.values():
            used = used + share
        for node in self.nodes():
            cls = self._class(node.resource_class)
            if cls is None:
                continue
            unit, holds = self.unit(cls), per_node.get(node.name, Share())
            used = used + Share(
                max(0.0, unit.cpus - holds.cpus), max(0, unit.memory - holds.memory)
            )
        return used

    def unit(self, cls: ResourceClass) -> Share:
        """One job of ``cls`` as big as the class allows on this machine."""
        return Share(min(cls.max_cpu, self.machine.cpus), min(cls.max_memory, self.machine.memory))

    @property
    def room(self) -> Room:
        if self._broker is None:
            self._broker = Broker(self.settings)
        return self._broker.room

    def _class(self, name: str) -> ResourceClass | None:
        return next((c for c in self.settings.classes if c.name == name), None)

    def _fits(self, cls: ResourceClass, used: Share) -> bool:
        """Whether a new node of ``cls`` fits beside ``used``: a job of its class does."""
        free = Share(self.machine.cpus, self.machine.memory) - used
        return free.covers(self.unit(cls))

    def _capacity_reason(self, used: Share) -> str:
        m = self.machine
        return (
            f"at machine capacity: {used.cpus:g} CPUs / {_gib(used.memory)} GiB in use "
            f"(this machine: {m.cpus:g} CPUs / {_gib(m.memory)} GiB)"
        )

    def _start(self, resource_class: str, slots: int | None) -> str:
        name = new_node_name(resource_class)
        self.node_dir(name).mkdir(parents=True, exist_ok=True)
        cache = node_cache(self.settings, self.node_dir(name))
        cache.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path(name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            **node_env(
                self.settings,
                name,
                resource_class,
                "local",
                home=self.settings.home,
                cache_dir=cache,
                key_file=self.settings.key_path,
                slots=slots,
            ),
        }
        try:
            with log_path.open("ab") as log:
                proc = subprocess.Popen(
                    [self.python, "-m", "offload", "worker", "--loglevel", self.loglevel],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    env=env,
                    cwd=self.node_dir(name),
                )
        except OSError as exc:
            shutil.rmtree(self.node_dir(name), ignore_errors=True)
            raise ProviderError(f"node {name} did not start: {exc}") from exc
        self._children[proc.pid] = proc
        try:
            started = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            started = 0.0
        self._write(
            name,
            {
                "name": name,
                "resource_class": resource_class,
                "slots": slots,
                "pid": proc.pid,
                "process_started": started,
                "created_at": time.time(),
                "draining": False,
                "log": str(log_path),
            },
        )
        return name

    def _alive(self, state: dict[str, Any]) -> bool:
        pid = int(state["pid"])
        child = self._children.get(pid)
        if child is not None and child.poll() is not None:  # reaps our own children
            self._children.pop(pid, None)
            return False
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            started = float(state.get("process_started") or 0)
            # the pid was reused by another process
            return not (started and abs(proc.create_time() - started) > 1.0)
        except psutil.NoSuchProcess:
            return False
        except psutil.Error:
            return True

    def _forget(self, node: str, state: dict[str, Any]) -> None:
        """A node that exited: drop its state file, its cache and its workspaces."""
        (self.state_dir / f"{node}.json").unlink(missing_ok=True)
        shutil.rmtree(self.node_dir(node), ignore_errors=True)
        shutil.rmtree(self.settings.home / "work" / node, ignore_errors=True)

    def _read(self, node: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.state_dir / f"{node}.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and "pid" in data else None

    def _write(self, node: str, state: dict[str, Any]) -> None:
        path = self.state_dir / f"{node}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, sort_keys=True))
        os.replace(tmp, path)
