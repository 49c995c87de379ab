"""Metrics overhead: per-job latency of a no-op job with the node's metrics on and off.

Self-contained: one ``redis-server`` and one worker node (two slots) in a temporary
``OFFLOAD_HOME``; the worker is started with metrics off (``OFFLOAD_METRICS_PORT`` unset), then
on (``OFFLOAD_METRICS_PORT=0``, its endpoint scraped once a second meanwhile, as a Prometheus
would — ten times more often than the default), alternating for ``--rounds`` rounds so drift
hits both alike; each round runs ``--jobs`` sequential no-op jobs (submit → result) after a
warm-up. Ratio = median latency on / median latency off (goal ≤ 1.02).

It also times the hooks themselves in this process, against the same Redis: an attempt's
start (one pipelined round trip: its class and timeline tail) and end (counters and
histograms in multiprocess mode, a write to mapped memory), which bounds what metrics add
to a job however noisy the end-to-end figure is.

    python bench/metrics_overhead.py                 # defaults: 3 rounds of 20 jobs
    python bench/metrics_overhead.py --rounds 2 --jobs 10 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from common import (
    bench_run,
    finish,
    machine,
    output_options,
    say,
    start_cluster,
    start_worker,
    stop_process_group,
    summary,
)

IMAGE = "offload/base"


def one_job(client: Any) -> float:
    t0 = time.perf_counter()
    job = client.submit(IMAGE, ["true"], cpu=1.0, memory="512m", cache=False, name="bench-noop")
    job.result(timeout=120)
    return time.perf_counter() - t0


def scraper(home: Path, node: str, stop: threading.Event, count: list[int]) -> None:
    """Scrape the node's endpoint once a second until ``stop``."""
    target = home / "run" / "metrics" / f"{node}.json"
    while not stop.is_set():
        try:
            where = json.loads(target.read_text())[0]["targets"][0]
            with urllib.request.urlopen(f"http://{where}/metrics", timeout=2) as r:
                r.read()
            count[0] += 1
        except (OSError, ValueError, KeyError, IndexError):
            pass
        stop.wait(1.0)


def hook_cost(url: str, n: int) -> dict[str, float]:
    """Microseconds per attempt of the hooks, metrics on (multiprocess files) and off."""
    import redis

    from offload.broker.records import JobRecords
    from offload.broker.status import JobStatus
    from offload.worker import metrics

    r = redis.Redis.from_url(url, decode_responses=True)
    records = JobRecords(r, record_ttl=60, log_max_entries=100)
    job = "bench-hooks"
    r.hset(f"offload:job:{job}", "class", "cpu-small")
    now = time.time()
    r.xadd(f"offload:job:{job}:events", {"status": "queued", "at": str(now), "attempt": "0"})
    r.xadd(f"offload:job:{job}:events", {"status": "staging", "at": str(now), "attempt": "1"})

    def per_attempt() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            m = metrics.attempt_began(records, job, 1)
            if m is not None:
                m.ended(JobStatus.SUCCEEDED, "none", {"running": 0.3})
        return (time.perf_counter() - t0) / n * 1e6

    off = per_attempt()
    with tempfile.TemporaryDirectory() as home:
        metrics.enable(Path(home), "bench")
        on = per_attempt()
        t0 = time.perf_counter()
        for _ in range(n):
            metrics.current().ended.labels("bench", "cpu-small", "succeeded", "none").inc()  # type: ignore[union-attr]
        inc = (time.perf_counter() - t0) / n * 1e6
    # a round trip to Redis alone, for scale
    t0 = time.perf_counter()
    for _ in range(n):
        r.ping()
    rtt = (time.perf_counter() - t0) / n * 1e6
    return {"off_us": off, "on_us": on, "counter_inc_us": inc, "redis_ping_us": rtt}


def run(args: argparse.Namespace) -> dict[str, Any]:
    info = machine(docker=True)
    samples: dict[str, list[float]] = {"off": [], "on": []}
    scrapes = [0]
    with bench_run("offload-metrics-bench-", args.keep, " (worker.log inside)", mode=0o755) as br:
        cluster = start_cluster(br.svc, 2)
        modes = {
            "off": cluster,
            "on": dataclasses.replace(cluster, env={**cluster.env, "OFFLOAD_METRICS_PORT": "0"}),
        }
        for i in range(args.rounds):
            for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
                say(args, f"round {i + 1}: metrics {mode}, {args.jobs} jobs ...")
                client = start_worker(br.svc, modes[mode])
                proc = br.svc.procs[-1][1]
                stop = threading.Event()
                t = threading.Thread(
                    target=scraper,
                    args=(cluster.home, cluster.settings.node_name, stop, scrapes),
                    daemon=True,
                )
                if mode == "on":
                    t.start()
                for _ in range(args.warmup):
                    one_job(client)
                samples[mode] += [one_job(client) for _ in range(args.jobs)]
                stop.set()
                if t.is_alive():
                    t.join(5)
                stop_process_group(proc, 30)
                br.svc.procs.pop()
        hooks = hook_cost(cluster.url, args.hook_runs)
    off, on = summary(samples["off"]), summary(samples["on"])
    return {
        "machine": info,
        "jobs_per_mode": len(samples["off"]),
        "off": off,
        "on": on,
        "ratio": on["median"] / off["median"],
        "goal": "ratio <= 1.02",
        "scrapes": scrapes[0],
        "hooks": hooks,
        "hook_share": (hooks["on_us"] - hooks["off_us"]) / 1e6 / off["median"],
        "samples": samples,
    }


def report(res: dict[str, Any]) -> str:
    m, h = res["machine"], res["hooks"]
    ms = 1000.0
    return "\n".join(
        [
            f"metrics overhead — {m['date']} on {m['host']}: {m['nproc']} CPU, "
            f"{m['memory_gib']} GiB, kernel {m['kernel']}, docker {m['docker_server']}, "
            f"python {m['python']}, load at start {m['loadavg_at_start']}",
            "",
            f"no-op job latency, {res['jobs_per_mode']} jobs per mode (alternating rounds); ms",
            f"  {'':<14}{'median':>8}{'p90':>8}{'mean':>8}",
            *(
                f"  metrics {k:<6}{res[k]['median'] * ms:>8.1f}{res[k]['p90'] * ms:>8.1f}"
                f"{res[k]['mean'] * ms:>8.1f}"
                for k in ("off", "on")
            ),
            f"  ratio = on / off median = {res['ratio']:.3f}   (goal ≤ 1.02); "
            f"{res['scrapes']} scrapes of the node meanwhile",
            "",
            f"hooks per attempt (start + end, this process): off {h['off_us']:.1f} µs, "
            f"on {h['on_us']:.1f} µs (a Redis PING alone: {h['redis_ping_us']:.1f} µs; "
            f"a counter increment: {h['counter_inc_us']:.2f} µs)",
            f"  = {res['hook_share'] * 100:.3f} % of a no-op job's median latency",
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Per-job overhead of the node's metrics, on vs off.")
    p.add_argument("--rounds", type=int, default=3, help="off/on rounds (alternating)")
    p.add_argument("--jobs", type=int, default=20, help="sequential jobs per round and mode")
    p.add_argument("--warmup", type=int, default=3, help="warm-up jobs after each start")
    p.add_argument("--hook-runs", type=int, default=2000, help="iterations of the hook timing")
    output_options(p, keep="keep the temp folder (worker.log)")
    args = p.parse_args(argv)
    for name in ("rounds", "jobs", "hook_runs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} is too small")
    return args


def main(argv: list[str] | None = None) -> int:
    return finish(parse_args(argv), run, report, "worker and redis-server stopped")


if __name__ == "__main__":
    sys.exit(main())
