"""Tiny items in a warm container: items/s batched against one container per item and the loop.

Self-contained: starts its own ``redis-server`` in a temporary ``OFFLOAD_HOME`` and measures,
in one run, N small items three ways, one item at a time on one slot:

* **unbatched** — ``Client.map(...)``: each item a job in a container of its own;
* **batched** — ``Client.map(..., batch=K)``: chunks of K items, each item the same job
  attempt run in a warm container (:mod:`offload.worker.chunks`);
* **loop** — the floor: one container, the same sandbox, running the same program over all N
  inputs in a shell loop (no offload at all).

``--path worker`` (the default) is the whole product path: a real ``offload worker`` with one
slot, timed from ``map`` (inputs already in the store) to the last item's end. ``--path node``
runs the node in this process, each item's attempt called directly (``executor.execute``,
items submitted first and not timed): the runtime alone, without queue and worker.

The work (``--work``): ``thumb`` (default) makes a 128x128
thumbnail of a small JPEG with Pillow in ``offload/python`` (no image here has ImageMagick:
this is the ImageMagick-like stand-in); ``shell`` checksums a small file in ``offload/base``.

    python bench/warm.py                        # 300 thumbnails, K = 50, through a worker
    python bench/warm.py --items 100 --batch 25 --work shell
    python bench/warm.py --path node            # the runtime alone
    python bench/warm.py --json

Goals (issue 16): batched ≥ 3x the items/s of unbatched, ≥ 0.7 of the loop's.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
import uuid
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
)

WORK = {
    "thumb": (
        "offload/python",
        "from PIL import Image; import sys; im = Image.open(sys.argv[1]); "
        "im.thumbnail((128, 128)); im.save(sys.argv[2])",
    ),
    "shell": ("offload/base", ""),
}


def item_command(work: str) -> list[str]:
    if work == "thumb":
        return ["python3", "-c", WORK["thumb"][1], "/offload/in/src", "/offload/out/thumb.jpg"]
    return ["sh", "-c", "sha256sum /offload/in/src > /offload/out/sum.txt"]


def loop_command(work: str) -> list[str]:
    if work == "thumb":
        body = f'python3 -c "{WORK["thumb"][1]}" "$f" "/offload/out/$(basename "$f").jpg"'
    else:
        body = 'sha256sum "$f" > "/offload/out/$(basename "$f").txt"'
    return ["sh", "-c", f"for f in /offload/in/*; do {body} || exit 1; done"]


def make_inputs(folder: Path, n: int, work: str) -> list[Path]:
    folder.mkdir()
    paths = []
    if work == "thumb":
        from PIL import Image

        for i in range(n):
            im = Image.new("RGB", (640, 480), ((i * 7) % 256, (i * 13) % 256, (i * 29) % 256))
            for x in range(0, 640, 40):  # some detail to scale
                im.paste((255 - x % 256, x % 256, i % 256), (x, 0, x + 20, 480))
            path = folder / f"p{i:05d}.jpg"
            im.save(path, quality=85)
            paths.append(path)
    else:
        for i in range(n):
            path = folder / f"f{i:05d}.txt"
            path.write_bytes(os.urandom(4096))
            paths.append(path)
    return paths


def in_process(
    args: argparse.Namespace, br: Any, settings: Any, broker: Any, client: Any, inputs: list[Path]
) -> tuple[float, float, int]:
    """unbatched and batched with the node in this process, each attempt called directly."""
    from offload.broker.status import JobStatus
    from offload.cache.factory import open_store
    from offload.cache.keys import load_key
    from offload.producer.client import Client
    from offload.spec import GiB
    from offload.worker.capacity import Capacity
    from offload.worker.docker_runtime import DockerRuntime
    from offload.worker.executor import Node, execute
    from offload.worker.warm import Batch, WarmRuntime

    image, cmd = WORK[args.work][0], item_command(args.work)
    work = settings.work_dir
    work.mkdir(parents=True, exist_ok=True)
    docker_rt = DockerRuntime(client)
    node = Node(
        name=settings.node_name,
        capacity=Capacity(cpus=float(os.cpu_count() or 1), memory=8 * GiB, gpus=()),
        records=broker.records,
        store=open_store(settings),
        runtime=docker_rt,
        work_dir=work,
        user=settings.container_user,
        pids_limit=settings.pids_limit,
        tmpfs_size=settings.tmpfs_size,
        requeue=lambda *a: None,
        limits=broker.limits,
        inflight=broker.inflight,
        key=load_key(settings.key_path),
        cluster=broker.nodes.cluster_id(),
    )
    producer = Client(settings)

    def submit() -> list[str]:
        each = [{"inputs": {"src": str(p)}} for p in inputs]
        return [j.id for j in producer.map(image, cmd, each=each, cache=False, cpu=1)]

    def check(ids: list[str], what: str) -> None:
        bad = [i for i in ids if broker.records.status(i) is not JobStatus.SUCCEEDED]
        if bad:
            raise RuntimeError(f"{what}: {len(bad)} items failed")

    for jid in submit()[:3]:  # warm the paths up (image cache, first-container costs)
        execute(node, jid)
    say(args, f"unbatched: {args.items} items, one container each")
    ids = submit()
    t0 = time.monotonic()
    for jid in ids:
        execute(node, jid)
    unbatched = time.monotonic() - t0
    check(ids, "unbatched")
    say(args, f"batched: {args.items} items, {args.batch} per warm container")
    ids = submit()
    starts = 0
    t0 = time.monotonic()
    for b in range(0, len(ids), args.batch):
        warm = WarmRuntime(docker_rt, work, Batch(f"bench-{uuid.uuid4().hex}", 1))
        with warm:
            warm_node = dataclasses.replace(node, runtime=warm)
            for jid in ids[b : b + args.batch]:
                execute(warm_node, jid)
        starts += warm.started
    batched = time.monotonic() - t0
    check(ids, "batched")
    return unbatched, batched, starts


def run(args: argparse.Namespace) -> dict[str, Any]:
    import docker

    from offload.broker.core import Broker
    from offload.broker.status import JobStatus
    from offload.spec import GiB
    from offload.worker.docker_runtime import DockerRuntime
    from offload.worker.runtime import ContainerRequest, Mount

    image = WORK[args.work][0]
    facts = machine(cpu=True, docker=True)  # the load average as the run begins
    with bench_run("offload-bench-warm-", args.keep) as br:
        cluster = start_cluster(br.svc, slots=1 if args.path == "worker" else None)
        settings = cluster.settings
        broker = Broker(settings)
        client = docker.from_env()
        say(args, f"making {args.items} inputs ({args.work})")
        inputs = make_inputs(br.root / "inputs", args.items, args.work)
        cmd = item_command(args.work)

        def check(ids: list[str], what: str) -> None:
            bad = [i for i in ids if broker.records.status(i) is not JobStatus.SUCCEEDED]
            if bad:
                rec = broker.records.get(bad[0])
                raise RuntimeError(f"{what}: {len(bad)} items failed, e.g. {rec.message}")

        if args.path == "worker":
            producer = start_worker(br.svc, cluster)
            oids = [producer.put(p) for p in inputs]  # uploaded once, before the clock
            each = [{"inputs": {"src": oid}} for oid in oids]

            def through(batch: int | None) -> tuple[float, list[str]]:
                t0 = time.monotonic()
                array = producer.map(image, cmd, each=each, cache=False, cpu=1, batch=batch)
                results = array.wait(timeout=3600)
                took = time.monotonic() - t0
                if not all(r.ok for r in results):
                    raise RuntimeError(f"{sum(not r.ok for r in results)} items failed")
                return took, array.ids

            through(None)  # warm the paths up (image cache, first-container costs)
            say(args, f"unbatched: {args.items} items, one container each")
            unbatched, _ = through(None)
            say(args, f"batched: {args.items} items, {args.batch} per warm container")
            batched, ids = through(args.batch)
            check(ids, "batched")
            starts = -(-args.items // args.batch)
        else:
            unbatched, batched, starts = in_process(args, br, settings, broker, client, inputs)

        say(args, f"loop: {args.items} items in one container")
        folder = br.root / "loop"
        (folder / "out").mkdir(parents=True)
        os.chmod(folder / "out", 0o777)
        (folder / "params.json").write_text("{}")
        rt = DockerRuntime(client)
        req = ContainerRequest(
            job_id=f"bench-loop-{uuid.uuid4().hex[:8]}",
            attempt=1,
            image=image,
            command=tuple(loop_command(args.work)),
            env={},
            mounts=(
                Mount(br.root / "inputs", "/offload/in"),
                Mount(folder / "out", "/offload/out", read_only=False),
                Mount(folder / "params.json", "/offload/params.json"),
            ),
            cpu=1.0,
            memory=2 * GiB,
            user=settings.container_user,
            pids_limit=settings.pids_limit,
            tmpfs_size=settings.tmpfs_size,
        )
        t0 = time.monotonic()
        cid = rt.create(req)
        try:
            rt.start(cid, lambda s, d: None)
            exit_ = rt.wait(cid, 3600)
        finally:
            rt.remove(cid)
        loop = time.monotonic() - t0
        if exit_ is None or exit_.code != 0:
            raise RuntimeError(f"the loop failed: {exit_}")
        made = len(os.listdir(folder / "out"))
        if made != args.items:
            raise RuntimeError(f"the loop made {made} outputs, not {args.items}")

    n = args.items
    rates = {"unbatched": n / unbatched, "batched": n / batched, "loop": n / loop}
    return {
        "machine": facts,
        "work": args.work,
        "path": args.path,
        "image": image,
        "items": n,
        "batch": args.batch,
        "warm_containers_started": starts,
        "seconds": {"unbatched": unbatched, "batched": batched, "loop": loop},
        "items_per_s": rates,
        "batched_vs_unbatched": rates["batched"] / rates["unbatched"],
        "batched_vs_loop": rates["batched"] / rates["loop"],
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def report(res: dict[str, Any]) -> str:
    m, s, r = res["machine"], res["seconds"], res["items_per_s"]
    lines = [
        f"{m['date']}  {m['host']}  {m['nproc']} CPUs ({m.get('cpu', '')}), "
        f"docker {m.get('docker_server', '')} ({m.get('docker_setup', '')})",
        f"{res['items']} items ({res['work']}, {res['image']}, path {res.get('path', 'node')}), "
        f"batch K = {res['batch']}, "
        f"{res['warm_containers_started']} warm containers started; load average "
        f"{m['loadavg_at_start']} at start, {res['loadavg_at_end']} at the end",
        "",
        f"{'path':<12}{'seconds':>10}{'items/s':>10}",
    ]
    for path in ("unbatched", "batched", "loop"):
        lines.append(f"{path:<12}{s[path]:>10.1f}{r[path]:>10.2f}")
    lines += [
        "",
        f"batched / unbatched = {res['batched_vs_unbatched']:.2f}x   (goal >= 3)",
        f"batched / loop      = {res['batched_vs_loop']:.2f}    (goal >= 0.7)",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=300, help="items per path (default 300)")
    p.add_argument("--batch", type=int, default=50, help="items per warm container (K)")
    p.add_argument("--work", choices=sorted(WORK), default="thumb", help="what an item does")
    p.add_argument(
        "--path",
        choices=("worker", "node"),
        default="worker",
        help="worker: map(batch=K) through a real worker (default); node: the runtime alone",
    )
    output_options(p, "keep the temporary folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return finish(parse_args(argv), run, report, "redis-server and containers cleaned up")


if __name__ == "__main__":
    if subprocess.run(["docker", "version"], capture_output=True).returncode != 0:
        sys.exit("no Docker engine answers")
    sys.exit(main())
