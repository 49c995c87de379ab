"""Arrays at scale: what a ``map`` of N small items costs today, against the issue's goals.

    python bench/arrays.py                     # N = 10,000
    python bench/arrays.py --items 10000,100000

Self-contained: its own ``redis-server`` (no worker, no Docker). The items go to
``cpu-large``, which no node serves, so they stay queued. For each N it measures, in one run:

1. **Submit**: ``client.map`` of N items with a small ``params`` each (no input files) —
   items/s (goal: 10^6 in 20 s, 50,000/s; 10^5 in 3 s);
2. **Redis bytes per queued item** (``used_memory`` before and after; goal <= 150);
3. **The floor**: a raw redis-py pipeline (``transaction=False``, 1,000 commands a round
   trip) writing N values of that many bytes — what writing the same bytes costs, and the
   ratio of ``map`` to it;
4. **Status**: ``offload status ARRAY`` in a fresh process (goal <= 0.5 s at 10^6) and
   ``array.status()`` in process;
5. **Cancel**: ``array.cancel()`` of the N queued items (goal <= 1 s at 10^6);
6. **The per-item map before the item table** (``--baseline REV``, default ``a827a87``, the
   main that issue 16's first half landed on: one full job record and message per item),
   10,000 items in a fresh process from that revision's ``src`` (``git archive``): items/s
   and bytes a queued item, and the ratio of today's to it.

Each line prints the figure, its goal and the ratio. Record results in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def used(r: Any) -> int:
    return int(r.info("memory")["used_memory"])


def one(n: int, url: str, home: Path, say: Any) -> dict[str, Any]:
    import redis

    from offload.broker.status import JobStatus
    from offload.config import Settings
    from offload.producer.client import Client

    r = redis.Redis.from_url(url, decode_responses=True)
    r.flushdb()
    c = Client(Settings(redis_url=url, home=home))
    each = [{"params": {"photo": f"img-{i:07d}.jpg"}} for i in range(n)]
    base = used(r)
    t = time.perf_counter()
    array = c.map("offload/base", ["true"], each=each, cpu=2)
    submit_s = time.perf_counter() - t
    per_item = (used(r) - base) / n
    out: dict[str, Any] = {"items": n, "submit_s": submit_s, "bytes_per_item": per_item}
    say(
        f"N={n:,}: map {submit_s:.2f} s = {n / submit_s:,.0f} items/s "
        f"(goal 50,000/s: ratio {n / submit_s / 50_000:.3f}); "
        f"Redis {per_item:,.0f} B a queued item (goal <= 150: ratio {per_item / 150:.1f})"
    )

    # the floor: the same bytes written by a raw pipeline
    value = "x" * max(1, int(per_item))
    t = time.perf_counter()
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.set(f"floor:{i}", value)
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    floor_s = time.perf_counter() - t
    out["floor_s"] = floor_s
    say(
        f"  floor (raw pipeline, same bytes): {floor_s:.2f} s; "
        f"map / floor = {submit_s / floor_s:.1f}x"
    )
    for start in range(0, n, 10_000):
        r.delete(*[f"floor:{i}" for i in range(start, min(n, start + 10_000))])

    env = {**os.environ, "OFFLOAD_REDIS_URL": url, "OFFLOAD_HOME": str(home)}
    cmd = [sys.executable, "-m", "offload", "status", array.id]
    subprocess.run(cmd, env=env, capture_output=True, check=True, timeout=600)  # compiles
    t = time.perf_counter()
    shown = subprocess.run(cmd, env=env, capture_output=True, check=True, timeout=600, text=True)
    status_s = time.perf_counter() - t
    t = time.perf_counter()
    st = array.status()
    in_process_s = time.perf_counter() - t
    assert st.by_status == {JobStatus.QUEUED: n}, st.by_status
    out["status_s"], out["status_in_process_s"] = status_s, in_process_s
    say(
        f"  offload status ARRAY: {status_s:.2f} s (goal <= 0.5 s: ratio {status_s / 0.5:.2f}); "
        f"array.status() in process {in_process_s:.2f} s — {shown.stdout.splitlines()[1]}"
    )

    t = time.perf_counter()
    before = array.cancel()
    cancel_s = time.perf_counter() - t
    assert before == {JobStatus.QUEUED: n}, before
    assert set(array.statuses()) == {JobStatus.CANCELLED}
    out["cancel_s"] = cancel_s
    say(f"  array.cancel() of {n:,} queued items: {cancel_s:.2f} s (goal <= 1 s at 10^6)")
    c.broker.close()
    return out


BASELINE = """
import json, sys, time, redis
from offload.config import Settings
from offload.producer.client import Client
url, home, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = redis.Redis.from_url(url)
r.flushdb()
c = Client(Settings(redis_url=url, home=home))
base = int(r.info("memory")["used_memory"])
t = time.perf_counter()
c.map("offload/base", ["true"], each=[{"params": {"photo": f"img-{i:07d}.jpg"}}
      for i in range(n)], cpu=2)
s = time.perf_counter() - t
grown = int(r.info("memory")["used_memory"]) - base
print(json.dumps({"submit_s": s, "bytes_per_item": grown / n}))
r.flushdb()
"""


def baseline(rev: str, n: int, url: str, home: Path, tmp: Path, say: Any) -> dict[str, Any]:
    """``map`` of ``n`` items by the tree of revision ``rev``, in a process of its own."""
    tree = tmp / f"tree-{rev}"
    tree.mkdir()
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(root), "archive", rev, "src"], capture_output=True,
                             check=True, timeout=120)  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    done = subprocess.run([sys.executable, "-c", BASELINE, url, str(home), str(n)], env=env,
                          capture_output=True, text=True, timeout=1800, check=True)  # fmt: skip
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    out["rev"], out["items"] = rev, n
    say(
        f"baseline {rev} (one record a job): map of {n:,} {out['submit_s']:.2f} s = "
        f"{n / out['submit_s']:,.0f} items/s; Redis {out['bytes_per_item']:,.0f} B a queued item"
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--items", default="10000", help="array sizes, comma separated")
    p.add_argument("--baseline", default="a827a87", help="revision of the per-item map ('' off)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    say = (lambda *a: None) if args.json else print

    from common import Services, start_redis
    from offload.cache.keys import init_key
    from offload.config import Settings

    tmp = Path(tempfile.mkdtemp(prefix="offload-arrays-"))
    svc = Services(tmp)
    results = []
    try:
        url = start_redis(svc)
        home = tmp / "home"
        home.mkdir()
        init_key(Settings(redis_url=url, home=home).key_path)
        say(f"load average at start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
        base = baseline(args.baseline, 10_000, url, home, tmp, say) if args.baseline else None
        for n in (int(x) for x in args.items.split(",")):
            res = one(n, url, home, say)
            if base is not None:
                rate = (n / res["submit_s"]) / (base["items"] / base["submit_s"])
                smaller = base["bytes_per_item"] / max(1.0, res["bytes_per_item"])
                res["vs_baseline"] = {"items_per_s": rate, "bytes_smaller": smaller}
                say(f"  against {args.baseline}: {rate:.1f}x the items/s, {smaller:.0f}x fewer "
                    "bytes a queued item")  # fmt: skip
            results.append(res)
    finally:
        svc.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
