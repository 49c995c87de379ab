"""``offload down``: drain the embedded platform, wait for its jobs (or hand them back), stop."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis

from offload.config import Settings
from offload.errors import OffloadError

if TYPE_CHECKING:
    from offload.broker.core import Broker
    from offload.broker.nodes import NodeRegistry
    from offload.broker.records import JobRecords

from offload.embedded import Service, _alive, _pid_file, running_pid

Progress = Callable[[dict[str, list[str]]], None]


def down(
    settings: Settings,
    *,
    timeout: float | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> list[Service]:
    """Stop what ``up`` started, Redis last (its AOF keeps the queue for the next ``up``).

    Flower, the scheduler and the autoscaler stop first. The workers (the embedded one and
    the autoscaler's local nodes) then drain: they take no new job and finish their running
    ones, for as long as that takes or ``timeout`` seconds. With ``force``, or once the
    timeout has passed, they are killed and their running jobs handed back: each goes back to
    ``queued`` (its retry budget untouched), its container is removed, and it runs again
    after the next ``up``.
    """
    first = ("flower", "scheduler", "autoscaler")
    stopped = [s for name in first if (s := _stop(settings, name, 30))]
    workers = _drain_workers(settings)
    deadline = 0.0 if force else None if timeout is None else time.monotonic() + timeout
    left = _wait_drained(settings, workers, deadline, progress)
    for pid in left.values():
        _kill_group(pid)
    stopped += [
        Service("worker", "killed" if name in left else "stopped", f"node {name}, pid {pid}")
        for name, pid in workers.items()
    ]
    if left:
        stopped += _hand_back(settings, list(left))
    _pid_file(settings, "worker").unlink(missing_ok=True)
    _forget_local_nodes(settings)
    if s := _stop(settings, "redis", 60):
        stopped.append(s)
    return stopped


def _stop(settings: Settings, name: str, grace: float) -> Service | None:
    """SIGTERM a service ``up`` started; its process group is killed after ``grace`` s."""
    pid = running_pid(settings, name)
    if pid is None:
        _pid_file(settings, name).unlink(missing_ok=True)
        return None
    os.kill(pid, signal.SIGTERM)
    if not _gone([pid], grace):
        _kill_group(pid)
    _pid_file(settings, name).unlink(missing_ok=True)
    return Service(name, "stopped", f"pid {pid}")


def _drain_workers(settings: Settings) -> dict[str, int]:
    """SIGTERM every worker node of this machine (a warm shutdown); node name -> pid."""
    from offload.autoscaler.local import LocalProvider

    workers: dict[str, int] = {}
    provider = LocalProvider(settings)
    for node in provider.nodes():
        pid = provider.pid(node.name)
        if pid is not None:
            provider.drain(node.name)
            workers[node.name] = pid
    pid = running_pid(settings, "worker")
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        workers[settings.node_name] = pid
    return workers


def _wait_drained(
    settings: Settings, workers: dict[str, int], deadline: float | None, progress: Progress | None
) -> dict[str, int]:
    """Wait for the workers to exit, telling ``progress`` what they still run; the ones left
    at ``deadline`` (None: wait until all are gone)."""
    broker = _broker(settings)
    records, registry = broker.records, broker.nodes
    shown: dict[str, list[str]] | None = None
    while True:
        left = {name: pid for name, pid in workers.items() if _alive(pid)}
        if not left or (deadline is not None and time.monotonic() >= deadline):
            return left
        if progress is not None:
            running = _running_jobs(registry, records, list(left))
            if running != shown:
                progress(running)
                shown = running
        time.sleep(0.5)


def _running_jobs(
    registry: NodeRegistry, records: JobRecords, nodes: list[str]
) -> dict[str, list[str]]:
    """Each node's running jobs, as "<job id> <name>"."""
    out: dict[str, list[str]] = {}
    try:
        for name in nodes:
            info = registry.get(name)
            jobs = sorted(info.running) if info is not None else []
            out[name] = [f"{job_id} {_job_name(records, job_id)}" for job_id in jobs]
    except (OffloadError, redis.RedisError):  # Redis is gone: nothing to show
        return {name: [] for name in nodes}
    return out


def _hand_back(settings: Settings, nodes: list[str]) -> list[Service]:
    """The running jobs of killed ``nodes`` back to the queue, their containers removed."""
    from offload.broker.recovery import recover_node
    from offload.worker.docker_runtime import DockerRuntime, connect

    message = "stopped by offload down --force"
    try:
        broker = _broker(settings)
        records, registry, app = broker.records, broker.nodes, broker.app
        handed = [
            j for n in nodes for j in recover_node(registry, records, app, n, message=message)
        ]
    except (OffloadError, redis.RedisError) as exc:
        lost = "the sweeper requeues them once their node counts as lost"
        return [Service("jobs", "not handed back", f"{exc}; {lost}")]
    out: list[Service] = []
    runtime: DockerRuntime | None = None
    for job_id in handed:
        detail = f"{job_id} {_job_name(records, job_id)}, queued for the next up"
        try:
            runtime = runtime or DockerRuntime(connect())
            runtime.remove_job_containers(job_id)
        except Exception as exc:  # its next attempt removes it before it starts
            detail += f"; its container is not removed yet: {exc}"
        out.append(Service("job", "handed back", detail))
    return out


def _broker(settings: Settings) -> Broker:
    from offload.broker.core import Broker

    return Broker(settings)


def _job_name(records: JobRecords, job_id: str) -> str:
    try:
        return records.get(job_id).spec.display_name()
    except OffloadError:
        return "?"


def _forget_local_nodes(settings: Settings) -> None:
    """Let the local provider drop the state of its nodes that exited."""
    from offload.autoscaler.local import LocalProvider

    LocalProvider(settings).nodes()


def _gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _kill_group(pid: int) -> None:
    """SIGKILL the process group ``up`` started (a worker and its pool), and wait for it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    _gone([pid], 10)
