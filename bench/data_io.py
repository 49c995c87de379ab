"""Data in and out by location (issue 20), against baselines measured in the same run.

Self-contained: its own ``redis-server`` and moto S3 server on loopback, a fresh cluster key,
a threaded ``http.server`` serving a data file. It measures:

1. **URL input fetch**: a node's fetch of one ``http://`` input of ``--size-mib`` MiB
   (:class:`offload.cache.fetch.Fetcher`: streamed into a fresh sealed store, encrypted as it
   is read) versus ``curl -o FILE`` of the same URL. Ratio curl time / offload time
   (goal ≥ 0.7).
2. **Bulk download**: ``offload get --to DIR``'s code (:func:`offload.producer.download.
   download`, 16 threads) of ``--outputs`` small outputs of one succeeded job, from the S3
   tier into an empty client cache, versus an ``aws s3 sync``-style parallel download (boto3,
   16 threads) of the same objects from the same server. Ratio baseline / offload
   (goal ≥ 0.8).
3. **Client bytes for an ``s3://`` input**: the bytes the submitting client sends or
   receives from S3 while it prepares a job whose input is a ``--size-mib`` MiB S3 object
   (goal: 0; the node fetches it).

    python bench/data_io.py                        # 1 GiB, 10,000 outputs
    python bench/data_io.py --size-mib 256 --outputs 2000
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any

import boto3
import botocore.endpoint
import redis

from cache import start_moto
from common import Services, free_port, machine, start_redis, wait_for
from offload.broker.records import JobRecord
from offload.broker.status import JobStatus
from offload.cache.fetch import FetchConfig, Fetcher
from offload.cache.keys import init_key, load_key
from offload.cache.localblobs import LocalBlobStore
from offload.cache.s3 import S3BlobStore, S3Config
from offload.cache.sealed import SealedStore
from offload.producer.download import download
from offload.spec import JobSpec
from offload.spec.uris import parse_uri

MiB = 1 << 20
DUMMY = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
         "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def fetch_vs_curl(root: Path, r: redis.Redis, size: int, repeat: int) -> dict[str, float]:
    data_dir = root / "www"
    data_dir.mkdir()
    with (data_dir / "big.bin").open("wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    # the server is a process of its own, as a URL's server is for a node (in this process it
    # would take the GIL from the fetch it serves; curl gets it to itself)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
         str(data_dir), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/big.bin"
    wait_for(lambda: _listening(port) or server.poll() is not None, 10, "the HTTP server")
    key = load_key(root / "key")
    curl: list[float] = []
    hashed: list[float] = []
    node: list[float] = []
    sealed: list[float] = []
    out = root / "curl.bin"
    try:
        for run in range(repeat):  # interleaved: the VM's page cache and neighbours vary
            t0 = time.perf_counter()
            subprocess.run(["curl", "-sf", "-o", str(out), url], check=True)
            curl.append(time.perf_counter() - t0)
            out.unlink()
            # the floor of any content-addressed fetch: the bytes to a file and their sha256
            # (the content id), curl and sha256sum side by side on the machine's two cores
            t0 = time.perf_counter()
            subprocess.run(
                f"curl -sf {url} | tee {out} | sha256sum > /dev/null", shell=True, check=True
            )
            hashed.append(time.perf_counter() - t0)
            out.unlink()
            # what a node does for a job: a new URL each run (no memo) into a fresh store
            store = SealedStore(key, LocalBlobStore(root / f"node-cache-{run}", None))
            fetcher = Fetcher(store, r, key, FetchConfig(ttl=600))
            dest = root / "fetched.bin"
            t0 = time.perf_counter()
            oid, sealing = fetcher.fetch_to(parse_uri(f"{url}?run={run}"), dest)
            node.append(time.perf_counter() - t0)
            assert sealing is not None and dest.stat().st_size == size
            sealing.result()  # the sealed copy, made from the file while the job would run
            sealed.append(time.perf_counter() - t0)
            assert store.has(oid)
            fetcher.sealing.close()
            dest.unlink()
            shutil.rmtree(root / f"node-cache-{run}", ignore_errors=True)
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(data_dir)
    return {
        "runs": repeat,
        "curl_s": min(curl),
        "hashed_s": min(hashed),
        "offload_s": min(node),
        "sealed_s": min(sealed),
        "ratio": min(curl) / min(node),
        "ratio_hashed": min(hashed) / min(node),
        "median_ratio": statistics.median(c / n for c, n in zip(curl, node, strict=True)),
    }


def bulk_get(root: Path, endpoint: str, n: int) -> dict[str, float]:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    key = load_key(root / "key")
    cfg = S3Config(bucket=bucket, prefix="offload/", endpoint_url=endpoint, upload_concurrency=8)
    producer = SealedStore(key, LocalBlobStore(root / "producer-cache", None), S3BlobStore(cfg))
    outputs: dict[str, str] = {}

    def put(i: int) -> tuple[str, str]:
        return f"thumb-{i:05d}.bin", producer.put_bytes(os.urandom(2048 + i % 2048))

    with ThreadPoolExecutor(16) as pool:
        outputs = dict(pool.map(put, range(n)))
    shutil.rmtree(root / "producer-cache")
    rec = JobRecord(
        id=uuid.uuid4().hex, spec=JobSpec.create(image="offload/base"), view={},
        resource_class="cpu-small", status=JobStatus.SUCCEEDED, created_at=0.0,
        updated_at=0.0, outputs=outputs,
    )  # fmt: skip
    client = SealedStore(key, LocalBlobStore(root / "client-cache", None), S3BlobStore(cfg))
    t0 = time.perf_counter()
    report = download(client, [rec], root / "get", workers=16)
    offload = time.perf_counter() - t0
    assert len(report.written) == n
    names = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="offload/")
        for o in page.get("Contents", [])
        if not o["Key"].startswith("offload/.probe")
    ]
    sync = root / "sync"
    sync.mkdir()
    base = boto3.client(
        "s3", endpoint_url=endpoint, config=botocore.config.Config(max_pool_connections=20)
    )
    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: base.download_file(bucket, k, str(sync / k.rsplit("/", 1)[1])),
                      names))  # fmt: skip
    baseline = time.perf_counter() - t0
    return {"objects": len(names), "offload_s": offload, "sync_s": baseline,
            "ratio": baseline / offload}  # fmt: skip


def client_bytes(root: Path, endpoint: str, redis_url: str, size: int) -> int:
    """Bytes through botocore while a client prepares a job with an s3:// input."""
    s3 = boto3.client("s3", endpoint_url=endpoint)
    bucket = f"input-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(_sparse(root / "input.bin", size)), bucket, "big.bin")
    moved = [0]
    real = botocore.endpoint.Endpoint._send

    def counted(self: Any, request: Any) -> Any:
        resp = real(self, request)
        moved[0] += len(request.body or b"") + int(resp.headers.get("Content-Length") or 0)
        return resp

    from offload.config import Settings
    from offload.producer.client import Client

    settings = Settings(_env_file=None, home=root / "client", redis_url=redis_url,  # type: ignore[call-arg]
                        s3_endpoint_url=endpoint, key_file=root / "key")  # fmt: skip
    botocore.endpoint.Endpoint._send = counted
    try:
        ids = Client(settings).upload_inputs({"big": f"s3://{bucket}/big.bin"})
    finally:
        botocore.endpoint.Endpoint._send = real
    assert ids["big"] == f"s3://{bucket}/big.bin"
    return moved[0]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _sparse(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--outputs", type=int, default=10_000)
    p.add_argument("--fetch-only", action="store_true", help="Only the URL input fetch.")
    p.add_argument("--repeat", type=int, default=3, help="URL fetch runs (interleaved; best)")
    args = p.parse_args()
    os.environ.update(DUMMY)
    root = Path(tempfile.mkdtemp(prefix="offload-bench-dataio-"))
    svc = Services(root)
    try:
        init_key(root / "key")
        redis_url = start_redis(svc)
        endpoint = start_moto(svc, {**os.environ})
        r = redis.Redis.from_url(redis_url)
        info = machine()
        print(f"machine: {info}")
        a = fetch_vs_curl(root, r, args.size_mib * MiB, args.repeat)
        print(f"URL input of {args.size_mib} MiB, best of {a['runs']} interleaved runs: curl "
              f"{a['curl_s']:.2f}s, node fetch "
              f"{a['offload_s']:.2f}s (its sealed copy in the store after {a['sealed_s']:.2f}s), "
              f"ratio {a['ratio']:.2f} (goal >= 0.7); curl | sha256sum "
              f"{a['hashed_s']:.2f}s, ratio {a['ratio_hashed']:.2f}; median of the runs' ratios "
              f"{a['median_ratio']:.2f}")  # fmt: skip
        if args.fetch_only:
            return
        b = bulk_get(root, endpoint, args.outputs)
        print(f"offload get of {args.outputs} outputs: {b['offload_s']:.2f}s, parallel S3 "
              f"download {b['sync_s']:.2f}s, ratio {b['ratio']:.2f} (goal >= 0.8)")  # fmt: skip
        n = client_bytes(root, endpoint, redis_url, args.size_mib * MiB)
        print(f"bytes the submitting client moved for an s3:// input of {args.size_mib} MiB: "
              f"{n} (goal 0)")  # fmt: skip
    finally:
        svc.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
