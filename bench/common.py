"""What the benchmark scripts share: services, a private cluster, machine facts, reporting.

Imported by ``bench/job_overhead.py``, ``bench/cache.py`` and ``bench/autoscale.py`` (run as
``python bench/<script>.py``, their folder is on ``sys.path``). Only the standard library is
imported at module level: ``bench/cache.py`` measures the memory of child processes that
import it, so redis, Celery and offload are imported where they are used.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from offload.config import Settings
    from offload.producer.client import Client

SIGNALS = (signal.SIGINT, signal.SIGTERM)
MiB = 1024 * 1024

# -- waiting and processes ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> float:
    """Poll ``check`` until true; returns the wall time (time.time()) it first was."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.time()
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


def stop_process_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM to the process's group, SIGKILL if it has not exited after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class Services:
    """Processes this run started (each in its own session), stopped in reverse order."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start ``argv`` with stdout and stderr in ``<root>/<name>.log``."""
        log = (self.root / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        log.close()
        self.procs.append((name, proc))
        return proc

    def log_tail(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def logs(self) -> str:
        """The tail of every service's log, for a run that failed."""
        return "\n".join(f"{name}.log (tail):\n{self.log_tail(name)}" for name, _ in self.procs)

    def up(self, name: str, proc: subprocess.Popen[bytes], check: Callable[[], bool]) -> None:
        """Wait until ``check`` is true; fail with the log's tail if ``proc`` exits first."""

        def ok() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the {name} exited at start:\n{self.log_tail(name)}")
            return check()

        wait_for(ok, 90, f"the {name}")

    def close(self) -> None:
        for _, proc in reversed(self.procs):
            stop_process_group(proc, 30)
        self.procs.clear()


def start_redis(svc: Services) -> str:
    """A private ``redis-server`` on a free loopback port, no persistence; its URL."""
    import redis

    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (see `make setup`)")
    port = free_port()
    data = svc.root / "redis"
    data.mkdir()
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    proc = svc.spawn("redis", [*argv, "--appendonly", "no", "--dir", str(data)], dict(os.environ))
    url = f"redis://127.0.0.1:{port}/0"
    r = redis.Redis.from_url(url)

    def ping() -> bool:
        try:
            return bool(r.ping())
        except redis.ConnectionError:
            return False

    svc.up("redis", proc, ping)
    r.close()
    return url


# -- a private cluster -------------------------------------------------------------------------


@dataclass
class Cluster:
    """A redis-server and an ``OFFLOAD_HOME`` with a cluster key; ``env`` is for its nodes."""

    url: str
    home: Path
    env: dict[str, str]
    settings: Settings


def start_cluster(
    svc: Services,
    slots: int | None = None,
    env: dict[str, str] | None = None,
    drop: Iterable[str] = (),
) -> Cluster:
    """Start redis-server, make ``<root>/home`` and its key (``offload key init``).

    With ``slots``, the settings and ``env`` name one worker node (``bench-<random>``) with
    that many slots, for :func:`start_worker`. Other ``OFFLOAD_*`` variables of ``env`` (the
    caller's environment by default) apply to both sides, except those in ``drop``.
    """
    from offload.config import Settings

    url = start_redis(svc)
    home = svc.root / "home"
    home.mkdir()
    node_env = {**(os.environ if env is None else env)}
    node_env.update(OFFLOAD_REDIS_URL=url, OFFLOAD_HOME=str(home))
    kw: dict[str, Any] = {}
    if slots is not None:
        kw = {"node_name": f"bench-{uuid.uuid4().hex[:8]}", "worker_slots": slots}
        node_env.update(OFFLOAD_NODE_NAME=kw["node_name"], OFFLOAD_WORKER_SLOTS=str(slots))
    for name in drop:
        node_env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-m", "offload", "key", "init"],
        env=node_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0 and "No such command" not in proc.stderr:  # older tree: no key
        raise RuntimeError(f"`offload key init` failed:\n{proc.stdout}{proc.stderr}")
    return Cluster(url, home, node_env, Settings(redis_url=url, home=home, **kw))


def start_worker(svc: Services, cluster: Cluster, loglevel: str = "WARNING") -> Client:
    """``python -m offload worker`` for the cluster's node; a client, once the node answers ping."""
    from offload.producer.client import Client

    argv = [sys.executable, "-m", "offload", "worker", "--loglevel", loglevel]
    proc = svc.spawn("worker", argv, cluster.env)
    client = Client(cluster.settings)
    node = f"offload@{cluster.settings.node_name}"
    svc.up(
        "worker", proc, lambda: any(node in r for r in client.broker.app.control.ping(timeout=0.3))
    )
    return client


def first_at(timeline: Iterable[Any]) -> dict[str, float]:
    """When each status first occurs in a job's timeline (wall clock)."""
    at: dict[str, float] = {}
    for ev in timeline:
        at.setdefault(ev.status.value, ev.at)
    return at


# -- a run: temp folder, signals, cleanup ------------------------------------------------------


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@dataclass
class BenchRun:
    """A run's temporary folder, its services, and what to undo at the end (last first)."""

    root: Path
    svc: Services
    cleanup: contextlib.ExitStack
    error_logs: Callable[[], str]


@contextlib.contextmanager
def bench_run(
    prefix: str, keep: bool, kept_note: str = "", parent: Path | None = None, mode: int = 0
) -> Iterator[BenchRun]:
    """A temporary folder (``mode``: chmod it) and a :class:`Services`, removed at the end.

    Ctrl-C and kill both end the run through the cleanup (SIGINT is ignored by default in a
    background job of a non-interactive shell; take it back): the callbacks the body put on
    ``cleanup`` run (last first), then the services stop. A failure prints ``error_logs()``.
    """
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    if mode:
        os.chmod(root, mode)
    svc = Services(root)
    stack = contextlib.ExitStack()
    stack.callback(svc.close)
    run = BenchRun(root, svc, stack, svc.logs)
    old = {s: signal.signal(s, _raise_interrupt) for s in SIGNALS}
    try:
        yield run
    except Exception:
        print(run.error_logs(), file=sys.stderr)
        raise
    finally:
        for s in old:  # no second interrupt mid-cleanup
            signal.signal(s, signal.SIG_IGN)
        try:
            stack.close()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if keep:
                print(f"kept {root}{kept_note}", file=sys.stderr)
            else:
                shutil.rmtree(root, ignore_errors=True)


def say(args: argparse.Namespace, msg: str) -> None:
    """A progress message on stderr, unless ``--quiet``."""
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


def output_options(p: argparse.ArgumentParser, keep: str) -> None:
    """The options every benchmark has: --json, --quiet, --keep (``keep``: its help)."""
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    p.add_argument("--keep", action="store_true", help=keep)


def finish(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
    interrupted: str,
) -> int:
    """Run the benchmark; print the report (or JSON with ``--json``); 130 on Ctrl-C."""
    try:
        res = run(args)
    except KeyboardInterrupt:
        print(f"interrupted; {interrupted}", file=sys.stderr)
        return 130
    print(json.dumps(res, indent=2) if args.json else report(res))
    return 0


# -- machine facts, statistics, tables ---------------------------------------------------------


def _docker_says(command: str, fmt: str) -> str:
    try:
        out = subprocess.run(
            ["docker", command, "--format", fmt], capture_output=True, text=True, timeout=30
        )
        return out.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def _proc_field(path: str, prefix: str) -> str | None:
    """The value after ``:`` of the first line of ``path`` that starts with ``prefix``."""
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    return None


def machine(
    cpu: bool = False, docker: bool = False, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Date, host, CPUs (``cpu``: and the model), memory, kernel, python, (``docker``: the
    engine's and CLI's versions and setup), ``extra``, and the load average now."""
    mem = _proc_field("/proc/meminfo", "MemTotal:")
    res: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "nproc": os.cpu_count(),
    }
    if cpu:
        res["cpu"] = _proc_field("/proc/cpuinfo", "model name") or ""
    res["memory_gib"] = round(int(mem.split()[0]) * 1024 / 2**30, 1) if mem else 0.0
    res["kernel"] = platform.release()
    res["python"] = platform.python_version()
    if docker:
        res["docker_server"] = _docker_says("version", "{{.Server.Version}}")
        res["docker_client"] = _docker_says("version", "{{.Client.Version}}")
        res["docker_setup"] = _docker_says(
            "info", "{{.Driver}}, cgroup v{{.CgroupVersion}}, {{.DefaultRuntime}}"
        )
    res.update(extra or {})
    res["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return res


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


STATS = ("median", "p90", "mean", "min", "max")


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p90": pct(values, 90),
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
    }


def stats_header(width: int) -> str:
    """The header of a table of :func:`summary` rows, ``width`` for the label column."""
    return f"  {'path':<{width}}" + "".join(f"{k:>8}" for k in STATS)


def stats_row(label: str, st: dict[str, float], width: int, scale: float = 1000.0) -> str:
    """One :func:`summary` as a table row, in milliseconds (``scale``)."""
    return f"  {label:<{width}}" + "".join(f"{st[k] * scale:>8.1f}" for k in STATS)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1GiB, 256m, 1048576)")
    mult = {"": 1, "k": 1024, "m": MiB, "g": 1024 * MiB, "t": 1024**4}[m.group(2)]
    size = int(float(m.group(1)) * mult)
    if size < 1:
        raise argparse.ArgumentTypeError("the size must be at least 1 byte")
    return size


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
