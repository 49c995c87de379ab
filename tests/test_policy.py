"""The pure scaling policy: a table of cases, a flapping simulation, and properties."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offload.autoscaler.policy import (
    ClassLimits,
    ClassWork,
    Decision,
    Headroom,
    Limits,
    NodeView,
    PolicyMemory,
    decide,
)

CS, GPU = "cpu-small", "gpu-large"


def up(name: str, since: float = 0.0, running: int = 0, slots: int = 2, cls: str = CS) -> NodeView:
    return NodeView(name, cls, slots, running, "up", since)


def starting(name: str, since: float = 0.0, cls: str = CS) -> NodeView:
    return NodeView(name, cls, 0, 0, "starting", since)


def limits(**kw: object) -> Limits:
    gpu = ClassLimits(max_nodes=2, gpu=True, idle_window=kw.get("idle_window", 60.0))  # type: ignore[arg-type]
    return Limits(per_class={CS: ClassLimits(**kw), GPU: gpu})  # type: ignore[arg-type]


Step = tuple[float, dict[str, int | ClassWork], list[NodeView]]


def run(steps: list[Step], lim: Limits) -> Decision:
    memory = PolicyMemory()
    decision = None
    for now, work, nodes in steps:
        w = {c: v if isinstance(v, ClassWork) else ClassWork(ready=v) for c, v in work.items()}
        decision = decide(w, nodes, now, lim, memory)
        memory = decision.memory
    assert decision is not None
    return decision


def hold(t0: int, t1: int, work: dict[str, int | ClassWork], nodes: list[NodeView]) -> list[Step]:
    """A tick a second from t0 to t1 inclusive with the same inputs."""
    return [(float(t), work, nodes) for t in range(t0, t1 + 1)]


FOUR = [up("a", 1), up("b", 2), up("c", 3), up("d", 4)]


@dataclass
class Case:
    id: str
    steps: list[Step]
    lim: Limits
    desired: int
    start: int = 0
    drain: list[str] = field(default_factory=list)
    reason: str = ""
    cls: str = CS


CASES = [
    Case(
        "zero to burst",
        [(0, {CS: 20}, [])],
        limits(jobs_per_node=2, max_nodes=4),
        desired=4,
        start=4,
        reason="scaling up: 20 jobs, 2 slots/node → 10 nodes, max 4; starting 4",
    ),
    Case(
        "zero to burst, step limited",
        [(0, {CS: 20}, [])],
        limits(jobs_per_node=2, max_nodes=10, max_step=3),
        desired=10,
        start=3,
        reason="starting 3 (step 3)",
    ),
    Case(
        "step continues while nodes start",
        [(0, {CS: 20}, []), (1, {CS: 20}, [starting("s1"), starting("s2"), starting("s3")])],
        limits(jobs_per_node=2, max_nodes=10, max_step=3),
        desired=10,
        start=3,
    ),
    Case(
        "starting nodes are not doubled",
        [(0, {CS: 4}, []), (1, {CS: 4}, [starting("s1"), starting("s2")])],
        limits(jobs_per_node=2),
        desired=2,
        start=0,
        reason="no node of its class yet: 2 starting",
    ),
    Case(
        "slots/node come from the nodes",
        [(0, {CS: ClassWork(ready=4, unacked=2, running=2)}, [up("a", running=2)])],
        limits(max_nodes=8),
        desired=3,
        start=2,
        reason="6 jobs, 2 slots/node → 3 nodes",
    ),
    Case(
        "slots remembered for a later burst from zero",
        [(0, {}, [up("a", slots=4)]), (100, {CS: 8}, [])],
        limits(idle_window=10),
        desired=2,
        start=2,
    ),
    Case(
        "running is counted when acks came early",
        [(0, {CS: ClassWork(ready=0, unacked=0, running=4)}, [up("a", running=2)])],
        limits(),
        desired=2,
        start=1,
    ),
    Case(
        "at max",
        [(0, {CS: 20}, FOUR)],
        limits(max_nodes=4),
        desired=4,
        reason="at max: 20 jobs need 10 nodes, max 4",
    ),
    Case(
        "max 0: no node of its class",
        [(0, {CS: 3}, [])],
        limits(max_nodes=0),
        desired=0,
        reason="no node of its class: max_nodes is 0",
    ),
    Case(
        "burst to idle, before the window",
        [(0, {CS: 8}, FOUR), *hold(1, 30, {CS: 0}, FOUR)],
        limits(idle_window=60),
        desired=4,
        reason="idle for 29s of 60s",
    ),
    Case(
        "burst to idle, after the window: idle nodes drain, newest first",
        [(0, {CS: 8}, FOUR), *hold(1, 62, {CS: 0}, FOUR)],
        limits(idle_window=60, max_step=3),
        desired=0,
        drain=["d", "c", "b"],
        reason="scaling down: 4 → 0 nodes; draining d, c, b",
    ),
    Case(
        "less work than capacity for the window: down to what the window needed",
        [(0, {CS: 8}, FOUR), *hold(1, 20, {CS: 4}, FOUR), *hold(21, 70, {CS: 1}, FOUR)],
        limits(idle_window=60),
        desired=2,
        drain=["d", "c"],
    ),
    Case(
        "min nodes kept",
        [(0, {CS: 8}, FOUR), *hold(1, 62, {CS: 0}, FOUR)],
        limits(idle_window=60, min_nodes=1),
        desired=1,
        drain=["d", "c", "b"],
    ),
    Case(
        "min nodes started with no work",
        [(0, {}, [])],
        limits(min_nodes=2),
        desired=2,
        start=2,
        reason="scaling up: 0 jobs",
    ),
    Case(
        "busy nodes are never drained",
        [
            *hold(
                0,
                70,
                {CS: ClassWork(unacked=2)},
                [up("a", 1, running=1), up("b", 2), up("c", 3, running=1), up("d", 4)],
            )
        ],
        limits(idle_window=60),
        desired=1,
        drain=["d", "b"],
    ),
    Case(
        "all busy: wait",
        [*hold(0, 70, {CS: ClassWork(unacked=2)}, [up("a", 1, running=1), up("b", 2, running=1)])],
        limits(idle_window=60, jobs_per_node=4),
        desired=1,
        reason="waiting for busy nodes to finish",
    ),
    Case(
        "a node not started by the autoscaler is never drained",
        [*hold(0, 70, {}, [NodeView("by-hand", CS, 2, 0, "up", 0, managed=False)])],
        limits(idle_window=60),
        desired=0,
        reason="no node the autoscaler started is idle",
    ),
    Case(
        "draining and lost nodes are no capacity; draining nodes' jobs need none",
        [
            (
                0,
                {CS: ClassWork(ready=2, unacked=2, running=2)},
                [
                    NodeView("x", CS, 2, 1, "draining", 0),
                    NodeView("y", CS, 2, 1, "draining", 0),
                    NodeView("z", CS, 2, 0, "lost", 0),
                ],
            )
        ],
        limits(),
        desired=1,
        start=1,
    ),
    Case(
        "above a lowered max: idle nodes drain at once",
        [(0, {}, FOUR)],
        limits(max_nodes=2),
        desired=2,
        drain=["d", "c"],
    ),
    Case(
        "GPU work only: GPU nodes start, CPU classes stay at their minimum",
        [(0, {CS: 0, GPU: 3}, [])],
        limits(),
        desired=2,
        start=2,
        cls=GPU,
        reason="3 jobs, 1 slots/node → 3 nodes, max 2",
    ),
    Case(
        "GPU work only: the CPU class does nothing",
        [(0, {CS: 0, GPU: 3}, [])],
        limits(),
        desired=0,
        cls=CS,
        reason="idle: 0 nodes, min 0",
    ),
    Case(
        "GPU class idle: down to zero after the window, whatever its min",
        [
            (0, {GPU: 1}, [up("g", cls=GPU, slots=1)]),
            *hold(1, 62, {GPU: 0}, [up("g", cls=GPU, slots=1)]),
        ],
        Limits(per_class={GPU: ClassLimits(min_nodes=1, gpu=True)}),
        desired=0,
        drain=["g"],
        cls=GPU,
    ),
    Case(
        "GPU class with work keeps its min",
        [*hold(0, 62, {GPU: 1}, [up("g", cls=GPU, slots=1), up("h", 5, cls=GPU, slots=1)])],
        Limits(per_class={GPU: ClassLimits(min_nodes=2, gpu=True)}),
        desired=2,
        cls=GPU,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_table(case: Case) -> None:
    d = run(case.steps, case.lim)
    got = d.classes[case.cls]
    assert (got.desired, got.start, list(got.drain)) == (case.desired, case.start, case.drain), (
        got.reason
    )
    assert case.reason in got.reason


def test_decision_views() -> None:
    d = run([(0, {CS: 20, GPU: 1}, [])], limits(jobs_per_node=2))
    assert d.start == {CS: 4, GPU: 1}
    assert d.desired == {CS: 4, GPU: 1}
    assert d.drain == []
    assert set(d.reasons) == {CS, GPU}


def test_headroom_caps_the_nodes_started_and_says_why() -> None:
    full = "at machine capacity: 2 CPUs / 4 GiB in use (this machine: 2 CPUs / 8 GiB)"
    lim = limits(jobs_per_node=1, max_nodes=4)
    some = decide({CS: ClassWork(ready=10)}, [], 0.0, lim, PolicyMemory(), {CS: Headroom(1, full)})
    got = some.classes[CS]
    assert (got.desired, got.start) == (4, 1)
    assert got.reason == (
        f"scaling up: 10 jobs, 1 slots/node → 10 nodes, max 4; starting 1 of 4 ({full})"
    )
    nodes = [starting("a")]
    none = decide({CS: ClassWork(ready=10)}, nodes, 1.0, lim, some.memory, {CS: Headroom(0, full)})
    got = none.classes[CS]
    assert (got.desired, got.start) == (4, 0)
    assert got.reason == f"{full}; 10 jobs need 10 nodes, 1 up or starting"
    # room enough: no cap, no mention; a class not in the headroom is not capped
    roomy = decide({CS: ClassWork(ready=2)}, [], 0.0, lim, PolicyMemory(), {CS: Headroom(9, full)})
    assert roomy.classes[CS].start == 2 and "capacity" not in roomy.classes[CS].reason
    other = decide({GPU: ClassWork(ready=1)}, [], 0.0, lim, PolicyMemory(), {CS: Headroom(0, full)})
    assert other.classes[GPU].start == 1


def test_pure() -> None:
    work = {CS: ClassWork(ready=5)}
    mem = run([(0, {CS: 1}, FOUR)], limits()).memory
    a = decide(work, FOUR, 10.0, limits(), mem)
    b = decide(work, FOUR, 10.0, limits(), mem)
    assert a == b


# -- a small simulated world: nodes take 3 s to start, drained nodes leave -----------------


def simulate(work_at: dict[int, int] | None, seconds: int, lim: Limits, pattern=None):  # type: ignore[no-untyped-def]
    """Tick each second; returns the list of (t, started, drained) actions."""
    memory = PolicyMemory()
    nodes: dict[str, tuple[float, str]] = {}  # name -> (created, state)
    actions = []
    counter = 0
    for t in range(seconds):
        jobs = pattern(t) if pattern else (work_at or {}).get(t, 0)
        views = [
            NodeView(n, CS, 2 if now_state == "up" else 0, 0, now_state, created)  # type: ignore[arg-type]
            for n, (created, now_state) in nodes.items()
        ]
        d = decide({CS: ClassWork(ready=jobs)}, views, float(t), lim, memory)
        memory = d.memory
        started = d.start.get(CS, 0)
        for _ in range(started):
            counter += 1
            nodes[f"n{counter}"] = (float(t), "starting")
        for name in d.drain:
            del nodes[name]
        if started or d.drain:
            actions.append((t, started, tuple(d.drain)))
        for name, (created, state) in list(nodes.items()):
            if state == "starting" and t - created >= 3:
                nodes[name] = (created, "up")
    return actions, nodes


def test_flapping_input_scales_once() -> None:
    # 8 jobs one second, none the next, for five minutes: up once, never down
    lim = limits(idle_window=60, jobs_per_node=2)
    actions, nodes = simulate(None, 300, lim, pattern=lambda t: 8 if t % 2 == 0 else 0)
    assert actions == [(0, 4, ())]
    assert len(nodes) == 4


def test_slow_oscillation_within_window_does_not_flap() -> None:
    # bursts every 40 s (shorter than the 60 s window): nodes stay
    lim = limits(idle_window=60, jobs_per_node=2)
    actions, _ = simulate(None, 400, lim, pattern=lambda t: 6 if t % 40 < 5 else 0)
    assert actions == [(0, 3, ())]


def test_burst_then_idle_drains_back_to_min_after_window() -> None:
    lim = limits(idle_window=30, jobs_per_node=2, min_nodes=1, max_step=2)
    actions, nodes = simulate(None, 120, lim, pattern=lambda t: 8 if t < 10 else 0)
    ups = [a for a in actions if a[1]]
    downs = [a for a in actions if a[2]]
    assert ups == [(0, 2, ()), (1, 2, ())]  # step 2: two ticks to reach 4
    assert [t for t, _, _ in downs] == [40, 41]  # last work at 9, window 30 → t 40
    assert sum(len(d) for _, _, d in downs) == 3
    assert len(nodes) == 1


# -- properties ----------------------------------------------------------------------------

STATES = ["starting", "up", "draining", "lost"]

node_st = st.builds(
    NodeView,
    name=st.text("abcdefgh", min_size=1, max_size=4),
    resource_class=st.sampled_from([CS, GPU]),
    slots=st.integers(0, 8),
    running=st.integers(0, 4),
    state=st.sampled_from(STATES),
    since=st.floats(0, 1000),
    managed=st.booleans(),
)


@st.composite
def class_limits(draw: st.DrawFn) -> ClassLimits:
    lo = draw(st.integers(0, 5))
    return ClassLimits(
        min_nodes=lo,
        max_nodes=draw(st.integers(lo, 12)),
        jobs_per_node=draw(st.none() | st.integers(1, 8)),
        max_step=draw(st.integers(1, 5)),
        idle_window=draw(st.floats(0, 120)),
        gpu=draw(st.booleans()),
    )


work_st = st.dictionaries(
    st.sampled_from([CS, GPU]),
    st.builds(
        ClassWork, ready=st.integers(0, 50), unacked=st.integers(0, 20), running=st.integers(0, 20)
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    history=st.lists(st.tuples(work_st, st.floats(0, 30)), max_size=6),
    work=work_st,
    nodes=st.lists(node_st, max_size=12, unique_by=lambda n: n.name),
    lim_cs=class_limits(),
    lim_gpu=class_limits(),
)
def test_properties(history, work, nodes, lim_cs, lim_gpu) -> None:  # type: ignore[no-untyped-def]
    lim = Limits(per_class={CS: lim_cs, GPU: lim_gpu})
    memory, now = PolicyMemory(), 0.0
    for past_work, dt in history:
        now += dt
        memory = decide(past_work, nodes, now, lim, memory).memory
    now += 1
    d = decide(work, nodes, now, lim, memory)
    by_name = {n.name: n for n in nodes}
    for cls, cd in d.classes.items():
        cl = lim.for_class(cls)
        active = [n for n in nodes if n.resource_class == cls and n.state in ("starting", "up")]
        floor = 0 if cl.gpu and cd.work == 0 else cl.min_nodes
        assert floor <= cd.desired <= cl.max_nodes
        assert 0 <= cd.start <= cl.max_step
        assert len(cd.drain) <= cl.max_step
        assert not (cd.start and cd.drain)
        assert len(active) + cd.start <= cl.max_nodes or cd.start == 0
        assert len(active) - len(cd.drain) >= cd.desired or not cd.drain
        for name in cd.drain:
            n = by_name[name]
            assert n.running == 0, "drained a busy node"
            assert n.state in ("starting", "up") and n.managed and n.resource_class == cls
        if cd.work > 0 and cl.max_nodes > 0:
            per = cl.jobs_per_node or max(
                [
                    n.slots
                    for n in nodes
                    if n.resource_class == cls and n.slots and n.state != "lost"
                ]
                or [0]
            )
            if cl.jobs_per_node or per:
                need = math.ceil(cd.work / (cl.jobs_per_node or per))
                if need > len(active) and len(active) < cl.max_nodes:
                    assert cd.start > 0  # scale-up is immediate
