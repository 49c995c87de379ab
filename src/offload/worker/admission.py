"""Admission by resources: an attempt takes its share of its machine's room before it stages.

A node runs a job only while the CPUs, memory and GPUs of everything its machine runs, plus
the job, fit the machine's allocatable room (:func:`offload.worker.capacity.allocatable`).
The room is kept in Redis (:mod:`offload.broker.room`), one hash per machine taken by one Lua
script, so the pool processes of a node — and every node on the machine — share it
atomically, and ``offload nodes``, routing and the autoscaler read the same figures.

A job that does not fit holds nothing: it polls (``poll`` seconds apart) for at most ``wait``
seconds, checking for a cancel or a lost lease, then goes back to its queue
(:class:`HandBack`, no retry spent) saying what it needs and what is free. Smaller jobs are
admitted meanwhile — until the job has waited ``starvation`` seconds (counted across its
hand-backs): then the room it needs is kept for it, and it gets the next room that frees.

What it took goes on the attempt's stack first, so it is given back last, once the container
is gone, however the attempt ends. When the attempt's process dies instead, the entry dies
with the attempt's ownership of the job (see :mod:`offload.broker.room`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable

from offload.broker.room import Share, Verdict, entry
from offload.broker.status import Reason
from offload.errors import BrokerError
from offload.spec import Resources
from offload.worker.node import HandBack, Node

log = logging.getLogger(__name__)


def need_of(res: Resources) -> Share:
    return Share(res.cpu, res.memory, res.gpus)


def allocatable_of(node: Node) -> Share:
    cap = node.capacity
    return Share(cap.cpus, cap.memory, len(cap.gpus))


def take_room(
    node: Node,
    job_id: str,
    attempt: int,
    res: Resources,
    held: contextlib.ExitStack,
    check: Callable[[], None],
) -> None:
    """Take ``res`` of the node's machine's room for this attempt, or raise :class:`HandBack`
    after the node's admission ``wait``. ``check`` raises to stop waiting (a cancel, a lost
    lease)."""
    room = node.room
    if room is None:
        return
    machine = node.machine or node.name
    need, alloc = need_of(res), allocatable_of(node)
    mine = entry(node.name, os.getpid(), attempt, need)
    policy = node.admission
    handed_back = False

    def release() -> None:
        try:  # a job handed back keeps its waiting note: its wait goes on counting
            room.release(machine, job_id, mine, forget_wait=not handed_back)
        except BrokerError as exc:  # dropped once the attempt no longer owns the job
            log.warning("job %s: room on %s not given back now (%s)", job_id, machine, exc)

    held.callback(release)
    deadline = time.monotonic() + policy.wait
    first = True
    while True:
        verdict = room.admit(
            machine, job_id, mine, need, alloc, starvation=policy.starvation, ttl=policy.ttl
        )
        if verdict.admitted:
            return
        if first:
            log.info("job %s: %s; waiting", job_id, no_room(machine, need, alloc, verdict))
            first = False
        if time.monotonic() >= deadline:
            handed_back = True
            why = no_room(machine, need, alloc, verdict)
            raise HandBack(Reason.NO_ROOM, f"node {node.name}: {why}; queued again")
        check()
        time.sleep(policy.poll)


def no_room(machine: str, need: Share, alloc: Share, verdict: Verdict) -> str:
    """Why a job does not fit now, with the figures."""
    free = alloc - verdict.used
    why = (
        f"no room on machine {machine} for {need.describe()}: {verdict.jobs} job(s) hold "
        f"{verdict.used.describe()} of {alloc.describe()}, {free.describe()} free"
    )
    if verdict.kept_for:
        why += f" (what is left is kept for job {verdict.kept_for}, waiting longest)"
    return why
