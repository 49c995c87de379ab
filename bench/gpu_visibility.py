"""On a GPU machine without a Docker engine: do offload's GPU detection and allocator hold?

    python bench/gpu_visibility.py [--hold 3]

:mod:`bench.gpu_check` needs an engine with the NVIDIA runtime; a GPU machine that is itself a
container (no engine inside) can still check the parts before the engine call:

* :func:`offload.worker.capacity.discover_gpus` reads the real ``nvidia-smi`` (index, UUID,
  memory, name) and the node serves a GPU resource class;
* :func:`offload.worker.docker_runtime.gpu_request` names those UUIDs (never a count);
* two job processes take one GPU each from :class:`offload.worker.gpus.GpuAllocator` and run
  a CUDA matrix product with ``CUDA_VISIBLE_DEVICES`` set to the UUID they were given — what
  the NVIDIA container runtime does with a device request's ids — and report the UUID CUDA
  shows them. With one GPU the second must wait for the first; with two or more they run at
  once on different GPUs. The baseline is the same pair with no allocator: both run at once
  on one GPU.

Imports only offload's worker modules (pydantic, psutil, docker and torch needed), so it runs
where the rest of offload's dependencies are not installed. Exit status 0 when checks hold.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def load_worker_modules() -> None:
    """Make ``offload`` importable without its ``__init__`` (which pulls in Celery)."""
    pkg = types.ModuleType("offload")
    pkg.__path__ = [str(SRC / "offload")]
    sys.modules["offload"] = pkg
    importlib.invalidate_caches()


def child(lock_dir: Path, hold: float, use_allocator: bool) -> None:
    load_worker_modules()
    from offload.worker.capacity import detect
    from offload.worker.gpus import GpuAllocator

    gpus = detect().gpus
    t0 = time.time()
    if use_allocator:
        lease = GpuAllocator(gpus, lock_dir).acquire(1, holder="check", wait=hold * 4 + 60)
        given = lease.uuids
    else:
        lease, given = None, (gpus[0].uuid,)
    t1 = time.time()
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(given))
    code = (
        "import time,torch,json;"
        "n=torch.cuda.device_count();p=torch.cuda.get_device_properties(0);"
        "a=torch.randn(4096,4096,device='cuda');s=time.time();"
        f"exec('while time.time()-s<{hold}: (a@a).sum().item()');"
        "print(json.dumps({'count':n,'uuid':'GPU-'+str(p.uuid),'name':p.name}))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    t2 = time.time()
    if lease is not None:
        lease.release()
    if out.returncode:
        raise SystemExit(f"the CUDA job failed: {out.stderr[-2000:]}")
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps({"given": list(given), "seen": seen, "waited": t1 - t0, "ran": [t1, t2]}))


def pair(hold: float, use_allocator: bool) -> list[dict]:
    with tempfile.TemporaryDirectory() as locks:
        argv = [sys.executable, __file__, "--child", locks, "--hold", str(hold)]
        if not use_allocator:
            argv.append("--no-allocator")
        procs = [subprocess.Popen(argv, stdout=subprocess.PIPE) for _ in range(2)]
        outs = [p.communicate(timeout=hold * 8 + 180)[0] for p in procs]
        if any(p.returncode for p in procs):
            raise SystemExit(f"a job process failed: {[p.returncode for p in procs]}")
    return [json.loads(o) for o in outs]


def overlap(jobs: list[dict]) -> bool:
    (a0, a1), (b0, b1) = jobs[0]["ran"], jobs[1]["ran"]
    return min(a1, b1) > max(a0, b0)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--hold", type=float, default=3.0)
    ap.add_argument("--child", type=Path)
    ap.add_argument("--no-allocator", action="store_true")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.hold, not args.no_allocator)
        return 0
    load_worker_modules()
    from offload.config import Settings
    from offload.worker.capacity import detect, served_classes
    from offload.worker.docker_runtime import gpu_request

    cap = detect()
    print(f"capacity: {cap.cpus:g} CPUs, {cap.memory >> 30} GiB, GPUs:")
    for g in cap.gpus:
        print(f"  index {g.index} {g.uuid} {g.memory >> 20} MiB {g.name}")
    if not cap.gpus:
        print("FAIL: nvidia-smi found no GPU")
        return 2
    ok = all(g.uuid.startswith(("GPU-", "MIG-")) and g.memory > 0 for g in cap.gpus)
    served = served_classes(Settings(), cap)
    print(f"classes served: {[c.name for c in served]}")
    ok &= any(c.max_gpus > 0 for c in served)
    req = gpu_request([cap.gpus[0].uuid])
    print(f"device request: driver={req.driver} ids={req.device_ids} count={req.count}")
    ok &= req.device_ids == [cap.gpus[0].uuid] and req.count in (None, 0)

    jobs = pair(args.hold, use_allocator=True)
    for j in jobs:
        print(f"job given {j['given']}, CUDA saw {j['seen']}, waited {j['waited']:.1f}s")
        ok &= j["seen"]["count"] == 1 and [j["seen"]["uuid"]] == j["given"]
    same = jobs[0]["given"] == jobs[1]["given"]
    if len(cap.gpus) >= 2:
        ok &= overlap(jobs) and not same
        print(f"ran at once: {overlap(jobs)}; on different GPUs: {not same}")
    else:
        ok &= not overlap(jobs)
        print(f"one GPU: the second job waited for the first (no overlap): {not overlap(jobs)}")
    base = pair(args.hold, use_allocator=False)
    print(
        f"baseline, no allocator: ran at once: {overlap(base)}, "
        f"on {sorted({j['seen']['uuid'] for j in base})}"
    )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
