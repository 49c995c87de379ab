"""Redis failover inside the cluster (infra/cluster with docker-compose.sentinel.yml): a
master, its replica and three Sentinels, all behind TLS, the Sentinels behind their own
password; every node, the autoscaler and Flower reach Redis through ``sentinel://`` URLs.

A producer inside the cluster's network (the Sentinels name the master by its host name
there) submits a burst of jobs; the master's container is killed while jobs of the burst run;
a replica is promoted, jobs keep flowing, and every job that got an id ends. Replication is
asynchronous: a write acknowledged by the dead master but not yet on its replica is lost
(docs/architecture.md states the window), so at most a job or two of the burst may vanish.
"""

from __future__ import annotations

import json
import select
import subprocess
import time

import docker
import pytest

from tests.conftest import wait_for

from .conftest import Cluster, replica_online

pytestmark = pytest.mark.xdist_group("cluster-sentinel")

BURST = """
import json, sys, threading, time
from offload import Client, JobStatus
from offload.errors import OffloadError

c = Client()
ids, refused = [], []

def burst():
    deadline = time.monotonic() + 40
    for i in range(12):
        while time.monotonic() < deadline:  # retried while the failover goes on
            try:
                job = c.submit("offload/base", ["sh", "-c", "sleep 1"], name=f"f-{i}", memory="64m")
                ids.append(job.id)
                break
            except OffloadError as exc:  # no master yet: the caller is told, no id
                refused.append(f"{type(exc).__name__}: {exc}"[:300])
                time.sleep(0.5)
        time.sleep(0.2)

def status(job_id):
    try:
        return c.job(job_id).status()
    except OffloadError:  # its record was in the unreplicated window: gone
        return None

submitter = threading.Thread(target=burst)
submitter.start()
deadline = time.monotonic() + 40
while time.monotonic() < deadline:
    if len(ids) >= 4 and any(status(j) is JobStatus.RUNNING for j in list(ids)):
        break
    time.sleep(0.2)
print(json.dumps({"submitted": len(ids)}), flush=True)
sys.stdin.readline()  # the test killed the master and saw the replica promoted
submitter.join(45)
after = [c.submit("offload/base", ["sh", "-c", "echo after"], memory="64m").id for _ in range(2)]
every = ids + after
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    if all(s is None or s.terminal for s in map(status, every)):
        break
    time.sleep(0.5)
final = {j: (s.value if (s := status(j)) is not None else None) for j in every}
stuck = {j: [(e.status.value, e.node, e.attempt, str(e.reason)) for e in c.job(j).timeline()]
         for j, s in final.items() if s not in (None, "succeeded")}
print(json.dumps({"ids": ids, "after": after, "refused": refused,
                  "submitter_alive": submitter.is_alive(), "status": final, "stuck": stuck}),
      flush=True)
"""


def read_line(proc: subprocess.Popen[str], timeout: float) -> dict[str, object]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        raise AssertionError(f"no answer from the producer in {timeout} s")
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr else ""
        raise AssertionError(f"the producer ended: {err[-3000:]}")
    return dict(json.loads(line))


def sentinel(c: Cluster, *args: str, auth: bool = True) -> subprocess.CompletedProcess[str]:
    """redis-cli against sentinel-1, over TLS, with (or without) the Sentinels' password."""
    password = (c.secrets / "sentinel.password").read_text().strip() if auth else ""
    return subprocess.run(
        ["docker", "exec", "-e", f"REDISCLI_AUTH={password}", c.container("sentinel-1"),
         "redis-cli", "--tls", "--cacert", "/secrets/ca.crt", "-p", "26379", "--no-auth-warning",
         *args],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip


def master(c: Cluster) -> str:
    return sentinel(c, "SENTINEL", "get-master-addr-by-name", "mymaster").stdout.split("\n")[0]


def test_the_master_dies_during_a_burst_and_a_replica_takes_over(
    sentinel_cluster: Cluster, docker_client: docker.DockerClient
) -> None:
    c = sentinel_cluster
    assert master(c) == "redis"
    refused = sentinel(c, "PING", auth=False)  # the Sentinels want their password
    assert "NOAUTH" in refused.stdout + refused.stderr, refused
    creds = c.role("producer")
    proc = subprocess.Popen(
        ["docker", "exec", "-i", "-e", "OFFLOAD_REDIS_USER", "-e", "OFFLOAD_REDIS_PASSWORD",
         "-e", "OFFLOAD_HOME=/tmp/producer", c.container("node-1"), "python3", "-c", BURST],
        env={**c.env, **creds},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        started = read_line(proc, 60)
        assert int(str(started["submitted"])) >= 4, started
        # the window the test allows is replication's lag, so the replica must be streaming
        wait_for(lambda: replica_online(c), 10, "the replica online before the kill", interval=0.2)
        docker_client.containers.get(c.container("redis")).kill()
        t0 = time.monotonic()
        wait_for(lambda: master(c) == "redis-replica", 30, "the replica promoted", interval=0.5)
        promoted_in = time.monotonic() - t0
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        report = read_line(proc, 150)
    finally:
        proc.kill()
        proc.wait(10)
    ids, after = list(report["ids"]), list(report["after"])  # type: ignore[call-overload]
    status: dict[str, str | None] = report["status"]  # type: ignore[assignment]
    assert not report["submitter_alive"] and len(ids) == 12, report["refused"]
    lost = [j for j, s in status.items() if s is None]
    assert len(lost) <= 2, f"lost in the replication window: {lost}"
    ended = {s for s in status.values() if s is not None}
    why = (report["stuck"], c.logs("node-1", "node-2", "node-3", "autoscaler"))
    assert {status[j] for j in after} == {"succeeded"}, why
    assert ended == {"succeeded"}, why
    assert promoted_in < 30
