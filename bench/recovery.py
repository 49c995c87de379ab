"""Recovery: offload's leases and sweeper versus plain Celery's visibility-timeout backstop.

Self-contained: every scenario starts a ``redis-server`` of its own as ``offload up`` runs it
(append-only file, fsync on every write, so it can be killed with ``kill -9`` and started
again on the same folder), its own workers, and cleans all of it up at the end. In one run,
on the same machine:

1. **worker SIGKILL → the job running again elsewhere.** Two worker nodes (one slot each) on
   one Redis; a long job (``sleep 30``) starts; the node running it is killed (SIGKILL to its
   whole process group: no requeue, no goodbye); time until the job's record shows the next
   attempt ``running`` on the other node. Once with the default lease (20 s) and sweep
   interval (5 s), once with a short lease (4 s, sweep and heartbeat every 1 s). Baseline: a
   minimal Celery app of this script's own (same kind of Redis; ``acks_late``, prefetch 1,
   ``reject_on_worker_lost``) whose task sleeps as long; the worker running it is killed the
   same way while a second worker idles; time until the task starts again on the second
   worker. Plain Celery's only backstop is the visibility timeout, which must exceed the
   longest task: 60 s here for a 30-s task (kombu's restore sweep every 5 s, as offload's own
   Celery app sets it; kombu's default sweeps every ~100 s). offload's own visibility timeout
   (``OFFLOAD_MAX_TIMEOUT`` + ``OFFLOAD_VISIBILITY_MARGIN``, 87,000 s by default) is printed,
   not waited for.
2. **Redis kill -9 and immediate restart while jobs run.** One node with 2 slots, 4 jobs of
   ``sleep 5``; once 2 run, Redis is killed and restarted at once; time from the restart
   until every job is terminal, and how often each job's container started (from the Docker
   engine's event stream, not offload's records). Baseline: the same with the Celery app
   (a 2-process worker, 4 tasks sleeping 5 s; each run appends to a file on the host): time
   until every task completed, and how many ran twice, watched until the visibility timeout
   has passed since the restart.

    python bench/recovery.py            # about 4-5 minutes
    python bench/recovery.py --json

Never run as a test. Ctrl-C (or SIGTERM) stops the workers and redis-servers and removes the
job containers this run started.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from common import BenchRun, Services, bench_run, finish, free_port, machine, output_options, say

IMAGE = "offload/base"
SHORT_LEASE = {
    "OFFLOAD_LEASE_TTL": "4",
    "OFFLOAD_SWEEP_INTERVAL": "1",
    "OFFLOAD_HEARTBEAT_INTERVAL": "1",
}
RESTORE_INTERVAL = 5  # kombu's unacked restore sweep in the baseline (offload's app sets 5 too)

# The baseline: plain Celery, late acknowledgement, its visibility timeout the only backstop.
BASELINE_APP = """
import os, time
from celery import Celery

app = Celery("baseline", broker=os.environ["BASELINE_REDIS_URL"])
app.conf.update(
    task_default_queue="baseline",
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    accept_content=["json"],
    task_serializer="json",
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        "visibility_timeout": int(os.environ["BASELINE_VISIBILITY"]),
        "unacked_restore_interval": int(os.environ["BASELINE_RESTORE"]),
        "unacked_restore_throttle": 1,
    },
)


def note(event, task):
    with open(os.environ["BASELINE_LOG"], "a") as f:
        f.write(f"{time.time():.6f} {event} {task.request.id} {task.request.hostname}\\n")


@app.task(bind=True)
def nap(self, seconds):
    note("start", self)
    time.sleep(seconds)
    note("end", self)
"""


# -- processes ---------------------------------------------------------------------------------


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process this run started and everything in its session."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def poll(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """``check()``'s first true value; Redis being away while it polls is not an error."""
    import redis

    from offload.errors import OffloadError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OffloadError):
            value = check()
            if value:
                return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


class AofRedis:
    """A redis-server with an append-only file fsynced on every write, restartable in place."""

    def __init__(self, svc: Services, name: str) -> None:
        self.svc, self.name = svc, name
        self.port = free_port()
        self.folder = svc.root / name
        self.folder.mkdir()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start it (again); the wall time it first answered PING."""
        import redis

        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (see `make setup`)")
        argv = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        argv += ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        self.proc = self.svc.spawn(self.name, argv, dict(os.environ))
        r = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        up: list[float] = []

        def ping() -> bool:
            with contextlib.suppress(redis.RedisError):
                if r.ping():
                    up.append(time.time())
            return bool(up)

        self.svc.up(self.name, self.proc, ping)
        r.close()
        return up[0]

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)

    def kill9(self) -> float:
        assert self.proc is not None
        t = time.time()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        return t


def engine() -> Any:
    import docker

    return docker.from_env()


def remove_job_containers(job_ids: list[str]) -> None:
    """The containers of this run's jobs (a killed worker leaves its attempt's running)."""
    with contextlib.closing(engine()) as client:
        for job_id in job_ids:
            flt = {"label": f"offload.job_id={job_id}"}
            for c in client.api.containers(all=True, filters=flt):
                with contextlib.suppress(Exception):
                    client.api.remove_container(c["Id"], force=True, v=True)


def container_starts(job_ids: list[str], since: int) -> Counter[str]:
    """How many containers the engine started for each job since ``since``, from its events."""
    wanted, runs = set(job_ids), Counter[str]()
    with contextlib.closing(engine()) as client:
        events = client.api.events(
            since=since,
            until=int(time.time()) + 1,
            filters={"type": "container", "event": "start", "label": "offload.managed=1"},
            decode=True,
        )
        for e in events:
            job = (e.get("Actor") or {}).get("Attributes", {}).get("offload.job_id")
            if job in wanted:
                runs[job] += 1
    return runs


def running_containers(job_ids: list[str]) -> list[str]:
    with contextlib.closing(engine()) as client:
        up = client.api.containers(filters={"label": "offload.managed=1", "status": "running"})
    ids = {c["Labels"].get("offload.job_id") for c in up}
    return [j for j in job_ids if j in ids]


# -- offload -----------------------------------------------------------------------------------


class OffloadCluster:
    """An ``OFFLOAD_HOME`` with a key on an :class:`AofRedis`, and its worker nodes."""

    def __init__(self, br: BenchRun, redis: AofRedis, name: str, extra: dict[str, str]) -> None:
        from offload.cache.keys import init_key
        from offload.config import Settings
        from offload.producer.client import Client

        self.svc, self.name = br.svc, name
        home = br.root / name / "home"
        home.mkdir(parents=True)
        # the defaults, whatever the caller's shell says, but for what this scenario sets
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
        self.env.update(OFFLOAD_REDIS_URL=redis.url, OFFLOAD_HOME=str(home), **extra)
        self.env["OFFLOAD_WORKER_CLASSES"] = "cpu-small"
        fields: dict[str, Any] = {
            k.removeprefix("OFFLOAD_").lower(): v
            for k, v in self.env.items()
            if k.startswith("OFFLOAD_")
        }
        self.settings = Settings(_env_file=None, **fields)  # type: ignore[call-arg]
        init_key(self.settings.key_path)
        self.client = Client(self.settings)
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self.job_ids: list[str] = []

    def start_node(self, node: str, slots: int) -> None:
        env = {**self.env, "OFFLOAD_NODE_NAME": node, "OFFLOAD_WORKER_SLOTS": str(slots)}
        argv = [sys.executable, "-m", "offload", "worker", "--loglevel", "INFO"]
        proc = self.svc.spawn(f"{self.name}-{node}", argv, env)
        self.nodes[node] = proc
        target = f"offload@{node}"
        ping = self.client.broker.app.control.ping
        self.svc.up(
            f"{self.name}-{node}", proc, lambda: any(target in r for r in ping(timeout=0.3))
        )

    def submit(self, seconds: float, name: str) -> str:
        cmd = ["sh", "-c", f"sleep {seconds:g}; echo {uuid.uuid4().hex}"]
        job_id: str = self.client.submit(IMAGE, cmd, name=name, cache=False).id
        self.job_ids.append(job_id)
        return job_id

    def close(self) -> None:
        for proc in self.nodes.values():
            kill_group(proc)
        remove_job_containers(self.job_ids)


def offload_worker_kill(
    args: argparse.Namespace, br: BenchRun, name: str, extra: dict[str, str]
) -> dict[str, Any]:
    from offload.broker.status import JobStatus

    with contextlib.ExitStack() as stack:
        redis = AofRedis(br.svc, f"{name}-redis")
        redis.start()
        stack.callback(redis.stop)
        cluster = OffloadCluster(br, redis, name, extra)
        stack.callback(cluster.close)
        for node in ("node-a", "node-b"):
            cluster.start_node(node, 1)
        s = cluster.settings
        job_id = cluster.submit(args.long, f"{name}-long")
        job = cluster.client.job(job_id)
        poll(lambda: job.status() is JobStatus.RUNNING, 60, "the long job to run")
        first = job.record()
        victim = first.node or ""
        t_kill = time.time()
        kill_group(cluster.nodes[victim])
        bound = s.lease_ttl + s.sweep_interval + s.heartbeat_interval + 60

        def running_again() -> Any:
            return next(
                (
                    e
                    for e in job.timeline()
                    if e.status is JobStatus.RUNNING and e.attempt > first.attempt
                ),
                None,
            )

        again = poll(running_again, bound, "the job to run again", interval=0.1)

        def first_attempt_gone() -> float:  # its container, left running by the dead node
            with contextlib.closing(engine()) as client:
                flt = {"label": [f"offload.job_id={job_id}", f"offload.attempt={first.attempt}"]}
                return 0.0 if client.api.containers(filters=flt) else time.time()

        orphan_gone = poll(first_attempt_gone, 60, "the dead attempt's container removed", 0.1)
        at = {(e.status, e.attempt): e.at for e in reversed(job.timeline())}
        requeued = at.get((JobStatus.QUEUED, first.attempt), float("nan"))
        running_at = at.get((JobStatus.RUNNING, first.attempt), float("nan"))
        return {
            "settings": {
                "lease_ttl": s.lease_ttl,
                "sweep_interval": s.sweep_interval,
                "heartbeat_interval": s.heartbeat_interval,
                "lost_after": s.lost_after,
                "visibility_timeout": s.visibility_timeout,
            },
            "job_seconds": args.long,
            "killed_node": victim,
            "rerun_node": again.node,
            "attempt": again.attempt,
            "kill_after_running": t_kill - running_at,
            "requeued": requeued - t_kill,
            "running_again": again.at - t_kill,
            "first_container_gone": orphan_gone - t_kill,
        }


def offload_redis_restart(args: argparse.Namespace, br: BenchRun) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        redis = AofRedis(br.svc, "redis-restart-redis")
        redis.start()
        stack.callback(redis.stop)
        cluster = OffloadCluster(br, redis, "redis-restart", {})
        stack.callback(cluster.close)
        cluster.start_node("node-a", args.slots)
        since = int(time.time()) - 1
        ids = [cluster.submit(args.short, f"restart-{i}") for i in range(args.jobs)]
        poll(lambda: len(running_containers(ids)) >= args.slots, 60, "jobs running", 0.1)
        redis.kill9()
        t_up = redis.start()
        records = cluster.client.broker.records

        def terminal() -> bool:
            return all(records.status(j).terminal for j in ids)

        poll(terminal, 120, f"{len(ids)} jobs to end", interval=0.1)
        t_done = time.time()
        final = {j: records.get(j) for j in ids}
        starts = container_starts(ids, since)
        return {
            "jobs": len(ids),
            "slots": args.slots,
            "job_seconds": args.short,
            "all_terminal": t_done - t_up,
            "statuses": dict(Counter(r.status.value for r in final.values())),
            "attempts": [final[j].attempt for j in ids],
            "container_starts": [starts[j] for j in ids],
            "ran_twice": sum(1 for j in ids if starts[j] > 1),
        }


# -- the Celery baseline -----------------------------------------------------------------------


class CeleryBaseline:
    """The plain Celery app above, its workers, and the file its tasks note their runs in."""

    def __init__(self, br: BenchRun, redis: AofRedis, name: str, visibility: int) -> None:
        from celery import Celery

        self.svc, self.name = br.svc, name
        folder = br.root / name
        folder.mkdir()
        (folder / "baseline_app.py").write_text(BASELINE_APP)
        self.log = folder / "runs.log"
        self.log.touch()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
        self.env.update(
            PYTHONPATH=str(folder),
            BASELINE_REDIS_URL=redis.url,
            BASELINE_LOG=str(self.log),
            BASELINE_VISIBILITY=str(visibility),
            BASELINE_RESTORE=str(RESTORE_INTERVAL),
        )
        self.app = Celery("baseline", broker=redis.url, set_as_current=False)
        self.app.conf.broker_transport_options = {"visibility_timeout": visibility}
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def start_worker(self, node: str, concurrency: int) -> None:
        hostname = f"{node}@{socket.gethostname()}"
        argv = [sys.executable, "-m", "celery", "-A", "baseline_app", "worker", "-n", hostname]
        argv += ["-c", str(concurrency), "-Q", "baseline", "-l", "WARNING", "--without-mingle"]
        argv += ["--without-gossip"]
        proc = self.svc.spawn(f"{self.name}-{node}", argv, self.env)
        self.workers[hostname] = proc
        ping = self.app.control.ping
        self.svc.up(f"{self.name}-{node}", proc, lambda: bool(ping([hostname], timeout=0.3)))

    def send(self, seconds: float) -> str:
        result = self.app.send_task("baseline_app.nap", args=[seconds], queue="baseline")
        return str(result.id)

    def runs(self) -> list[tuple[float, str, str, str]]:
        """(time, start|end, task id, worker) for every line the tasks wrote."""
        out = []
        for line in self.log.read_text().splitlines():
            at, event, task, host = line.split()
            out.append((float(at), event, task, host))
        return out

    def close(self) -> None:
        for proc in self.workers.values():
            kill_group(proc)


def celery_worker_kill(args: argparse.Namespace, br: BenchRun) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        redis = AofRedis(br.svc, "celery-kill-redis")
        redis.start()
        stack.callback(redis.stop)
        base = CeleryBaseline(br, redis, "celery-kill", args.visibility)
        stack.callback(base.close)
        for node in ("b1", "b2"):
            base.start_worker(node, 1)
        task = base.send(args.long)
        starts = lambda: [r for r in base.runs() if r[1] == "start" and r[2] == task]  # noqa: E731
        first = poll(starts, 60, "the task to start")[0]
        t_kill = time.time()
        kill_group(base.workers[first[3]])
        bound = args.visibility + 2 * RESTORE_INTERVAL + 60
        again = poll(lambda: starts()[1:], bound, "the task to start again", 0.1)[0]
        return {
            "visibility_timeout": args.visibility,
            "restore_interval": RESTORE_INTERVAL,
            "job_seconds": args.long,
            "killed_worker": first[3],
            "rerun_worker": again[3],
            "kill_after_running": t_kill - first[0],
            "running_again": again[0] - t_kill,
        }


def celery_redis_restart(args: argparse.Namespace, br: BenchRun) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        redis = AofRedis(br.svc, "celery-restart-redis")
        redis.start()
        stack.callback(redis.stop)
        base = CeleryBaseline(br, redis, "celery-restart", args.visibility)
        stack.callback(base.close)
        base.start_worker("b1", args.slots)
        ids = [base.send(args.short) for _ in range(args.jobs)]

        def count(event: str) -> Counter[str]:
            return Counter(r[2] for r in base.runs() if r[1] == event)

        poll(lambda: len(count("start")) >= args.slots, 60, "tasks running", 0.1)
        redis.kill9()
        t_up = redis.start()
        poll(lambda: all(count("end")[t] for t in ids), 120, "every task to complete", 0.1)
        t_done = time.time()
        # a message left unacknowledged comes back once the visibility timeout has passed
        watch_until = t_up + args.visibility + 2 * RESTORE_INTERVAL + args.short + 2
        while time.time() < watch_until or sum(count("start").values()) > sum(
            count("end").values()
        ):
            if time.time() > watch_until + 60:
                break
            time.sleep(0.5)
        starts = count("start")
        last_end = max(r[0] for r in base.runs() if r[1] == "end")
        return {
            "jobs": len(ids),
            "slots": args.slots,
            "job_seconds": args.short,
            "visibility_timeout": args.visibility,
            "all_completed": t_done - t_up,
            "last_run_ended": last_end - t_up,
            "watched": watch_until - t_up,
            "executions": [starts[t] for t in ids],
            "ran_twice": sum(1 for t in ids if starts[t] > 1),
        }


# -- the run and its report --------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    from offload.config import Settings

    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    info = machine(cpu=True, docker=True)
    res: dict[str, Any] = {
        "machine": info,
        "offload_visibility_default": defaults.visibility_timeout,
    }
    with bench_run("offload-recovery-", args.keep, " (logs inside)", mode=0o755) as br:
        say(args, f"1a. offload, default lease: SIGKILL a node running a {args.long:g}-s job ...")
        res["kill_default"] = offload_worker_kill(args, br, "kill-default", {})
        say(args, "1b. offload, short lease (4 s, sweep 1 s): the same ...")
        res["kill_short"] = offload_worker_kill(args, br, "kill-short", SHORT_LEASE)
        say(args, f"1c. Celery, visibility timeout {args.visibility} s: the same ...")
        res["kill_celery"] = celery_worker_kill(args, br)
        say(args, f"2a. offload: Redis kill -9 + restart, {args.jobs} jobs on {args.slots} slots")
        res["restart_offload"] = offload_redis_restart(args, br)
        say(args, f"2b. Celery: the same, watched for {args.visibility} s after the restart ...")
        res["restart_celery"] = celery_redis_restart(args, br)
    k, c = res["kill_default"], res["kill_celery"]
    res["kill_ratio_default"] = k["running_again"] / c["running_again"]
    res["kill_ratio_short"] = res["kill_short"]["running_again"] / c["running_again"]
    ro, rc = res["restart_offload"], res["restart_celery"]
    res["restart_ratio"] = ro["all_terminal"] / rc["all_completed"]
    return res


def report(res: dict[str, Any]) -> str:
    m = res["machine"]
    kd, ks, kc = res["kill_default"], res["kill_short"], res["kill_celery"]
    ro, rc = res["restart_offload"], res["restart_celery"]

    def lease_row(label: str, k: dict[str, Any], ratio: float) -> str:
        s = k["settings"]
        return (
            f"  {label:<44}{k['running_again']:>8.2f}   ratio {ratio:.2f}; requeued at "
            f"{k['requeued']:.2f} s, the dead attempt's container removed at "
            f"{k['first_container_gone']:.2f} s (lease {s['lease_ttl']:g} s, sweep "
            f"{s['sweep_interval']:g} s, heartbeat {s['heartbeat_interval']:g} s)"
        )

    return "\n".join(
        [
            f"recovery — {m['date']} on {m['host']}: {m['nproc']} CPU ({m['cpu']}), "
            f"{m['memory_gib']} GiB, kernel {m['kernel']}, docker {m['docker_server']}, "
            f"python {m['python']}, load at start {m['loadavg_at_start']}",
            "",
            f"1. worker SIGKILL → the job running again on the other node "
            f"(a {kd['job_seconds']:g}-s job; seconds after the kill)",
            lease_row("offload, default lease", kd, res["kill_ratio_default"]),
            lease_row("offload, short lease", ks, res["kill_ratio_short"]),
            f"  {'Celery, visibility timeout ' + str(kc['visibility_timeout']) + ' s':<44}"
            f"{kc['running_again']:>8.2f}   (restore sweep every {kc['restore_interval']} s; "
            f"killed {kc['kill_after_running']:.2f} s after the task started)",
            "  ratio = offload / Celery (lower is better). offload's own Celery visibility "
            f"timeout, its backstop of last resort: {res['offload_visibility_default']:,} s "
            "(not waited for)",
            "",
            f"2. Redis kill -9 + immediate restart, {ro['jobs']} jobs of {ro['job_seconds']:g} s "
            f"on {ro['slots']} slots (seconds after the restart)",
            f"  {'offload: every job terminal':<44}{ro['all_terminal']:>8.2f}   statuses "
            f"{ro['statuses']}, attempts {ro['attempts']}, container starts "
            f"{ro['container_starts']} → {ro['ran_twice']} ran twice",
            f"  {'Celery: every task completed':<44}{rc['all_completed']:>8.2f}   executions "
            f"{rc['executions']} → {rc['ran_twice']} ran twice (watched {rc['watched']:.0f} s; "
            f"last run ended at {rc['last_run_ended']:.2f} s)",
            f"  ratio = offload / Celery = {res['restart_ratio']:.2f}",
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Recovery after a worker SIGKILL and a Redis restart, offload vs Celery."
    )
    p.add_argument("--long", type=float, default=30, help="the killed job's length, seconds")
    p.add_argument("--visibility", type=int, default=60, help="the Celery baseline's, seconds")
    p.add_argument("--jobs", type=int, default=4, help="jobs in flight at the Redis restart")
    p.add_argument("--slots", type=int, default=2, help="worker slots at the Redis restart")
    p.add_argument("--short", type=float, default=5, help="their length, seconds")
    output_options(p, keep="keep the temp folder (worker and redis logs)")
    args = p.parse_args(argv)
    if args.visibility <= args.long:
        p.error("--visibility must exceed --long: Celery would run the task twice otherwise")
    if args.jobs < args.slots or args.slots < 1:
        p.error("--jobs must be at least --slots, and --slots at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    interrupted = "workers, redis-servers and job containers cleaned up"
    return finish(parse_args(argv), run, report, interrupted)


if __name__ == "__main__":
    sys.exit(main())
