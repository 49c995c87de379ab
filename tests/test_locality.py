"""Locality with three worker nodes, each with its own cache, and one S3 bucket (moto server).

S3 bytes fetched are counted on the wire: every node and the producer reach the moto server
through :class:`CountingProxy`, which adds up the body bytes of successful ``GET`` responses
for objects — what the nodes download, whichever code path asks for it.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from offload import Client, JobStatus
from offload.broker import keys
from offload.cache.s3 import S3Config

from .conftest import Platform, make_platform, wait_for
from .s3server import DUMMY_ENV

MiB = 1024 * 1024
GRACE = 3.0


class CountingProxy:
    """A loopback HTTP proxy in front of an S3 server, counting object bytes served by GET."""

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
                conn = http.client.HTTPConnection(host, port, timeout=120)
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
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def fetched(self) -> int:
        with self.lock:
            return self.got

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(s3_bucket: S3Config) -> Iterator[CountingProxy]:
    p = CountingProxy(str(s3_bucket.endpoint_url))
    yield p
    p.close()


@pytest.fixture
def cluster(
    redis_server: str,
    s3_bucket: S3Config,
    proxy: CountingProxy,
    tmp_path: Path,
    docker_client: object,
) -> Iterator[tuple[list[Platform], Client]]:
    common = {
        **DUMMY_ENV,
        "OFFLOAD_S3_BUCKET": s3_bucket.bucket,
        "OFFLOAD_S3_ENDPOINT_URL": proxy.url,
        "OFFLOAD_S3_PREFIX": s3_bucket.prefix,
        "OFFLOAD_WORKER_SLOTS": "1",
        "OFFLOAD_WORKER_CLASSES": "cpu-small",
        "OFFLOAD_LOCALITY_GRACE": str(GRACE),
        "OFFLOAD_LOST_AFTER": "60",  # a killed node still looks live: only the grace helps
        "OFFLOAD_HEARTBEAT_INTERVAL": "0.5",
        "OFFLOAD_SWEEP_INTERVAL": "1",
    }
    first = make_platform(
        redis_server, tmp_path / "home", OFFLOAD_CACHE_DIR=str(tmp_path / "cache-a"), **common
    )
    nodes = [first]
    for tag in ("b", "c"):
        env = {
            **first.env,
            "OFFLOAD_CACHE_DIR": str(tmp_path / f"cache-{tag}"),
            "OFFLOAD_NODE_NAME": f"{first.settings.node_name}-{tag}",
        }
        nodes.append(Platform(settings=first.settings, env=env))
    producer = Client(
        first.settings.model_copy(
            update={"cache_dir": tmp_path / "cache-producer", "node_name": "producer"}
        )
    )
    try:
        for n in nodes:
            n.start_worker()
        yield nodes, producer
    finally:
        for n in nodes:
            n.kill_worker()


def route_of(client: Client, job_id: str) -> list[str | None]:
    return list(client.broker.redis.hmget(keys.job(job_id), "routed_to", "route_why"))


def queued_for(client: Client, job_id: str) -> float:
    """Seconds from the job's (last) ``queued`` to its ``staging``."""
    timeline = client.job(job_id).timeline()
    queued = [e.at for e in timeline if e.status is JobStatus.QUEUED][-1]
    staging = [e.at for e in timeline if e.status is JobStatus.STAGING][-1]
    return staging - queued


def test_a_child_runs_on_its_parents_node_and_elsewhere_when_that_node_is_busy_or_gone(
    cluster: tuple[list[Platform], Client], proxy: CountingProxy
) -> None:
    nodes, c = cluster
    names = {n.env["OFFLOAD_NODE_NAME"]: n for n in nodes}
    parent = c.submit(
        "offload/base",
        ["sh", "-c", "sleep 2; head -c 4194304 /dev/urandom > /offload/out/out.bin"],
        cache=False,
    )
    count = "wc -c < /offload/in/x > /offload/out/n"
    child = c.submit(  # waiting; released by the parent's node when the parent succeeds
        "offload/base", ["sh", "-c", count], inputs={"x": parent.output("out.bin")}, cache=False
    )
    done = parent.result(timeout=120)
    assert done.ok, done.message
    home = done.node
    assert home in names
    before = proxy.fetched()
    result = child.result(timeout=60)
    assert result.ok and result.node == home
    assert proxy.fetched() == before  # nothing fetched from S3: the input was in its cache
    assert route_of(c, child.id) == [home, "holds 4 MiB of 4 MiB inputs"]
    assert c.read(result.outputs["n"]).strip() == b"4194304"

    # busy: a job holding the node's only slot (routed there for the same input)
    blocker = c.submit(
        "offload/base", ["sleep", "6"], inputs={"x": parent.output("out.bin")}, cache=False
    )
    wait_for(lambda: blocker.status() is JobStatus.RUNNING, 60, "the blocker to run")
    assert blocker.record().node == home
    busy = c.submit(
        "offload/base", ["sh", "-c", count], inputs={"x": done.outputs["out.bin"]}, cache=False
    )
    result = busy.result(timeout=60)
    assert result.ok and result.node != home
    assert route_of(c, busy.id) == [
        "",
        f"node {home} holds 4 MiB of 4 MiB inputs but has no free slot",
    ]
    assert queued_for(c, busy.id) < GRACE  # not held back: straight to the class queue
    assert proxy.fetched() > before + 4 * MiB  # the other node fetched the input
    assert blocker.result(timeout=60).ok

    # gone: the node dies but still looks live (heartbeat within lost_after) when routing
    names[home].kill_worker()
    t0 = time.time()
    gone = c.submit(
        "offload/base", ["sh", "-c", count], inputs={"x": done.outputs["out.bin"]}, cache=False
    )
    result = gone.result(timeout=60)
    assert result.ok and result.node not in (home, None)
    routed_to, why = route_of(c, gone.id)
    if routed_to:
        # the busy phase left a copy on the node that ran that job: routing may pick that live
        # node (as many bytes, a free slot) over the dead one — and it ran there at once
        assert routed_to == result.node and why == "holds 4 MiB of 4 MiB inputs"
        assert time.time() - t0 < GRACE + 15
        return
    assert why == f"node {home} did not start it within {GRACE:g} s"
    # moved after the grace, at the next sweep (every second here), then started at once
    waited = queued_for(c, gone.id)
    assert GRACE - 0.5 <= waited < GRACE + 3 and time.time() - t0 < GRACE + 15
    status = nodes[0].cli("status", gone.id)
    assert f"route: class queue cpu-small: node {home} did not start it" in status.stdout
