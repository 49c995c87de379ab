"""On a machine with NVIDIA GPUs: do concurrent 1-GPU jobs each see a GPU of their own?

    .venv/bin/python bench/gpu_check.py [--image offload/base] [--hold 3]

Two job processes (like two pool processes of a worker) each take one GPU from the worker's
allocator (:mod:`offload.worker.gpus`, lock files in a fresh folder) and run a container
through :class:`~offload.worker.docker_runtime.DockerRuntime` that prints ``nvidia-smi -L``
and stays ``--hold`` seconds, so the two overlap. Checks:

* each container sees exactly one GPU, the one it was given (by UUID);
* with 2+ GPUs the two run at once on different GPUs; with 1 GPU the second waits for the
  first to finish (never two containers on one GPU at once).

Then, as the baseline, the same two containers with a count-based device request (what the
worker did before): both see the host's first GPU. Exit status 0 when the checks hold.
Needs the image locally (``--image``; any image works, the NVIDIA runtime injects nvidia-smi).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

UUID_RE = re.compile(r"UUID: ([^)]+)\)")


def run_container(image: str, hold: float, gpus: tuple[str, ...], by_count: bool) -> list[str]:
    """Run one job container; the GPU UUIDs its ``nvidia-smi -L`` listed."""
    from offload.worker.docker_runtime import DockerRuntime, connect
    from offload.worker.runtime import ContainerRequest

    runtime = DockerRuntime(connect())
    if by_count:  # the old device request: a count, no ids
        from docker.types import DeviceRequest

        import offload.worker.docker_runtime as dr

        dr.gpu_request = lambda uuids: DeviceRequest(count=len(uuids), capabilities=[["gpu"]])
    out: list[bytes] = []
    req = ContainerRequest(
        job_id=f"gpu-check-{uuid.uuid4().hex[:8]}",
        attempt=1,
        image=image,
        command=("sh", "-c", f"nvidia-smi -L; sleep {hold:g}"),
        env={},
        mounts=(),
        cpu=1,
        memory=512 << 20,
        gpus=gpus,
        user="0:0",
    )
    container = runtime.create(req)
    try:
        runtime.start(container, lambda stream, data: out.append(data))
        exit_ = runtime.wait(container, hold + 60)
        runtime.finish_logs(container, 5)
        if exit_ is None or exit_.code != 0:
            raise SystemExit(f"container failed: {exit_}; output: {b''.join(out)!r}")
    finally:
        runtime.remove(container)
    return UUID_RE.findall(b"".join(out).decode(errors="replace"))


def child(lock_dir: Path, image: str, hold: float, by_count: bool) -> None:
    from offload.worker.capacity import detect
    from offload.worker.gpus import GpuAllocator

    t0 = time.time()
    with GpuAllocator(detect().gpus, lock_dir).acquire(1, wait=hold * 4 + 60) as lease:
        t1 = time.time()
        seen = run_container(image, hold, lease.uuids, by_count)
        t2 = time.time()
    print(json.dumps({"given": lease.uuids, "seen": seen, "waited": t1 - t0, "held": [t1, t2]}))


def pair(image: str, hold: float, by_count: bool) -> list[dict]:
    with tempfile.TemporaryDirectory() as locks:
        argv = [sys.executable, __file__, "--child", locks, "--image", image, "--hold", str(hold)]
        procs = [
            subprocess.Popen(argv + (["--by-count"] if by_count else []), stdout=subprocess.PIPE)
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=hold * 8 + 180)[0] for p in procs]
        if any(p.returncode for p in procs):
            raise SystemExit(f"a job process failed: {[p.returncode for p in procs]}")
    return [json.loads(o) for o in outs]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", default="offload/base")
    ap.add_argument("--hold", type=float, default=3.0)
    ap.add_argument("--child", type=Path)
    ap.add_argument("--by-count", action="store_true")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.image, args.hold, args.by_count)
        return 0
    from offload.worker.capacity import detect

    gpus = detect().gpus
    print(f"GPUs on this machine: {len(gpus)}: {[g.uuid for g in gpus]}")
    if not gpus:
        print("FAIL: nvidia-smi found no GPU")
        return 2
    jobs = pair(args.image, args.hold, by_count=False)
    ok = True
    for j in jobs:
        print(f"job given {j['given']}, saw {j['seen']}, waited {j['waited']:.1f}s")
        ok &= j["seen"] == j["given"]
    (a0, a1), (b0, b1) = jobs[0]["held"], jobs[1]["held"]
    overlap = min(a1, b1) > max(a0, b0)
    same = jobs[0]["given"] == jobs[1]["given"]
    if len(gpus) >= 2:
        ok &= overlap and not same
        print(f"ran at once: {overlap}; on different GPUs: {not same}")
    else:
        ok &= not overlap
        print(f"one GPU: the second job waited for the first (no overlap): {not overlap}")
    if len(gpus) >= 2:
        base = pair(args.image, args.hold, by_count=True)
        print(f"baseline, count-based requests: the jobs saw {[j['seen'] for j in base]}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
