"""Scale: Redis bytes per job by state, submit rates, `ls` and `status` with a big history,
and the time from a job's end to its archiving.

Self-contained: starts its own ``redis-server`` (loopback, free port, no persistence) in a
temporary ``OFFLOAD_HOME`` with a fresh cluster key; no worker and no Docker are needed (jobs
are submitted to ``cpu-large``, which no node serves, and moved through their states by the
broker's own calls, as a worker would).

1. **Bytes per job**: ``used_memory`` before and after N jobs are submitted (``Client.map``:
   record, view, timeline, index entries and the Celery message), started
   (``begin_attempt`` and ``running``: the lease and the node's running set), finished
   (``succeeded``: the end-of-log marker) and archived (the archiver's own pass; what is left
   is the job's ``offload:jobs`` member and its ``offload:archive:where`` field, measured
   with ``MEMORY USAGE``).
2. **Submit rate**: N single ``Client.submit`` calls from one client, and one ``Client.map``.
3. **History**: for each size H, H synthetic finished jobs are written straight into the
   archive in the archiver's own format (segments of ``archive_batch`` jobs, sealed into the
   store, with the same Redis index entries the archiver writes): no job is run, so a
   million jobs take a minute, not a day. Then the wall time of ``offload ls`` (first page),
   ``offload ls --label db=orders`` and ``offload status ID`` of an archived job, each as
   fresh processes (the min and the median of 10), next to ``python -c pass`` and
   ``offload --help`` in the same run, and ``client.jobs(20)`` in-process.
4. **End to archived**: N jobs end; the archiver runs as the sweeper runs it (every
   ``--sweep-interval`` s, ``archive_after`` = ``--archive-after``); the time from each job's
   end to its archiving (the median and the worst), and one pass's time.

    python bench/scale.py                            # histories of 10^4 and 10^5 jobs
    python bench/scale.py --history 10000,100000,1000000 --json > result.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wall(cmd: list[str], env: dict[str, str], runs: int = 10) -> tuple[float, float]:
    """The min and the median wall time of ``runs`` fresh processes running ``cmd``, with
    the bytecode cached as an installed package has it (pip compiles at install; a
    PYTHONDONTWRITEBYTECODE of this shell would have every run compile offload afresh)."""
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(cmd, env=env, capture_output=True, check=True, timeout=120)  # compiles
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True, check=True, timeout=120)
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def used(r: Any) -> int:
    return int(r.info("memory")["used_memory"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jobs", type=int, default=2000, help="jobs for the bytes and rates")
    p.add_argument("--history", default="10000,100000", help="history sizes, comma separated")
    p.add_argument("--archive-after", type=float, default=1.0)
    p.add_argument("--sweep-interval", type=float, default=0.5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="offload-scale-"))
    port = free_port()
    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed"
    redis_proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
    )
    try:
        out = run(args, tmp, f"redis://127.0.0.1:{port}/0")
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(out, indent=2))


def run(args: argparse.Namespace, tmp: Path, url: str) -> dict[str, Any]:
    import redis

    from offload.broker import keys
    from offload.broker.archive import Entry, encode_segment
    from offload.broker.status import JobStatus, Reason
    from offload.cache.keys import init_key
    from offload.config import Settings
    from offload.producer.client import Client
    from offload.spec import JobSpec

    home = tmp / "home"
    home.mkdir()
    env = {**os.environ, "OFFLOAD_REDIS_URL": url, "OFFLOAD_HOME": str(home)}
    os.environ.update({"OFFLOAD_REDIS_URL": url, "OFFLOAD_HOME": str(home)})
    settings = Settings(redis_url=url, home=home, archive_after=args.archive_after)
    init_key(settings.key_path)
    r = redis.Redis.from_url(url, decode_responses=True)
    for _ in range(100):
        try:
            r.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    c = Client(settings)
    rec = c.broker.records
    n = args.jobs
    out: dict[str, Any] = {"jobs": n}
    say = (lambda *a: None) if args.json else print

    # 1. bytes per job, by state
    base = used(r)
    jobs = c.map("offload/base", ["true"], each=[{"params": {"i": i}} for i in range(n)], cpu=2)
    ids = [j.id for j in jobs]
    queued = used(r)
    for job_id in ids:
        _, attempt = rec.begin_attempt(job_id, "bench-node")
        rec.transition(job_id, JobStatus.RUNNING, attempt=attempt)
    running = used(r)
    for job_id in ids:
        rec.transition(job_id, JobStatus.SUCCEEDED, attempt=1, exit_code=0, outputs={})
    finished = used(r)
    rec.archive.after, rec.archive.batch = 0, 1000
    while rec.archive.run(c.broker.server_time()).archived:
        pass
    kept = sum(
        int(r.memory_usage(k, samples=0) or 0)
        for k in (keys.JOBS_INDEX, keys.ARCHIVE_WHERE, keys.ARCHIVE_SEGMENTS, keys.ARCHIVE_TIMES)
    )
    out["bytes"] = {
        "queued": (queued - base) / n,
        "running": (running - base) / n,
        "finished": (finished - base) / n,
        "archived": kept / n,
    }
    say("Redis bytes per job: " + ", ".join(f"{k} {v:,.0f}" for k, v in out["bytes"].items()))
    r.flushdb()

    # 2. submit rates
    m = min(n, 1000)
    t = time.perf_counter()
    for i in range(m):
        c.submit("offload/base", ["true"], cpu=2, params={"i": i})
    single = m / (time.perf_counter() - t)
    t = time.perf_counter()
    c.map("offload/base", ["true"], each=[{"params": {"i": i}} for i in range(n)], cpu=2)
    mapped = n / (time.perf_counter() - t)
    out["submit_per_s"] = {"single": single, "map": mapped}
    say(f"submit: {single:,.0f}/s single calls, {mapped:,.0f}/s in one map")
    r.flushdb()

    # 3. ls and status with a big history (synthetic archived jobs)
    floor, _ = wall([sys.executable, "-c", "pass"], env)
    out["python_pass_s"] = floor
    cli = [sys.executable, "-m", "offload"]
    out["help_s"], out["help_median_s"] = wall([*cli, "--help"], env)
    out["history"] = []
    spec = JobSpec(image="offload/base", command=("true",), labels={"db": "users"})
    orders = JobSpec(image="offload/base", command=("true",), labels={"db": "orders"})
    store = rec.archive.store
    assert store is not None
    made, t0, seg_no = 0, time.time() - 86400, 0
    for size in sorted(int(s) for s in args.history.split(",")):
        t = time.perf_counter()
        while made < size:
            part = min(1000, size - made)
            entries: list[Entry] = []
            index: dict[str | bytes, bytes | float | int | str] = {}
            for i in range(made, made + part):
                job_id = f"{i:032x}"
                at = t0 + i * 0.01
                s = orders if i % 1000 == 0 else spec
                h = {"id": job_id, "spec": s.encode(), "view": "{}", "name": "bench",
                     "image": s.image, "class": "cpu-small", "status": "succeeded",
                     "created_at": repr(at), "updated_at": repr(at + 1),
                     "finished_at": repr(at + 1), "attempt": "1", "exit_code": "0"}  # fmt: skip
                ev = [(f"{int(at * 1000)}-0", {"status": "succeeded", "at": repr(at + 1),
                                                "node": "n", "attempt": "1"})]  # fmt: skip
                entries.append(Entry(job_id, h, ev, [("1-0", {"eof": "succeeded"})]))
                index[job_id] = at
            seg_no += 1
            ref = store.put(encode_segment(str(seg_no), entries))
            pipe = r.pipeline(transaction=False)
            pipe.zadd(keys.JOBS_INDEX, index)
            pipe.hset(keys.ARCHIVE_WHERE, mapping=dict.fromkeys(index, str(seg_no)))
            pipe.hset(keys.ARCHIVE_SEGMENTS, str(seg_no), ref)
            pipe.zadd(keys.ARCHIVE_TIMES, {str(seg_no): time.time()})
            pipe.set(keys.ARCHIVE_SEQ, seg_no)
            pipe.execute()
            made += part
        build = time.perf_counter() - t
        some = f"{size // 2:032x}"
        t = time.perf_counter()
        first = c.jobs(20)
        page_in = time.perf_counter() - t
        row: dict[str, Any] = {"history": size, "made_in_s": build}
        for name, argv in (
            ("ls", ["ls"]),
            ("ls_label", ["ls", "--label", "db=orders", "-n", "5"]),
            ("status", ["status", some]),
        ):
            row[f"{name}_s"], row[f"{name}_median_s"] = wall([*cli, *argv], env)
        row["jobs_in_process_s"] = page_in
        row["redis_used_mb"] = used(r) / 2**20
        assert len(first) == 20
        out["history"].append(row)
        shown = ", ".join(
            f"{name} {row[f'{key}_s']:.2f}s (median {row[f'{key}_median_s']:.2f})"
            for name, key in (("ls", "ls"), ("ls --label", "ls_label"), ("status", "status"))
        )
        say(
            f"history {size:>9,}: {shown}; python -c pass {floor:.2f}s, --help "
            f"{out['help_s']:.2f}s; client.jobs(20) {page_in * 1000:.0f} ms in process; "
            f"made in {build:.0f}s, Redis {row['redis_used_mb']:.0f} MiB"
        )
    r.flushdb()

    # 4. end to archived
    rec.archive.after, rec.archive.batch = args.archive_after, settings.archive_batch
    jobs = c.map("offload/base", ["true"], each=[{"params": {"i": i}} for i in range(n)], cpu=2)
    for j in jobs:
        rec.transition(j.id, JobStatus.CANCELLED, reason=Reason.CANCELLED)
    ended = {str(k): float(v) for k, v in r.zrange(keys.ENDED, 0, -1, withscores=True)}
    lags, passes = [], []
    deadline = time.monotonic() + 120
    while r.zcard(keys.ENDED) and time.monotonic() < deadline:
        time.sleep(args.sweep_interval)  # the sweeper's interval
        before = set(ended) - set(r.zrange(keys.ENDED, 0, -1))
        t = time.perf_counter()
        done = rec.archive.run(c.broker.server_time())
        if done.archived:
            passes.append(time.perf_counter() - t)
        now = c.broker.server_time()
        gone = set(ended) - set(r.zrange(keys.ENDED, 0, -1)) - before
        lags += [now - ended[j] for j in gone]
    out["end_to_archived_s"] = {
        "median": statistics.median(lags),
        "max": max(lags),
        "pass_s": statistics.median(passes),
        "batch": settings.archive_batch,
    }
    say(
        f"end to archived ({n} jobs, archive_after {args.archive_after:g}s, sweep every "
        f"{args.sweep_interval:g}s, {settings.archive_batch} a pass): median "
        f"{out['end_to_archived_s']['median']:.2f}s, max {out['end_to_archived_s']['max']:.2f}s;"
        f" one pass {out['end_to_archived_s']['pass_s'] * 1000:.0f} ms"
    )
    return out


if __name__ == "__main__":
    main()
