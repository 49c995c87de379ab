"""The node registry: every worker node, its capacity, its running jobs, its heartbeat.

Keys (also listed in :mod:`offload.broker.keys`)::

    offload:nodes                   SET    names of registered nodes
    offload:node:<name>             HASH   name, provider, classes (comma list), slots, cpus,
                                           memory, gpus, started_at, heartbeat_at, draining ("1")
    offload:node:<name>:running     SET    ids of the jobs this node runs now
    offload:node:<name>:owners      HASH   job id -> "<pid>:<attempt>", the pool process running
                                           that attempt on the node (to tell a live attempt from
                                           one whose process died)
    offload:node:<name>:recovering  STRING lock (SET NX EX) held by whoever redelivers the jobs
                                           of this node once it is lost

A node whose heartbeat is older than ``lost_after`` seconds is *lost*; its running jobs
are redelivered by whoever notices (:func:`offload.worker.recovery.recover_lost`).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import redis

from offload.broker import keys

NODES = f"{keys.PREFIX}:nodes"

# Refresh the heartbeat only while the node is registered: a node that was declared lost
# (and deregistered) must register again rather than leave a hash with only a heartbeat.
_HEARTBEAT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'heartbeat_at', ARGV[1])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def node_key(name: str) -> str:
    return f"{keys.PREFIX}:node:{name}"


def running_key(name: str) -> str:
    return f"{keys.PREFIX}:node:{name}:running"


def owners_key(name: str) -> str:
    return f"{keys.PREFIX}:node:{name}:owners"


def recovering_key(name: str) -> str:
    return f"{keys.PREFIX}:node:{name}:recovering"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    provider: str
    classes: tuple[str, ...]
    slots: int
    cpus: float
    memory: int
    gpus: int
    started_at: float
    heartbeat_at: float
    draining: bool
    running: tuple[str, ...]
    state: str  # "up" | "draining" | "lost"

    @property
    def busy(self) -> bool:
        return bool(self.running)

    @property
    def lost(self) -> bool:
        return self.state == "lost"


@dataclass(frozen=True)
class Owner:
    """The pool process running a job's attempt on a node."""

    pid: int
    attempt: int


class NodeRegistry:
    def __init__(self, client: redis.Redis, *, lost_after: float = 15.0) -> None:
        self.r = client
        self.lost_after = lost_after
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._release = client.register_script(_RELEASE)

    def register(
        self,
        name: str,
        *,
        provider: str,
        classes: list[str],
        slots: int,
        cpus: float,
        memory: int,
        gpus: int,
        fresh: bool = True,
    ) -> None:
        """Register (again) ``name``; ``fresh`` forgets the running jobs of an earlier run."""
        now = str(time.time())
        pipe = self.r.pipeline()
        pipe.sadd(NODES, name)
        pipe.delete(node_key(name))
        if fresh:
            pipe.delete(running_key(name), owners_key(name))
        pipe.hset(
            node_key(name),
            mapping={
                "name": name,
                "provider": provider,
                "classes": ",".join(classes),
                "slots": slots,
                "cpus": cpus,
                "memory": memory,
                "gpus": gpus,
                "started_at": now,
                "heartbeat_at": now,
                "draining": "0",
            },
        )
        pipe.execute()

    def heartbeat(self, name: str) -> bool:
        """Refresh the node's heartbeat; False when it is not registered (any more)."""
        return bool(self._heartbeat(keys=[node_key(name)], args=[str(time.time())]))

    def set_draining(self, name: str, draining: bool = True) -> None:
        self.r.hset(node_key(name), "draining", "1" if draining else "0")

    def is_draining(self, name: str) -> bool:
        return bool(self.r.hget(node_key(name), "draining") == "1")

    def deregister(self, name: str) -> None:
        pipe = self.r.pipeline()
        pipe.srem(NODES, name)
        pipe.delete(node_key(name), running_key(name), owners_key(name))
        pipe.execute()

    def job_started(self, name: str, job_id: str, pid: int = 0, attempt: int = 0) -> None:
        pipe = self.r.pipeline()
        pipe.sadd(running_key(name), job_id)
        pipe.hset(owners_key(name), job_id, f"{pid}:{attempt}")
        pipe.execute()

    def job_finished(self, name: str, job_id: str) -> None:
        pipe = self.r.pipeline()
        pipe.srem(running_key(name), job_id)
        pipe.hdel(owners_key(name), job_id)
        pipe.execute()

    def runs(self, name: str, job_id: str) -> bool:
        """Whether ``job_id`` is in the node's running set."""
        return bool(self.r.sismember(running_key(name), job_id))

    def owners(self, name: str) -> dict[str, Owner]:
        """Each running job's owner (pool process and attempt) on the node."""
        out = {}
        for job_id, value in self.r.hgetall(owners_key(name)).items():
            pid, _, attempt = value.partition(":")
            out[job_id] = Owner(int(pid or 0), int(attempt or 0))
        return out

    def owner(self, name: str, job_id: str) -> Owner | None:
        value = self.r.hget(owners_key(name), job_id)
        if not value:
            return None
        pid, _, attempt = value.partition(":")
        return Owner(int(pid or 0), int(attempt or 0))

    def alive(self, name: str, now: float | None = None) -> bool:
        """Registered, with a heartbeat no older than ``lost_after``."""
        beat = self.r.hget(node_key(name), "heartbeat_at")
        if not beat:
            return False
        now = time.time() if now is None else now
        return now - float(beat) <= self.lost_after

    # -- recovery of lost nodes ------------------------------------------------------------

    def claim_recovery(self, name: str, ttl: int = 60) -> str | None:
        """Take the lock to recover a lost node; returns its token, or None if held."""
        token = uuid.uuid4().hex
        if self.r.set(recovering_key(name), token, nx=True, ex=ttl):
            return token
        return None

    def release_recovery(self, name: str, token: str) -> None:
        self._release(keys=[recovering_key(name)], args=[token])

    # -- reads -----------------------------------------------------------------------------

    def get(self, name: str, now: float | None = None) -> NodeInfo | None:
        h = self.r.hgetall(node_key(name))
        if not h:
            return None
        h.setdefault("name", name)
        running = tuple(sorted(self.r.smembers(running_key(name))))
        return self._parse(h, running, time.time() if now is None else now)

    def nodes(self, now: float | None = None) -> list[NodeInfo]:
        now = time.time() if now is None else now
        out = []
        for name in sorted(self.r.smembers(NODES)):
            info = self.get(name, now)
            if info is None:
                self.r.srem(NODES, name)
            else:
                out.append(info)
        return out

    def lost(self, now: float | None = None) -> list[NodeInfo]:
        return [n for n in self.nodes(now) if n.state == "lost"]

    def _parse(self, h: dict[str, str], running: tuple[str, ...], now: float) -> NodeInfo:
        heartbeat = float(h.get("heartbeat_at") or 0)
        draining = h.get("draining") == "1"
        state = "lost" if now - heartbeat > self.lost_after else ("draining" if draining else "up")
        return NodeInfo(
            name=h["name"],
            provider=h.get("provider", ""),
            classes=tuple(c for c in h.get("classes", "").split(",") if c),
            slots=int(h.get("slots") or 1),
            cpus=float(h.get("cpus") or 0),
            memory=int(h.get("memory") or 0),
            gpus=int(h.get("gpus") or 0),
            started_at=float(h.get("started_at") or 0),
            heartbeat_at=heartbeat,
            draining=draining,
            running=running,
            state=state,
        )
