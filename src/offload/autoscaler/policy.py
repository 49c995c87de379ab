"""The scaling policy: a pure function of work, nodes, time and its own memory.

``decide(work, nodes, now, limits, memory)`` does no I/O and reads no clock; the loop
(:mod:`offload.autoscaler.loop`) gathers the inputs and acts on the :class:`Decision`.

Per resource class:

* **work** = ready messages + unacknowledged ones. Celery runs with late acks, so a message
  stays in kombu's ``unacked`` hash until its job has finished: unacked already includes the
  running jobs. ``running`` (from the node registry) is read too and the larger of the two
  counts, so early acks or a restored message never hide a running job
  (:attr:`ClassWork.total`). Jobs running on *draining* nodes are subtracted: those nodes
  finish them and leave, so they need no new capacity.
* **capacity**: nodes ``starting`` or ``up`` count; ``draining`` and ``lost`` ones do not. A
  node the provider started that has not registered yet is ``starting`` and counts, so a
  pending node is never doubled by the next tick.
* **target** = clamp(ceil(work / jobs per node), min, max), jobs per node being the class's
  ``jobs_per_node`` or else its nodes' slots (remembered from the last node seen, 1 before
  any). GPU classes (``ClassLimits.gpu``) have a floor of 0 while they have no work.
* **up** at once, from zero too, at most ``max_step`` nodes a tick.
* **down** only once the target stayed below the current count for the whole idle window,
  and then to the largest target seen within that window (a stabilisation window, as in
  Kubernetes' HPA): an oscillating input never scales down, so it never flaps. At most
  ``max_step`` nodes a tick, idle nodes only (no running job), newest first; a busy node is
  never drained, and a node the provider does not manage (``managed=False``) never either.
  Above ``max_nodes`` (a lowered limit) idle nodes drain without waiting.
* **headroom**: a provider with a limit of its own (the local provider: the machine's CPUs
  and memory) says how many more nodes of a class fit; the policy starts no more than that
  and the class's reason says why (``at machine capacity: …``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from offload.broker.depths import ClassWork

NodeState = Literal["starting", "up", "draining", "lost"]
CAPACITY_STATES = frozenset({"starting", "up"})


@dataclass(frozen=True)
class NodeView:
    """One node as the policy sees it (the registry joined with the provider)."""

    name: str
    resource_class: str
    slots: int  # 0 while unknown (a node still starting)
    running: int  # jobs it runs now
    state: NodeState
    since: float  # when it was started / registered
    managed: bool = True  # started by the provider, so the autoscaler may drain it


@dataclass(frozen=True)
class Headroom:
    """How many more nodes of a class a provider can start now, and what limits it."""

    nodes: int
    reason: str  # e.g. "at machine capacity: 2 of 2 CPUs / 4.0 of 8.0 GiB in use"


@dataclass(frozen=True)
class ClassLimits:
    """What the user allows for one class."""

    min_nodes: int = 0
    max_nodes: int = 4
    jobs_per_node: int | None = None  # None: the nodes' own slots
    max_step: int = 4
    idle_window: float = 60.0
    gpu: bool = False  # nodes only while the class has work (floor 0 when idle)

    def __post_init__(self) -> None:
        if not 0 <= self.min_nodes <= self.max_nodes:
            raise ValueError(f"need 0 <= min_nodes <= max_nodes, got {self}")
        if self.max_step < 1:
            raise ValueError(f"max_step must be >= 1, got {self.max_step}")
        if self.jobs_per_node is not None and self.jobs_per_node < 1:
            raise ValueError(f"jobs_per_node must be >= 1, got {self.jobs_per_node}")
        if self.idle_window < 0:
            raise ValueError(f"idle_window must be >= 0, got {self.idle_window}")


@dataclass(frozen=True)
class Limits:
    """Limits per class, and the ones for a class not named."""

    per_class: Mapping[str, ClassLimits] = field(default_factory=dict)
    default: ClassLimits = ClassLimits()

    def for_class(self, name: str) -> ClassLimits:
        return self.per_class.get(name, self.default)


@dataclass(frozen=True)
class ClassMemory:
    """What the policy remembers of one class between ticks."""

    first_seen: float  # first tick that saw the class (the window starts no earlier)
    history: tuple[tuple[float, int], ...] = ()  # (time, target) within the idle window
    slots: int = 0  # slots per node last seen for the class, 0 unknown


@dataclass(frozen=True)
class PolicyMemory:
    classes: Mapping[str, ClassMemory] = field(default_factory=dict)


@dataclass(frozen=True)
class ClassDecision:
    desired: int  # nodes the class should have
    start: int  # nodes to start now
    drain: tuple[str, ...]  # nodes to drain now
    reason: str
    work: int  # effective work (jobs)
    up: int
    starting: int


@dataclass(frozen=True)
class Decision:
    classes: Mapping[str, ClassDecision]
    memory: PolicyMemory

    @property
    def desired(self) -> dict[str, int]:
        return {c: d.desired for c, d in self.classes.items()}

    @property
    def start(self) -> dict[str, int]:
        return {c: d.start for c, d in self.classes.items() if d.start}

    @property
    def drain(self) -> list[str]:
        return [n for d in self.classes.values() for n in d.drain]

    @property
    def reasons(self) -> dict[str, str]:
        return {c: d.reason for c, d in self.classes.items()}


def decide(
    work: Mapping[str, ClassWork],
    nodes: Sequence[NodeView],
    now: float,
    limits: Limits,
    memory: PolicyMemory,
    headroom: Mapping[str, Headroom] | None = None,
) -> Decision:
    """Desired nodes per class, nodes to start and to drain, and why. Pure.

    ``headroom`` caps the nodes started per class (a class not in it: no cap).
    """
    room = headroom or {}
    names = sorted(set(work) | set(limits.per_class) | {n.resource_class for n in nodes})
    decisions: dict[str, ClassDecision] = {}
    remembered = dict(memory.classes)
    for name in names:
        own = [n for n in nodes if n.resource_class == name]
        decisions[name], remembered[name] = _decide_class(
            work.get(name, ClassWork()),
            own,
            now,
            limits.for_class(name),
            memory.classes.get(name),
            room.get(name),
        )
    return Decision(classes=decisions, memory=PolicyMemory(classes=remembered))


def _decide_class(
    work: ClassWork,
    nodes: list[NodeView],
    now: float,
    lim: ClassLimits,
    prev: ClassMemory | None,
    room: Headroom | None = None,
) -> tuple[ClassDecision, ClassMemory]:
    if prev is None or now < prev.first_seen:
        prev = ClassMemory(first_seen=now)
    active = [n for n in nodes if n.state in CAPACITY_STATES]
    up = sum(1 for n in active if n.state == "up")
    starting = len(active) - up
    current = len(active)
    leaving = sum(n.running for n in nodes if n.state == "draining")
    jobs = max(0, work.total - leaving)

    seen = [n.slots for n in nodes if n.slots > 0 and n.state != "lost"]
    slots = max(seen) if seen else prev.slots
    per_node = lim.jobs_per_node or slots or 1
    need = math.ceil(jobs / per_node)
    floor = 0 if lim.gpu and jobs == 0 else lim.min_nodes
    target = min(max(need, floor), lim.max_nodes)

    window = lim.idle_window
    kept = tuple((t, v) for t, v in prev.history if now - window <= t < now)
    history = (*kept, (now, target))
    low_since = _low_since(history, current, prev.first_seen)

    if target >= current:
        desired = target
    elif now - low_since >= window:
        desired = min(max(v for _, v in history), current)
    else:
        desired = current
    desired = min(max(desired, floor), lim.max_nodes)

    wanted = min(desired - current, lim.max_step) if desired > current else 0
    start = min(wanted, max(0, room.nodes)) if room is not None else wanted
    drain: tuple[str, ...] = ()
    if desired < current:
        idle = [n for n in active if n.running == 0 and n.managed]
        idle.sort(key=lambda n: (-n.since, n.name))
        drain = tuple(n.name for n in idle[: min(current - desired, lim.max_step)])

    if start:
        more = f" (step {lim.max_step})" if desired - current > wanted else ""
        capped = f" of {wanted} ({room.reason})" if room is not None and start < wanted else ""
        reason = (
            f"scaling up: {jobs} jobs, {per_node} slots/node → {need} nodes, "
            f"max {lim.max_nodes}; starting {start}{capped}{more}"
        )
    elif wanted and room is not None:
        reason = f"{room.reason}; {jobs} jobs need {need} nodes, {current} up or starting"
    elif drain:
        reason = f"scaling down: {current} → {desired} nodes; draining {', '.join(drain)}"
    elif desired < current and any(n.managed and n.running for n in active):
        reason = f"scaling down to {desired} nodes: waiting for busy nodes to finish"
    elif desired < current:
        reason = f"scaling down to {desired} nodes: no node the autoscaler started is idle"
    elif target < current:
        what = "idle" if jobs == 0 else f"under capacity ({jobs} jobs need {target} nodes)"
        reason = f"{what} for {now - low_since:.0f}s of {window:g}s"
    elif jobs and lim.max_nodes == 0:
        reason = "no node of its class: max_nodes is 0"
    elif jobs and need > lim.max_nodes:
        reason = f"at max: {jobs} jobs need {need} nodes, max {lim.max_nodes}"
        if up == 0:
            reason = f"no node of its class yet ({starting} starting); {reason}"
    elif jobs and up == 0:
        reason = f"no node of its class yet: {starting} starting"
    elif jobs:
        reason = f"steady: {jobs} jobs on {current} nodes, {per_node} slots/node"
    else:
        reason = f"idle: {current} nodes, min {floor}"

    mem = replace(prev, history=history, slots=slots)
    return ClassDecision(desired, start, drain, reason, jobs, up, starting), mem


def _low_since(history: tuple[tuple[float, int], ...], current: int, first_seen: float) -> float:
    """When the present run of targets below ``current`` began (``first_seen`` if it spans all)."""
    since = first_seen
    for i, (_t, v) in enumerate(history):
        if v >= current:
            since = history[i + 1][0] if i + 1 < len(history) else history[-1][0]
    return since
