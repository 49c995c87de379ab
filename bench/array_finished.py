"""Redis bytes a finished array item costs: an array run to the end by a real worker, archived.

Self-contained: its own ``redis-server`` and ``OFFLOAD_HOME``, one ``offload worker`` (two
slots, ``OFFLOAD_ARCHIVE_AFTER=600`` and the default ``OFFLOAD_ARCHIVE_ITEMS_AFTER`` of 30 s,
sweeps every 0.5 s), Docker for the items. An array of N no-op items (``true``, a small
``params`` each, ``batch=500``) runs to the end; ``used_memory`` against its value before the
map gives the bytes an ended item holds before the archive takes it (its full record), and,
once the archiver has moved every item out of Redis (30 s after its end), the bytes a
finished item keeps (goal of issue 16: <= 150, outputs included, logs excepted). The floor,
in the same run: the same number of 8-byte values written by a raw pipeline (what the
array's archive index holds per item), and the ratio.

    python bench/array_finished.py               # N = 2,000
    python bench/array_finished.py --items 10000 --json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

from common import bench_run, finish, machine, output_options, say, start_cluster, start_worker


def run(args: argparse.Namespace) -> dict[str, Any]:
    from offload.broker import keys

    n = args.items
    facts = machine(cpu=True, docker=True)
    env = {
        **os.environ,
        "OFFLOAD_ARCHIVE_AFTER": "600",  # a job's; an item's is OFFLOAD_ARCHIVE_ITEMS_AFTER
        "OFFLOAD_SWEEP_INTERVAL": "0.5",
        "OFFLOAD_ARCHIVE_BATCH": "5000",
    }
    with bench_run("offload-bench-finished-", args.keep) as br:
        cluster = start_cluster(br.svc, slots=2, env=env)
        c = start_worker(br.svc, cluster)
        r = c.broker.redis
        say(args, "warming up (a first array: the image, the worker's first containers)")
        c.map("offload/base", ["true"], each=[{}] * 4, batch=2, cache=False).wait(timeout=300)
        while r.zcard(keys.ENDED):  # archived, so what follows counts only the array
            time.sleep(0.5)
        base = int(r.info("memory")["used_memory"])
        say(args, f"running {n:,} items (batch 500)")
        t0 = time.monotonic()
        each = [{"params": {"n": i}} for i in range(n)]
        array = c.map("offload/base", ["true"], each=each, batch=500, cache=False)
        while not array.status().done:
            time.sleep(1)
        ran = time.monotonic() - t0
        ended = (int(r.info("memory")["used_memory"]) - base) / n  # not archived yet
        st = array.status()
        if st.succeeded != n:
            raise RuntimeError(f"not every item succeeded: {st.by_status}")
        say(args, "waiting for the archiver")
        sample = array.ids[:: max(1, n // 10)]
        while r.zcard(keys.ENDED) or any(r.exists(keys.job(j)) for j in sample):
            time.sleep(0.5)
        time.sleep(1)
        per_item = (int(r.info("memory")["used_memory"]) - base) / n
        read_back = array[n - 1].record()  # from the archive
        floor_t = time.perf_counter()
        pipe = r.pipeline(transaction=False)
        for i in range(n):
            pipe.setrange("floor", i * 8, "00000001")
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
        floor_s = time.perf_counter() - floor_t
        floor_bytes = int(r.memory_usage("floor") or 0) / n
    return {
        "machine": facts,
        "items": n,
        "ran_s": ran,
        "bytes_per_finished_item": per_item,
        "bytes_per_ended_item_before_archive": ended,
        "floor_bytes_per_item": floor_bytes,
        "floor_s": floor_s,
        "read_back": read_back.status.value,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def report(res: dict[str, Any]) -> str:
    m = res["machine"]
    return "\n".join(
        [
            f"{m['date']}  {m['host']}  {m['nproc']} CPUs ({m.get('cpu', '')})",
            f"{res['items']:,} items ran in {res['ran_s']:.1f} s; the last read back from the "
            f"archive: {res['read_back']}",
            f"Redis bytes an ended item before the archive takes it (30 s after its end): "
            f"{res['bytes_per_ended_item_before_archive']:,.0f}",
            f"Redis bytes a finished, archived item: {res['bytes_per_finished_item']:.0f} "
            f"(goal <= 150: ratio {res['bytes_per_finished_item'] / 150:.2f})",
            f"floor (8 bytes an item, raw SETRANGE): {res['floor_bytes_per_item']:.1f} bytes an "
            f"item; offload / floor = "
            f"{res['bytes_per_finished_item'] / max(res['floor_bytes_per_item'], 1e-9):.0f}x",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=2000, help="items in the array (default 2,000)")
    output_options(p, "keep the temporary folder")
    return finish(p.parse_args(argv), run, report, "redis-server and worker stopped")


if __name__ == "__main__":
    if subprocess.run(["docker", "version"], capture_output=True).returncode != 0:
        sys.exit("no Docker engine answers")
    sys.exit(main())
