"""The node registry: every worker node, its capacity, its running jobs, its heartbeat.

Keys: ``offload:nodes`` and ``offload:node:<name>[:running|:owners|:recovering]``, described in
:mod:`offload.broker.keys`. A job's entries in a node's running set and owners hash are written
by the job's own transitions (:mod:`offload.broker.records`), never here, so the registry and
the job records cannot disagree.

A node whose heartbeat (Redis server time) is older than ``lost_after`` seconds is *lost*.
That alone moves no job: the jobs it ran come back when their leases expire
(:mod:`offload.broker.sweeper`), which also forgets the node once it holds none.

A node whose Docker engine does not answer says so (``engine_down_at``, written by its
heartbeat thread, :mod:`offload.worker.engine`): its state is ``engine down`` and it takes no
work until the engine answers again; the autoscaler treats one down longer than ``lost_after``
as lost (:func:`offload.autoscaler.loop.join_nodes`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace

import redis

from offload.broker import keys, scripts
from offload.broker.room import Room, Share

NODES = keys.NODES

# Refresh the heartbeat only while the node is registered: a node that was declared lost
# (and deregistered) must register again rather than leave a hash with only a heartbeat.
# Heartbeats are Redis server time: whether a node is lost never depends on machine clocks.
_HEARTBEAT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'heartbeat_at', tonumber(t[1]) + tonumber(t[2]) / 1000000)
return 1
"""

# Mark the engine down (keeping the first time it was seen down) or up, only while registered.
_ENGINE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'engine_down_at', '0')
elseif (tonumber(redis.call('HGET', KEYS[1], 'engine_down_at') or '0') or 0) == 0 then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'engine_down_at', tonumber(t[1]) + tonumber(t[2]) / 1000000)
end
return 1
"""

ENGINE_DOWN = "engine down"  # a node's state while its engine does not answer

# Forget a job's running-on-node entry only while it is still the one seen (pid:attempt).
_DROP_STALE = """
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('SREM', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


running_key = keys.node_running  # kept for callers outside broker/ until they use keys


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
    state: str  # "up" | "draining" | "engine down" | "lost"
    engine_down_at: float = 0.0  # when its engine stopped answering (0: it answers)
    machine: str = ""  # whose room it shares (offload.broker.room); "" = its own name
    used: Share = field(default_factory=Share)  # what its running jobs hold of the room
    # what every node of its machine holds (itself included)
    machine_used: Share = field(default_factory=Share)

    @property
    def allocatable(self) -> Share:
        return Share(self.cpus, self.memory, self.gpus)

    @property
    def free(self) -> Share:
        """Room a new job could take on it now (its machine's other nodes count)."""
        return self.allocatable - self.machine_used

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
    def __init__(self, client: redis.Redis, *, lost_after: float) -> None:
        self.r = client
        self.lost_after = lost_after
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._release = client.register_script(scripts.RELEASE_LOCK)
        self._drop_stale = client.register_script(_DROP_STALE)
        self._engine = client.register_script(_ENGINE)

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
        machine: str = "",
    ) -> None:
        """Register (again) ``name``.

        The node's running set is left alone: it belongs to the jobs' records. Jobs that an
        earlier run of this node left there are recovered by the process reaper (their pool
        process is gone).
        """
        now = str(self.server_time())
        pipe = self.r.pipeline()
        pipe.sadd(NODES, name)
        pipe.delete(keys.node(name))
        pipe.hset(
            keys.node(name),
            mapping={
                "name": name,
                "provider": provider,
                "classes": ",".join(classes),
                "slots": slots,
                "cpus": cpus,
                "memory": memory,
                "gpus": gpus,
                "machine": machine or name,
                "started_at": now,
                "heartbeat_at": now,
                "draining": "0",
                "engine_down_at": "0",
            },
        )
        pipe.execute()

    def cluster_id(self) -> str:
        """This cluster's id, made by the first node that asks."""
        self.r.set(keys.CLUSTER, uuid.uuid4().hex, nx=True)
        return str(self.r.get(keys.CLUSTER))

    def server_time(self) -> float:
        """Redis server time: the one clock that heartbeats and leases are judged on."""
        sec, usec = self.r.time()
        return float(sec) + usec / 1e6

    def heartbeat(self, name: str) -> bool:
        """Refresh the node's heartbeat; False when it is not registered (any more)."""
        return bool(self._heartbeat(keys=[keys.node(name)], args=[]))

    def set_draining(self, name: str, draining: bool = True) -> None:
        self.r.hset(keys.node(name), "draining", "1" if draining else "0")

    def set_engine(self, name: str, up: bool) -> bool:
        """Say whether the node's engine answers; False when the node is not registered."""
        return bool(self._engine(keys=[keys.node(name)], args=["1" if up else "0"]))

    def is_draining(self, name: str) -> bool:
        return bool(self.r.hget(keys.node(name), "draining") == "1")

    def deregister(self, name: str) -> None:
        pipe = self.r.pipeline()
        pipe.srem(NODES, name)
        pipe.delete(
            keys.node(name),
            keys.node_running(name),
            keys.node_owners(name),
            keys.node_objects(name),  # its cache's object index (locality routing)
        )
        pipe.execute()

    def drop_stale(self, name: str, job_id: str, owner: Owner) -> bool:
        """Remove an entry the job's record no longer backs (left by a crash), if unchanged."""
        return bool(
            self._drop_stale(
                keys=[keys.node_running(name), keys.node_owners(name)],
                args=[job_id, f"{owner.pid}:{owner.attempt}"],
            )
        )

    def runs(self, name: str, job_id: str) -> bool:
        """Whether ``job_id`` is in the node's running set."""
        return bool(self.r.sismember(keys.node_running(name), job_id))

    def owners(self, name: str) -> dict[str, Owner]:
        """Each running job's owner (pool process and attempt) on the node."""
        out = {}
        for job_id, value in self.r.hgetall(keys.node_owners(name)).items():
            pid, _, attempt = value.partition(":")
            out[job_id] = Owner(int(pid or 0), int(attempt or 0))
        return out

    def owner(self, name: str, job_id: str) -> Owner | None:
        value = self.r.hget(keys.node_owners(name), job_id)
        if not value:
            return None
        pid, _, attempt = value.partition(":")
        return Owner(int(pid or 0), int(attempt or 0))

    def alive(self, name: str, now: float | None = None) -> bool:
        """Registered, with a heartbeat no older than ``lost_after``."""
        beat = self.r.hget(keys.node(name), "heartbeat_at")
        if not beat:
            return False
        now = self.server_time() if now is None else now
        return now - float(beat) <= self.lost_after

    # -- recovery of lost nodes ------------------------------------------------------------

    def claim_recovery(self, name: str, ttl: int = 60) -> str | None:
        """Take the lock to recover a lost node; returns its token, or None if held."""
        token = uuid.uuid4().hex
        if self.r.set(keys.node_recovering(name), token, nx=True, ex=ttl):
            return token
        return None

    def release_recovery(self, name: str, token: str) -> None:
        self._release(keys=[keys.node_recovering(name)], args=[token])

    # -- reads -----------------------------------------------------------------------------

    def get(self, name: str, now: float | None = None) -> NodeInfo | None:
        h = self.r.hgetall(keys.node(name))
        if not h:
            return None
        h.setdefault("name", name)
        running = tuple(sorted(self.r.smembers(keys.node_running(name))))
        return self._parse(h, running, self.server_time() if now is None else now)

    def nodes(self, now: float | None = None) -> list[NodeInfo]:
        """Every registered node, with what its jobs hold of its machine's room."""
        now = self.server_time() if now is None else now
        out = []
        for name in sorted(self.r.smembers(NODES)):
            info = self.get(name, now)
            if info is None:
                self.r.srem(NODES, name)
            else:
                out.append(info)
        rooms = Room(self.r)
        per_machine = {m: rooms.used_by_node(m) for m in {n.machine for n in out}}
        return [
            replace(
                n,
                used=per_machine[n.machine].get(n.name, Share()),
                machine_used=sum(per_machine[n.machine].values(), Share()),
            )
            for n in out
        ]

    def lost(self, now: float | None = None) -> list[NodeInfo]:
        return [n for n in self.nodes(now) if n.state == "lost"]

    def _parse(self, h: dict[str, str], running: tuple[str, ...], now: float) -> NodeInfo:
        heartbeat = float(h.get("heartbeat_at") or 0)
        draining = h.get("draining") == "1"
        engine_down_at = float(h.get("engine_down_at") or 0)
        if now - heartbeat > self.lost_after:
            state = "lost"
        elif engine_down_at:
            state = ENGINE_DOWN
        else:
            state = "draining" if draining else "up"
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
            machine=h.get("machine") or h["name"],
            engine_down_at=engine_down_at,
        )
