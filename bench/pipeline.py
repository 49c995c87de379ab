"""Locality routing: a three-step pipeline over a large object on three nodes, on and off.

Self-contained: its own redis-server, moto S3 server (loopback) and cluster key; three
worker nodes (one slot each, cpu-small), each with its own cache, sharing one bucket. Each
mode (``OFFLOAD_LOCALITY=false`` first, then on) gets fresh nodes, caches and bucket and runs
``--runs`` pipelines one after the other:

1. ``make``: writes ``--size`` bytes of random data (``out.bin``) — the pipeline's input;
2. ``shift``: reads it, writes a transformed copy of the same size;
3. ``digest``: reads that, writes its sha256.

Steps 2 and 3 are submitted with the first (``inputs={"x": parent.output("out.bin")}``), so
each is released by its parent's node when the parent succeeds. Measured per pipeline: bytes
fetched from S3 — counted on the wire by a loopback proxy in front of moto (the body bytes of
successful object ``GET`` responses), so whichever code path downloads, it is counted — and
wall time from the submit to the last step's success.

    .venv/bin/python bench/pipeline.py [--size 256m] [--runs 2] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from common import (
    bench_run,
    finish,
    free_port,
    human,
    machine,
    output_options,
    parse_size,
    say,
    start_cluster,
    stop_process_group,
)

MAKE = "head -c {size} /dev/urandom > /offload/out/out.bin"
SHIFT = "tr '\\000-\\377' '\\001-\\377\\000' < /offload/in/x > /offload/out/out.bin"
DIGEST = "sha256sum /offload/in/x > /offload/out/sum"


class CountingProxy:
    """A loopback HTTP proxy in front of the S3 server, counting object bytes sent by GET."""

    def __init__(self, upstream: str) -> None:
        up = urlsplit(upstream)
        host, port = up.hostname or "127.0.0.1", up.port or 80
        self.lock = threading.Lock()
        self.got = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(host, port, timeout=600)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding"):
                        self.send_header(k, v)
                data = resp.read()
                if resp.getheader("Content-Length") is None:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()
                path = urlsplit(self.path).path.strip("/")
                if self.command == "GET" and resp.status in (200, 206) and "/" in path:
                    with proxy.lock:
                        proxy.got += len(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def fetched(self) -> int:
        with self.lock:
            return self.got

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_mode(
    args: argparse.Namespace, run: Any, cluster: Any, s3: str, proxy: CountingProxy, on: bool
) -> dict[str, Any]:
    import boto3

    from offload.producer.client import Client

    mode = "on" if on else "off"
    bucket = f"bench-{mode}-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3, region_name="us-east-1").create_bucket(Bucket=bucket)
    env = {
        **cluster.env,
        "OFFLOAD_S3_BUCKET": bucket,
        "OFFLOAD_S3_ENDPOINT_URL": proxy.url,
        "OFFLOAD_WORKER_SLOTS": "1",
        "OFFLOAD_WORKER_CLASSES": "cpu-small",
        "OFFLOAD_LOCALITY": "true" if on else "false",
    }
    names = []
    for i in range(3):
        name = f"{mode}-{i}-{uuid.uuid4().hex[:6]}"
        node_env = {
            **env,
            "OFFLOAD_NODE_NAME": name,
            "OFFLOAD_CACHE_DIR": str(run.root / f"cache-{name}"),
        }
        argv = [sys.executable, "-m", "offload", "worker", "--loglevel", "WARNING"]
        names.append((name, run.svc.spawn(f"worker-{name}", argv, node_env)))
    settings = cluster.settings.model_copy(
        update={
            "s3_bucket": bucket,
            "s3_endpoint_url": proxy.url,
            "locality": on,
            "cache_dir": run.root / f"cache-producer-{mode}",
            "node_name": f"producer-{mode}",
        }
    )
    client = Client(settings)
    for name, proc in names:
        node = f"offload@{name}"
        run.svc.up(
            f"worker-{name}",
            proc,
            lambda node=node: any(node in r for r in client.broker.app.control.ping(timeout=0.3)),
        )
    pipelines: list[dict[str, Any]] = []
    for i in range(args.runs):
        before = proxy.fetched()
        t0 = time.time()
        make = client.submit(
            "offload/base", ["sh", "-c", MAKE.format(size=args.size)], cache=False, memory="1GiB"
        )
        shift = client.submit(
            "offload/base",
            ["sh", "-c", SHIFT],
            inputs={"x": make.output("out.bin")},
            cache=False,
            memory="1GiB",
        )
        digest = client.submit(
            "offload/base",
            ["sh", "-c", DIGEST],
            inputs={"x": shift.output("out.bin")},
            cache=False,
            memory="1GiB",
        )
        results = [j.result(timeout=args.timeout) for j in (make, shift, digest)]
        wall = time.time() - t0
        bad = [r for r in results if not r.ok]
        if bad:
            raise RuntimeError(f"a step failed: {bad[0].reason}: {bad[0].message}")
        fetched = proxy.fetched() - before
        routes = [j.record().route_why or "-" for j in (shift, digest)]
        row: dict[str, Any] = {
            "fetched": fetched,
            "wall_s": round(wall, 2),
            "nodes": [r.node for r in results],
            "routes": routes,
        }
        say(args, f"locality {mode}, pipeline {i + 1}: {human(fetched)} fetched, {wall:.1f} s, "
            f"nodes {row['nodes']}")  # fmt: skip
        pipelines.append(row)
    for _, proc in names:
        stop_process_group(proc, 30)
    return {
        "pipelines": pipelines,
        "fetched_mean": statistics.mean(p["fetched"] for p in pipelines),
        "wall_mean_s": round(statistics.mean(p["wall_s"] for p in pipelines), 2),
    }


def start_moto(svc: Any) -> str:
    import socket

    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = svc.spawn("moto", argv, dict(os.environ))

    def listening() -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", port)) == 0

    svc.up("moto", proc, listening)
    return f"http://127.0.0.1:{port}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {
        "machine": machine(cpu=True, docker=True),
        "size": args.size,
        "runs": args.runs,
    }
    with bench_run("offload-bench-pipeline-", args.keep) as run_:
        cluster = start_cluster(run_.svc)
        s3 = start_moto(run_.svc)
        proxy = CountingProxy(s3)
        run_.cleanup.callback(proxy.close)
        say(args, f"cluster up; S3 {s3} behind {proxy.url}")
        res["off"] = run_mode(args, run_, cluster, s3, proxy, on=False)
        res["on"] = run_mode(args, run_, cluster, s3, proxy, on=True)
    off, on = res["off"], res["on"]
    res["fetched_reduction"] = (
        1 - on["fetched_mean"] / off["fetched_mean"] if off["fetched_mean"] else None
    )
    res["wall_ratio"] = on["wall_mean_s"] / off["wall_mean_s"]
    return res


def report(res: dict[str, Any]) -> str:
    lines = [
        f"three-step pipeline over {human(res['size'])}, 3 nodes (separate caches), moto S3; "
        f"{res['runs']} pipeline(s) per mode",
        "",
        "| locality | S3 bytes fetched per pipeline | wall time per pipeline |",
        "|---|---:|---:|",
    ]
    for mode in ("off", "on"):
        m = res[mode]
        each = ", ".join(human(p["fetched"]) for p in m["pipelines"])
        walls = ", ".join(f"{p['wall_s']:.1f}" for p in m["pipelines"])
        lines.append(
            f"| {mode} | {human(m['fetched_mean'])} ({each}) | {m['wall_mean_s']:.1f} s ({walls}) |"
        )
    red = res["fetched_reduction"]
    lines += [
        "",
        f"bytes fetched: {red:.1%} fewer with locality on" if red is not None else "",
        f"wall time on / off: {res['wall_ratio']:.2f}",
        f"routes (on): {[p['routes'] for p in res['on']['pipelines']]}",
        f"machine: {res['machine']}",
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=parse_size, default=parse_size("256m"))
    p.add_argument("--runs", type=int, default=2, help="pipelines per mode")
    p.add_argument("--timeout", type=float, default=600)
    output_options(p, "keep the temp folder (logs, caches)")
    args = p.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return finish(args, run, report, "the services were stopped")


if __name__ == "__main__":
    sys.exit(main())
