"""Job overhead: a no-op job through offload versus ``docker run --rm`` of the same image.

Self-contained: starts its own ``redis-server`` (loopback, free port) and one worker node
with two slots in a temporary ``OFFLOAD_HOME``, warms up every path, then measures, in one
run and on the same machine:

* latency — N sequential no-op jobs (``Client.submit(...)`` called to ``.result()``
  returned) interleaved with N sequential ``docker run --rm`` of the same image with the
  sandbox flags and limits the worker gives a job; ratio = offload median / docker median
  (goal ≤ 1.05). A third path, the same engine calls made straight through the Docker SDK
  (no CLI process), is measured alongside for information: it is the floor offload's own
  overhead sits on. The order rotates each round (A B C, B C A, C A B) so drift and
  after-effects hit every path alike;
* throughput — M no-op jobs submitted at once to the two-slot worker, time until every
  result is in, versus two parallel loops of M/2 sequential ``docker run --rm`` each;
  ratio = docker time / offload time (goal ≥ 1.0).

It also prints where offload's latency goes, from each job's status timeline (the client
and the worker share the host's clock).

    python bench/job_overhead.py                      # defaults: 20 latency runs, 100 jobs
    python bench/job_overhead.py --latency-runs 5 --jobs 10
    python bench/job_overhead.py --json > result.json

Memoization is switched off for the benchmark's jobs (``cache=False``): identical no-op jobs
would otherwise be answered from the action cache without a container after the first one.
Ctrl-C (or SIGTERM) stops the worker and redis-server and removes the baseline's containers.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
from docker.types import LogConfig

from common import (
    bench_run,
    finish,
    first_at,
    machine,
    output_options,
    say,
    start_cluster,
    start_worker,
    stats_header,
    stats_row,
    summary,
)
from offload.config import Settings
from offload.producer.client import Client

IMAGE = "offload/base"
COMMAND = ["true"]
CPU = 1.0
MEMORY = "512m"
BENCH_LABEL = "offload.bench"
STOP = threading.Event()  # set when the run ends: baseline loops start no more containers

# -- the docker baseline ---------------------------------------------------------------------


def docker_argv(image: str, ws: Path, settings: Settings, run_label: str) -> list[str]:
    """``docker run --rm`` with the sandbox and limits the worker's DockerRuntime.create sets."""
    return [
        "docker",
        "run",
        "--rm",
        "--network",
        "none",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--read-only",
        "--tmpfs",
        f"/tmp:rw,nosuid,nodev,size={settings.tmpfs_size}",
        "--user",
        settings.container_user,
        "--pids-limit",
        str(settings.pids_limit),
        "--memory",
        MEMORY,
        "--memory-swap",
        MEMORY,
        "--cpus",
        f"{CPU:g}",
        "--init",
        "--log-driver",
        "json-file",
        "--log-opt",
        "max-size=10m",
        "--log-opt",
        "max-file=1",
        "--label",
        f"{BENCH_LABEL}={run_label}",
        "-v",
        f"{ws / 'in'}:/offload/in:ro",
        "-v",
        f"{ws / 'out'}:/offload/out:rw",
        "-v",
        f"{ws / 'params.json'}:/offload/params.json:ro",
        "-e",
        "OFFLOAD_JOB_ID=x",
        image,
        *COMMAND,
    ]


def make_docker_workspace(root: Path) -> Path:
    """The folders a job sees: an empty read-only in/, a writable out/, a params file."""
    ws = root / "docker-ws"
    (ws / "in").mkdir(parents=True)
    (ws / "out").mkdir()
    (ws / "params.json").write_text("{}")
    os.chmod(ws / "params.json", 0o444)
    os.chmod(ws / "in", 0o555)
    os.chmod(ws / "out", 0o777)
    return ws


def docker_once(argv: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"docker run failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    return elapsed


def engine_once(
    api: docker.APIClient, image: str, ws: Path, settings: Settings, label: str
) -> float:
    """The engine-call floor: create, attach, start, wait, remove through the SDK, no CLI.

    Not part of the goals; it shows what offload adds on top of the engine's own work,
    apart from the ``docker`` command's process start and version negotiation.
    """
    t0 = time.perf_counter()
    host_config = api.create_host_config(
        binds={
            str(ws / "in"): {"bind": "/offload/in", "mode": "ro"},
            str(ws / "out"): {"bind": "/offload/out", "mode": "rw"},
            str(ws / "params.json"): {"bind": "/offload/params.json", "mode": "ro"},
        },
        mem_limit=MEMORY,
        memswap_limit=MEMORY,
        nano_cpus=int(CPU * 1e9),
        pids_limit=settings.pids_limit,
        read_only=True,
        tmpfs={"/tmp": f"rw,nosuid,nodev,size={settings.tmpfs_size}"},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        network_mode="none",
        init=True,
        log_config=LogConfig(type="json-file", config={"max-size": "10m", "max-file": "1"}),
    )
    cid = api.create_container(
        image,
        command=COMMAND,
        environment={"OFFLOAD_JOB_ID": "x"},
        user=settings.container_user,
        labels={BENCH_LABEL: label},
        host_config=host_config,
        network_disabled=True,
    )["Id"]
    try:
        stream = api.attach(cid, stdout=True, stderr=True, stream=True, logs=True, demux=True)
        api.start(cid)
        code = api.wait(cid)["StatusCode"]
        for _ in stream:
            pass
    finally:
        api.remove_container(cid, force=True, v=True)
    elapsed = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"engine baseline container exited with {code}")
    return elapsed


# -- the offload side ------------------------------------------------------------------------


def submit_noop(client: Client, image: str) -> Any:
    return client.submit(image, COMMAND, cpu=CPU, memory=MEMORY, cache=False, name="bench-noop")


def offload_once(
    client: Client, image: str, timeline: bool = False
) -> tuple[float, dict[str, float]]:
    """One no-op job: seconds from the submit call to the result, and its phases."""
    t_wall = time.time()
    t0 = time.perf_counter()
    job = submit_noop(client, image)
    t_returned = t_wall + (time.perf_counter() - t0)
    result = job.result(timeout=120)
    elapsed = time.perf_counter() - t0
    phases: dict[str, float] = {}
    if timeline:
        marks = (t_wall, t_returned, t_wall + elapsed)
        phases = job_phases(client, job.id, marks, result.timings)
    return elapsed, phases


PHASES = (
    ("submit", "submit called → record created (validate spec, HSET/XADD/ZADD)"),
    ("publish", "record created → submit returned (Celery send_task)"),
    ("pickup", "submit returned → staging (delivery, pool process, begin_attempt)"),
    ("prepare", "staging → running (inspect image, workspace, container create)"),
    ("run", "running → uploading (attach, start, container runs, wait, inspect)"),
    ("finish", "uploading → succeeded (collect outputs, drain logs, remove container)"),
    ("notify", "succeeded → result returned (client wakes on timeline, HGETALL)"),
)


def job_phases(
    client: Client, job_id: str, marks: tuple[float, float, float], timings: dict[str, float]
) -> dict[str, float]:
    """Seconds per phase, from the client's clock marks (submit called, submit returned,
    result returned) and the job's status timeline (same host, same wall clock)."""
    t_submit, t_returned, t_end = marks
    at = first_at(client.broker.records.timeline(job_id))
    need = ("queued", "staging", "running", "uploading", "succeeded")
    if not all(s in at for s in need):
        return {}
    return {
        "submit": at["queued"] - t_submit,
        "publish": t_returned - at["queued"],
        "pickup": at["staging"] - t_returned,
        "prepare": at["running"] - at["staging"],
        "run": at["uploading"] - at["running"],
        "finish": at["succeeded"] - at["uploading"],
        "notify": t_end - at["succeeded"],
        **{f"timing.{k}": v for k, v in timings.items()},
    }


def offload_batch(client: Client, image: str, n: int) -> tuple[float, dict[str, float]]:
    """Submit ``n`` jobs at once; seconds until every result is in, and how slots were used."""
    t0 = time.perf_counter()
    jobs = [submit_noop(client, image) for _ in range(n)]
    submitted = time.perf_counter() - t0
    for job in jobs:
        job.result(timeout=600)
    elapsed = time.perf_counter() - t0
    # after the clock stopped: from the timelines, how busy the slots were
    first, last, busy = math.inf, 0.0, 0.0
    for job in jobs:
        at = first_at(job.timeline())
        if "staging" in at and "succeeded" in at:
            first, last = min(first, at["staging"]), max(last, at["succeeded"])
            busy += at["succeeded"] - at["staging"]
    span = last - first if last > first else math.nan
    return elapsed, {
        "submit_all": submitted,
        "busy_per_job": busy / n,
        "mean_jobs_in_flight": busy / span,
    }


def docker_parallel(argv: list[str], n: int, loops: int) -> float:
    """``loops`` threads, each running its share of ``n`` sequential ``docker run --rm``."""
    shares = [n // loops + (1 if i < n % loops else 0) for i in range(loops)]
    errors: list[BaseException] = []
    start = threading.Barrier(loops + 1)

    def loop(count: int) -> None:
        start.wait()
        try:
            for _ in range(count):
                if STOP.is_set():
                    return
                docker_once(argv)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(c,), daemon=True) for c in shares]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return elapsed


def report(res: dict[str, Any]) -> str:
    m, lat, thr = res["machine"], res["latency"], res["throughput"]
    jobs, ms = thr["jobs"], 1000.0
    lines = [
        f"job overhead — {m['date']} on {m['host']}: {m['nproc']} CPU, {m['memory_gib']} GiB, "
        f"kernel {m['kernel']}, docker {m['docker_server']} (CLI {m['docker_client']}; "
        f"{m['docker_setup']}), python {m['python']}, load at start {m['loadavg_at_start']}",
        "",
        f"latency: {lat['runs']} sequential no-op jobs per path, interleaved; milliseconds",
        stats_header(30),
    ]
    for key, label in (
        ("offload", "offload submit → result"),
        ("docker", "docker run --rm"),
        ("engine", "(engine calls via SDK, no CLI)"),
    ):
        lines.append(stats_row(label, lat[key], 30))
    lines += [
        f"  latency ratio = offload / docker run median = {lat['ratio']:.3f}   (goal ≤ 1.05)",
        f"  (offload / engine-call floor = {lat['ratio_engine']:.3f}, for information)",
        "",
        f"throughput: {jobs} no-op jobs, a {thr['slots']}-slot worker vs {thr['slots']} "
        "parallel `docker run --rm` loops; seconds",
        f"  {'offload':<30}{thr['offload']:>8.2f}   {jobs / thr['offload']:.1f} jobs/s",
        f"  {'docker run --rm loops':<30}{thr['docker']:>8.2f}   {jobs / thr['docker']:.1f} jobs/s",
        f"  throughput ratio = docker time / offload time = {thr['ratio']:.3f}   (goal ≥ 1.0)",
        f"  offload: submitting all took {thr['submit_all']:.2f} s; each job held a slot "
        f"{thr['busy_per_job'] * ms:.0f} ms (staging → succeeded); "
        f"{thr['mean_jobs_in_flight']:.2f} jobs in flight on average",
    ]
    if len(thr["offload_rounds"]) > 1:
        lines.append(
            "  rounds (medians shown above): offload "
            + ", ".join(f"{x:.2f}" for x in thr["offload_rounds"])
            + "; docker "
            + ", ".join(f"{x:.2f}" for x in thr["docker_rounds"])
        )
    phases = res.get("phases")
    if phases:
        lines += ["", "where offload's latency goes (median over the latency runs; ms)"]
        for key, what in PHASES:
            if key in phases:
                lines.append(f"  {key:<9}{phases[key] * ms:>7.1f}  {what}")
        extra = [k for k in phases if k.startswith("timing.")]
        if extra:
            lines.append(
                "  worker's own timings: "
                + ", ".join(f"{k.removeprefix('timing.')} {phases[k] * ms:.1f}" for k in extra)
            )
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------


def remove_bench_containers(run_label: str) -> None:
    """Containers a Ctrl-C left behind: the baseline's (by label); the worker removes its own."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label={BENCH_LABEL}={run_label}"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, timeout=60)


@contextlib.contextmanager
def bench_env(slots: int, keep: bool) -> Iterator[tuple[Settings, Client, Path, str]]:
    """A redis-server and a worker with ``slots`` slots, the baseline's workspace and label."""
    with bench_run("offload-bench-", keep, " (worker.log inside)", mode=0o755) as br:
        run_label = uuid.uuid4().hex[:12]
        br.cleanup.callback(remove_bench_containers, run_label)
        br.cleanup.callback(STOP.set)
        cluster = start_cluster(br.svc, slots)
        client = start_worker(br.svc, cluster)
        yield cluster.settings, client, make_docker_workspace(br.root), run_label


def run(args: argparse.Namespace) -> dict[str, Any]:
    info = machine(docker=True)
    say(args, "starting redis-server and a worker ...")
    with (
        contextlib.closing(docker.APIClient(version="auto")) as api,
        bench_env(args.slots, args.keep) as (settings, client, ws, run_label),
    ):
        argv = docker_argv(args.image, ws, settings, run_label)
        baselines: dict[str, Callable[[], float]] = {
            "docker": lambda: docker_once(argv),
            "engine": lambda: engine_once(api, args.image, ws, settings, run_label),
        }

        say(
            args, f"warming up ({args.warmup} of each, then {args.slots * args.warmup} at once) ..."
        )
        if args.warmup:
            offload_batch(client, args.image, args.slots * args.warmup)  # every pool process
        for _ in range(args.warmup):
            offload_once(client, args.image)
            docker_once(argv)
            baselines["engine"]()
        docker_parallel(argv, args.slots * args.warmup, args.slots)

        say(args, f"latency: {args.latency_runs} runs of each path, interleaved ...")
        kinds = ["offload", *baselines]
        samples: dict[str, list[float]] = {k: [] for k in kinds}
        phase_rows: list[dict[str, float]] = []
        for i in range(args.latency_runs):
            # rotate the order, so no path always follows the same one
            for kind in kinds[i % len(kinds) :] + kinds[: i % len(kinds)]:
                if kind == "offload":
                    elapsed, row = offload_once(client, args.image, timeline=True)
                    samples[kind].append(elapsed)
                    if row:
                        phase_rows.append(row)
                else:
                    samples[kind].append(baselines[kind]())

        say(
            args,
            f"throughput: {args.jobs} jobs, {args.slots} slots vs {args.slots} docker loops ...",
        )
        t_off: list[float] = []
        t_dock: list[float] = []
        batch_stats: list[dict[str, float]] = []
        for i in range(args.throughput_rounds):
            order = ("offload", "docker") if i % 2 == 0 else ("docker", "offload")
            for kind in order:
                if kind == "offload":
                    elapsed, st = offload_batch(client, args.image, args.jobs)
                    t_off.append(elapsed)
                    batch_stats.append(st)
                else:
                    t_dock.append(docker_parallel(argv, args.jobs, args.slots))

    thr_off, thr_dock = statistics.median(t_off), statistics.median(t_dock)
    phases: dict[str, float] = {}
    for row in phase_rows:
        for key in row:
            phases.setdefault(key, statistics.median(r[key] for r in phase_rows if key in r))
    lat = {k: summary(v) for k, v in samples.items()}
    return {
        "machine": info,
        "image": args.image,
        "command": COMMAND,
        "latency": {
            "runs": args.latency_runs,
            **lat,
            "ratio": lat["offload"]["median"] / lat["docker"]["median"],
            "ratio_engine": lat["offload"]["median"] / lat["engine"]["median"],
            "goal": "ratio <= 1.05",
            "samples": samples,
        },
        "throughput": {
            "jobs": args.jobs,
            "slots": args.slots,
            "offload": thr_off,
            "docker": thr_dock,
            "ratio": thr_dock / thr_off,
            "goal": "ratio >= 1.0",
            "offload_rounds": t_off,
            "docker_rounds": t_dock,
            **{k: statistics.median(st[k] for st in batch_stats) for k in batch_stats[0]},
        },
        "phases": phases,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Overhead of a no-op offload job versus `docker run --rm` (same sandbox)."
    )
    p.add_argument("--latency-runs", type=int, default=20, help="sequential jobs per path")
    p.add_argument("--jobs", type=int, default=100, help="jobs in the throughput test")
    p.add_argument("--slots", type=int, default=2, help="worker slots = parallel docker loops")
    p.add_argument("--warmup", type=int, default=3, help="warm-up runs per path")
    p.add_argument(
        "--throughput-rounds", type=int, default=1, help="repeat the throughput test (median)"
    )
    p.add_argument("--image", default=IMAGE, help="no-op image (runs `true`)")
    output_options(p, keep="keep the temp folder (worker.log)")
    args = p.parse_args(argv)
    for name in ("latency_runs", "jobs", "slots", "warmup", "throughput_rounds"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            p.error(f"--{name.replace('_', '-')} is too small")
    return args


def main(argv: list[str] | None = None) -> int:
    interrupted = "worker, redis-server and containers cleaned up"
    return finish(parse_args(argv), run, report, interrupted)


if __name__ == "__main__":
    sys.exit(main())
