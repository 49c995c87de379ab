"""The local provider: worker nodes as processes on this machine (the embedded default).

Each node is ``python -m offload worker`` in a session of its own, named
``<class>-<8 hex>``, serving only that class, with its own cache folder::

    <home>/nodes/<name>/cache     the node's local store (OFFLOAD_CACHE_DIR) -- when an S3
                                  bucket is configured; without one the store on this
                                  machine is the only store, so every node shares it
                                  (see :func:`node_cache`)
    <home>/work/<name>/           job workspaces (the worker puts them there)
    <home>/logs/<name>.log        the node's output
    <home>/run/nodes/<name>.json  pid, class, start time, draining — so an autoscaler that
                                  restarts finds its nodes again

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
import uuid
from pathlib import Path
from typing import Any

import psutil

from offload.autoscaler.provider import NodeProvider, ProvidedNode
from offload.config import Settings

# Settings that describe one node, never copied from the autoscaler's own settings.
NODE_FIELDS = frozenset(
    {"node_name", "worker_classes", "cache_dir", "provider", "home", "key_file"}
)


def new_node_name(resource_class: str) -> str:
    return f"{resource_class}-{uuid.uuid4().hex[:8]}"


def settings_env(settings: Settings, *, exclude: frozenset[str] = NODE_FIELDS) -> dict[str, str]:
    """``OFFLOAD_*`` variables that give a node the same platform settings as ``settings``.

    Only values that differ from the defaults are written (``redis_url`` always), so a node's
    environment stays short and readable; node-specific fields are left to the caller.
    """
    dumped = settings.model_dump(mode="json")
    defaults = type(settings).model_construct().model_dump(mode="json")
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        if name in exclude:
            continue
        value = dumped[name]
        if name != "redis_url" and value == defaults.get(name):
            continue
        if value is None:
            continue
        if isinstance(value, list | dict):
            text = json.dumps(value, separators=(",", ":"))
        else:
            text = str(value)
        env[f"OFFLOAD_{name.upper()}"] = text
    return env


def node_cache(settings: Settings, node_dir: Path) -> Path:
    """A node's cache folder: its own when blobs travel through S3, else the shared store.

    Without a remote tier the local store is where producers put inputs and read outputs;
    a node with a private cache would see no inputs and its outputs would reach no one.
    """
    return node_dir / "cache" if settings.s3_bucket else settings.store_dir


def node_env(
    settings: Settings,
    name: str,
    resource_class: str,
    provider: str,
    *,
    home: Path,
    cache_dir: Path,
    key_file: Path,
    slots: int | None = None,
) -> dict[str, str]:
    """The ``OFFLOAD_*`` environment of one node: the platform's settings plus its identity."""
    env = settings_env(settings)
    env.update(
        {
            "OFFLOAD_HOME": str(home),
            "OFFLOAD_CACHE_DIR": str(cache_dir),
            "OFFLOAD_KEY_FILE": str(key_file),
            "OFFLOAD_NODE_NAME": name,
            "OFFLOAD_WORKER_CLASSES": resource_class,
            "OFFLOAD_PROVIDER": provider,
        }
    )
    if slots is not None:
        env["OFFLOAD_WORKER_SLOTS"] = str(slots)
    return env


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
    ) -> None:
        self.settings = settings
        self.slots = slots
        self.python = python
        self.loglevel = loglevel
        self.state_dir = settings.home / "run" / "nodes"
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # -- the seam --------------------------------------------------------------------------

    def start_nodes(self, resource_class: str, count: int) -> list[str]:
        self.settings.resource_class(resource_class)  # unknown class: ConfigError, nothing started
        return [self._start(resource_class) for _ in range(count)]

    def drain(self, node: str) -> None:
        """SIGTERM to the node's main process (warm shutdown); a node already gone is a no-op."""
        state = self._read(node)
        if state is None or not self._alive(state):
            return
        if not state.get("draining"):
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

    def _start(self, resource_class: str) -> str:
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
                slots=self.slots,
            ),
        }
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
