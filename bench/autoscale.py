"""Autoscaling with the local provider: a burst at zero nodes versus on a warm node.

Self-contained: starts its own ``redis-server`` (loopback, free port) in a temporary
``OFFLOAD_HOME`` with a fresh cluster key, and runs the autoscaler in this process
(:class:`offload.autoscaler.loop.Autoscaler` ticking in a thread, with
:class:`offload.autoscaler.local.LocalProvider`: worker nodes are processes on this machine).
In one run it measures, for class ``cpu-small`` (max 2 nodes, ``--slots`` slots each):

1. **cold** — the autoscaler runs with min 0 nodes and none is up; a burst of N no-op jobs
   (``offload/base ["true"]``, ``cache=False``) is submitted. Time from the burst (first
   submit call) to the first job running (the first ``running`` event in any job's
   timeline) and to the queue drained (every result in);
2. **scale back** — from the last result until the autoscaler drained the nodes back to
   the minimum (0): the provider lists no node (the processes exited) and the registry is
   empty. Shown next to the configured idle window; the window runs from when the class
   first needed fewer nodes than it had, so the drain may start a little before it has
   passed since the last result;
3. **warm** — the same burst with one node already up: the autoscaler runs with min 1,
   its node registered and idle before the burst (it may add the second node during the
   burst, as in the cold run). Same two times.

It prints the table, the ratios cold / warm, and checks the goal: first job running ≤ 5 s
after the burst at zero nodes with the local provider.

    python bench/autoscale.py                    # 20 jobs, idle window 10 s, tick 0.5 s
    python bench/autoscale.py --jobs 40 --idle-window 5 --json > result.json

Ctrl-C (or SIGTERM) drains the nodes, then stops whatever is left, and redis-server.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from common import (
    Services,
    bench_run,
    finish,
    first_at,
    machine,
    output_options,
    say,
    start_cluster,
    wait_for,
)
from offload.autoscaler.local import LocalProvider
from offload.autoscaler.loop import Autoscaler, recovery_hook
from offload.autoscaler.policy import ClassLimits, Limits
from offload.broker.core import Broker
from offload.broker.nodes import NodeRegistry
from offload.config import Settings
from offload.producer.client import Client

IMAGE = "offload/base"
COMMAND = ["true"]
CPU = 1.0
MEMORY = "512m"
CLASS = "cpu-small"
GOAL_FIRST_RUNNING = 5.0  # seconds, cold, local provider


# -- helpers ---------------------------------------------------------------------------------


class RecordingProvider(LocalProvider):
    """The local provider, noting when the autoscaler started and drained nodes."""

    def __init__(self, settings: Settings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self.started: list[tuple[float, str]] = []
        self.drained: list[tuple[float, str]] = []

    def start_nodes(self, resource_class: str, count: int) -> list[str]:
        t = time.time()
        names = super().start_nodes(resource_class, count)
        self.started += [(t, n) for n in names]
        return names

    def drain(self, node: str) -> None:
        self.drained.append((time.time(), node))
        super().drain(node)


class NodeWatch:
    """Samples the registry in a thread: when each node registered, the most nodes up."""

    def __init__(self, registry: NodeRegistry) -> None:
        self.registry = registry
        self.registered: dict[str, float] = {}  # node -> started_at (registration time)
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="node-watch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                nodes = [n for n in self.registry.nodes() if n.state != "lost"]
                self.most = max(self.most, len(nodes))
                for n in nodes:
                    self.registered.setdefault(n.name, n.started_at)
            self._stop.wait(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Loop:
    """An autoscaler ticking in a thread until :meth:`stop`."""

    scaler: Autoscaler
    interval: float
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Loop:
        self.thread = threading.Thread(
            target=self.scaler.run, args=(self.interval, self.stop_event), daemon=True
        )
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(30)


# -- the platform ----------------------------------------------------------------------------


@dataclass
class Platform:
    """A private redis-server and an OFFLOAD_HOME with a key; nodes come from the provider."""

    svc: Services
    slots: int
    settings: Settings | None = None
    provider: RecordingProvider | None = None
    loops: list[Loop] = field(default_factory=list)

    def start(self) -> Client:
        # Other OFFLOAD_* variables of the caller's environment apply to the nodes too.
        self.settings = start_cluster(self.svc).settings
        self.provider = RecordingProvider(self.settings, slots=self.slots, loglevel="WARNING")
        return Client(self.settings)

    def autoscaler(self, limits: ClassLimits) -> Autoscaler:
        assert self.settings is not None and self.provider is not None
        broker = Broker(self.settings)
        return Autoscaler(
            broker,
            self.provider,
            [CLASS],
            Limits(per_class={CLASS: limits}, default=limits),
            recover=recovery_hook(broker),
        )

    def run_loop(self, limits: ClassLimits, interval: float) -> Loop:
        loop = Loop(self.autoscaler(limits), interval).start()
        self.loops.append(loop)
        return loop

    def node_logs(self) -> str:
        if self.settings is None:
            return ""
        out = []
        for path in sorted((self.settings.home / "logs").glob("*.log")):
            out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-2000:]}")
        return "\n".join(out)

    def close(self) -> None:
        for loop in self.loops:
            loop.stop()
        if self.provider is not None:
            p = self.provider
            for node in p.nodes():  # drain, never kill ... unless they will not go
                with contextlib.suppress(Exception):
                    p.drain(node.name)
            deadline = time.monotonic() + 30
            while p.nodes() and time.monotonic() < deadline:
                time.sleep(0.2)
            for node in p.nodes():
                pid = p.pid(node.name)
                if pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)


# -- the measurements ------------------------------------------------------------------------


def burst(client: Client, plat: Platform, n: int, timeout: float) -> dict[str, Any]:
    """Submit ``n`` no-op jobs at once; times from the burst to first running and to drained."""
    assert plat.provider is not None and plat.settings is not None
    watch = NodeWatch(Broker(plat.settings).nodes)
    started_before = len(plat.provider.started)
    try:
        t0 = time.time()
        jobs = [
            client.submit(IMAGE, COMMAND, cpu=CPU, memory=MEMORY, cache=False, name="bench-burst")
            for _ in range(n)
        ]
        t_submitted = time.time()
        results = [job.result(timeout=timeout) for job in jobs]
        t_drained = time.time()
    finally:
        watch.close()
    failed = [r for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} of {n} jobs failed: {failed[0]}")
    first: dict[str, float] = {}
    last_succeeded = 0.0
    for job in jobs:
        seen = first_at(job.timeline())
        for status, at in seen.items():
            first[status] = min(first.get(status, math.inf), at)
        last_succeeded = max(last_succeeded, seen.get("succeeded", 0.0))
    new_nodes = plat.provider.started[started_before:]
    registered_after = sorted(at - t0 for name, at in watch.registered.items() if at >= t0)
    return {
        "jobs": n,
        "submit_all": t_submitted - t0,
        "first_staging": first["staging"] - t0,
        "first_running": first["running"] - t0,
        "drained": t_drained - t0,
        "last_succeeded": last_succeeded - t0,
        "nodes_started": [round(at - t0, 3) for at, _ in new_nodes],
        "nodes_registered": [round(x, 3) for x in registered_after],
        "nodes_used": len({r.node for r in results}),
        "most_nodes_up": watch.most,
        "attempts_above_1": sum(1 for r in results if r.attempt != 1),
        "t_drained": t_drained,
    }


def scale_back(plat: Platform, t_last: float, idle_window: float) -> dict[str, Any]:
    """From the last result until the nodes are drained back to 0 and their processes gone."""
    assert plat.provider is not None and plat.settings is not None
    p = plat.provider
    registry = Broker(plat.settings).nodes
    drained_before = len(p.drained)
    t_gone = wait_for(
        lambda: not p.nodes() and not registry.nodes(),
        idle_window + 120,
        "the nodes to drain back to zero",
        interval=0.05,
    )
    drains = p.drained[drained_before:]
    return {
        "idle_window": idle_window,
        "first_drain": (min(t for t, _ in drains) - t_last) if drains else math.nan,
        "last_drain": (max(t for t, _ in drains) - t_last) if drains else math.nan,
        "nodes_drained": len(drains),
        "at_minimum": t_gone - t_last,
    }


def warm_docker(image: str) -> None:
    """One container before the clock starts, so neither phase pays a cold engine or image."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            ["docker", "run", "--rm", "--network", "none", image, *COMMAND],
            capture_output=True,
            timeout=120,
        )


@contextlib.contextmanager
def bench_env(slots: int, keep: bool) -> Iterator[tuple[Platform, Client]]:
    # job workspaces live under the temp folder; the container user must reach them
    note = " (node logs under home/logs)"
    with bench_run("offload-bench-autoscale-", keep, note, mode=0o755) as br:
        plat = Platform(br.svc, slots)
        br.error_logs = lambda: f"node logs (tails):\n{plat.node_logs()}"
        br.cleanup.callback(plat.close)  # drain the nodes before redis-server stops
        yield plat, plat.start()


def run(args: argparse.Namespace) -> dict[str, Any]:
    info = machine()
    cold_limits = ClassLimits(
        min_nodes=0, max_nodes=args.max_nodes, idle_window=args.idle_window, max_step=4
    )
    warm_limits = ClassLimits(
        min_nodes=1, max_nodes=args.max_nodes, idle_window=args.idle_window, max_step=4
    )
    say(args, "warming docker (one container, untimed) ...")
    warm_docker(IMAGE)
    say(args, "starting redis-server ...")
    with bench_env(args.slots, args.keep) as (plat, client):
        assert plat.provider is not None and plat.settings is not None
        registry = Broker(plat.settings).nodes

        # 1. cold: the autoscaler runs, no node is up
        msg = f"cold: autoscaler min 0 max {args.max_nodes}, tick {args.interval:g}s; "
        say(args, f"{msg}{args.jobs} jobs at zero nodes ...")
        loop = plat.run_loop(cold_limits, args.interval)
        time.sleep(max(1.0, 2 * args.interval))  # a few idle ticks at zero nodes first
        if plat.provider.nodes() or registry.nodes():
            raise RuntimeError("nodes are up before the cold burst")
        cold = burst(client, plat, args.jobs, args.timeout)

        # 2. back to the minimum after the idle window
        say(
            args,
            f"scale back: waiting for the idle window ({args.idle_window:g}s) and the drain ...",
        )
        back = scale_back(plat, cold.pop("t_drained"), args.idle_window)
        loop.stop()

        # 3. warm: one node up and registered before the burst
        say(args, f"warm: autoscaler min 1 max {args.max_nodes}; waiting for its node ...")
        plat.run_loop(warm_limits, args.interval)
        wait_for(
            lambda: any(n.state == "up" for n in registry.nodes()),
            120,
            "the warm node to register",
            interval=0.05,
        )
        time.sleep(args.settle)  # registered = consuming; let it sit idle a moment
        say(args, f"warm: {args.jobs} jobs on a running node ...")
        warm = burst(client, plat, args.jobs, args.timeout)
        warm.pop("t_drained")

    ratios = {
        "first_running": cold["first_running"] / warm["first_running"],
        "drained": cold["drained"] / warm["drained"],
    }
    return {
        "machine": info,
        "settings": {
            "provider": "local",
            "class": CLASS,
            "jobs": args.jobs,
            "slots_per_node": args.slots,
            "max_nodes": args.max_nodes,
            "idle_window": args.idle_window,
            "tick_interval": args.interval,
            "image": IMAGE,
            "command": COMMAND,
        },
        "cold": cold,
        "warm": warm,
        "scale_back": back,
        "ratios": ratios,
        "goal": {
            "what": f"cold first job running <= {GOAL_FIRST_RUNNING:g} s after the burst",
            "value": cold["first_running"],
            "met": cold["first_running"] <= GOAL_FIRST_RUNNING,
        },
    }


def report(res: dict[str, Any]) -> str:
    m, s, cold, warm, back = (res[k] for k in ("machine", "settings", "cold", "warm", "scale_back"))
    lines = [
        f"autoscale (local provider) — {m['date']} on {m['host']}: {m['nproc']} CPU, "
        f"{m['memory_gib']} GiB, kernel {m['kernel']}, python {m['python']}, "
        f"load at start {m['loadavg_at_start']}",
        f"{s['jobs']} no-op jobs ({s['image']} {s['command']}), class {s['class']}, "
        f"max {s['max_nodes']} nodes x {s['slots_per_node']} slots, tick {s['tick_interval']:g}s, "
        f"idle window {s['idle_window']:g}s",
        "",
        f"  {'burst → (seconds)':<32}{'cold (0 nodes)':>16}{'warm (1 node)':>16}{'cold/warm':>11}",
    ]
    rows = (
        ("all submitted", "submit_all"),
        ("first job staging", "first_staging"),
        ("first job running", "first_running"),
        ("queue drained (all results)", "drained"),
    )
    for label, key in rows:
        ratio = cold[key] / warm[key] if warm[key] else math.nan
        lines.append(f"  {label:<32}{cold[key]:>16.2f}{warm[key]:>16.2f}{ratio:>11.2f}")

    def nodes(r: dict[str, Any]) -> str:
        started = ", ".join(f"{x:.2f}" for x in r["nodes_started"]) or "none"
        registered = ", ".join(f"{x:.2f}" for x in r["nodes_registered"]) or "none"
        return (
            f"started at {started}; registered at {registered}; "
            f"{r['nodes_used']} ran jobs, at most {r['most_nodes_up']} up"
        )

    lines += [
        f"  cold nodes: {nodes(cold)}",
        f"  warm nodes (new during the burst): {nodes(warm)}",
        "",
        f"scale back to min 0 after the last result (idle window {back['idle_window']:g}s):",
        f"  drain issued after {back['first_drain']:.2f}s ({back['nodes_drained']} nodes); "
        f"all processes exited, registry empty after {back['at_minimum']:.2f}s "
        f"(= window + {back['at_minimum'] - back['idle_window']:.2f}s)",
        "  (the window runs from when the node count first exceeded the need, which can be",
        "  before the last result; the drain itself is Celery's warm shutdown, then exit)",
        "",
        f"ratios: cold/warm first running = {res['ratios']['first_running']:.2f}, "
        f"cold/warm drained = {res['ratios']['drained']:.2f}",
        f"goal: {res['goal']['what']}: {res['goal']['value']:.2f}s — "
        + ("met" if res["goal"]["met"] else "NOT met"),
    ]
    if cold["attempts_above_1"] or warm["attempts_above_1"]:
        lines.append(
            f"note: jobs run more than once: cold {cold['attempts_above_1']}, "
            f"warm {warm['attempts_above_1']}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Autoscaling with the local provider: burst at zero nodes vs a warm node."
    )
    p.add_argument("--jobs", type=int, default=20, help="jobs in each burst")
    p.add_argument("--slots", type=int, default=2, help="slots per node")
    p.add_argument("--max-nodes", type=int, default=2, help="max nodes of the class")
    p.add_argument("--idle-window", type=float, default=10.0, help="seconds idle before scale-in")
    p.add_argument("--interval", type=float, default=0.5, help="autoscaler tick, seconds")
    p.add_argument("--settle", type=float, default=1.0, help="warm node idle before the burst")
    p.add_argument("--timeout", type=float, default=300.0, help="per job result, seconds")
    output_options(p, keep="keep the temp folder (node logs)")
    p.add_argument("--verbose", action="store_true", help="the autoscaler's log on stderr")
    args = p.parse_args(argv)
    for name in ("jobs", "slots", "max_nodes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.interval <= 0 or args.idle_window < 0 or args.settle < 0:
        p.error("--interval must be > 0, --idle-window and --settle >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return finish(args, run, report, "nodes and redis-server cleaned up")


if __name__ == "__main__":
    sys.exit(main())
