"""The multi-host cluster (infra/cluster), end to end: TLS Redis with ACL users (default user
off), S3 behind TLS, three worker nodes each in its own container on a private bridge network,
the autoscaler and Flower behind auth. The host is a producer on another host.

* a pipeline whose two first steps run on two nodes, joined on one of them (data crosses
  nodes through S3);
* a node killed (``docker kill``, its job container with it, as when a host dies) in the middle
  of a job: the job runs again elsewhere, once, and ends;
* a secret's value is in no Redis key, not in the AOF and not in Flower's pages;
* a job written straight into Redis without the cluster key is never run;
* the worker's credentials cannot run FLUSHALL, CONFIG, MODULE, KEYS nor touch other keys;
* the wrong CA fails closed, naming the setting;
* a job reaches the internal service only on the network it names (the allow-list).
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest
import redis

from offload import JobStatus, SpecError
from offload.broker import keys
from offload.broker.connection import redis_client
from offload.broker.publish import publish
from offload.spec import JobSpec
from tests.conftest import offload_cli, wait_for
from tests.faults.conftest import Runs
from tests.test_job_networks import PROBE
from tests.test_sealed_secrets import everything_in

from .conftest import NODES, Cluster

pytestmark = pytest.mark.xdist_group("cluster")

PY = "offload/python"


def run_cli(c: Cluster, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return offload_cli(c.cli_env(**env), *args)


def test_a_pipeline_runs_across_nodes(cluster: Cluster) -> None:
    c = cluster.client()
    write = "import sys; sys.stdout.buffer.write(b'%s' * %d)"
    left = c.submit(  # 3 MiB and 2 MiB: above OFFLOAD_LOCALITY_MIN_BYTES, so nodes index them
        PY,
        ["sh", "-c", f'sleep 2; python3 -c "{write % ("L", 3 << 20)}" > /offload/out/part'],
        memory="128m",
    )
    right = c.submit(
        PY,
        ["sh", "-c", f'sleep 2; python3 -c "{write % ("R", 2 << 20)}" > /offload/out/part'],
        memory="128m",
    )
    joined = c.submit(
        PY,
        ["sh", "-c", "cat /offload/in/a /offload/in/b | sha256sum > /offload/out/joined"],
        inputs={"a": left.output("part"), "b": right.output("part")},
        memory="128m",
    )
    result = joined.result(timeout=120)
    assert result.status is JobStatus.SUCCEEDED, cluster.logs(*NODES)
    expected = hashlib.sha256(b"L" * (3 << 20) + b"R" * (2 << 20)).hexdigest()
    assert c.read(result.outputs["joined"]).decode().split()[0] == expected
    first, second = left.result(timeout=5).node, right.result(timeout=5).node
    assert first != second and {first, second} <= set(NODES)  # one slot per node
    # routed to the node holding the larger input; the other came from S3
    assert result.node == first, c.broker.redis.hget(keys.job(joined.id), "route_why")


def test_a_node_killed_mid_job_runs_it_elsewhere_once(
    cluster: Cluster, docker_client: docker.DockerClient
) -> None:
    c = cluster.client()
    runs = Runs(docker_client)
    job = c.submit(PY, ["sh", "-c", "sleep 6; echo done > /offload/out/r"], memory="128m")
    wait_for(lambda: job.status() is JobStatus.RUNNING, 60, "the job running")
    victim = job.record().node
    assert victim in NODES
    try:
        # the host dies, and the job's container with it
        docker_client.containers.get(cluster.container(victim)).kill()
        for ctr in docker_client.containers.list(filters={"label": f"offload.job_id={job.id}"}):
            ctr.kill()
        result = job.result(timeout=120)
        assert result.status is JobStatus.SUCCEEDED, (job.timeline(), cluster.logs(*NODES))
        assert result.node != victim and result.node in NODES
        assert result.attempt == 2
        assert runs.count([job.id])[job.id] == 2  # once on the dead node, once elsewhere
        assert any(e.reason == "node_lost" for e in job.timeline())
        assert c.read(result.outputs["r"]) == b"done\n"
    finally:
        docker_client.containers.get(cluster.container(victim)).start()
        wait_for(lambda: cluster.up_nodes() == set(NODES), 60, f"{victim} back", interval=0.5)
    # nothing left behind: its containers (the dead one's was killed, then removed)
    leftover = docker_client.containers.list(
        all=True, filters={"label": f"offload.job_id={job.id}", "status": "running"}
    )
    assert leftover == []


def flower_get(c: Cluster, path: str, auth: bool = True) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{c.flower_port}{path}")
    if auth:
        user_pw = (c.secrets / "flower.env").read_text().strip().split("=", 1)[1]
        req.add_header("Authorization", "Basic " + base64.b64encode(user_pw.encode()).decode())
    with urllib.request.urlopen(req, timeout=10) as r:
        return str(r.read().decode())


def test_a_secret_is_in_no_redis_key_nor_the_aof_nor_flower(cluster: Cluster) -> None:
    c = cluster.client()
    token = f"tok-{uuid.uuid4().hex}"
    digest = hashlib.sha256(token.encode()).hexdigest()
    job = c.submit(
        PY,
        ["sh", "-c", 'printf %s "$OFFLOAD_PARAM_TOKEN" | sha256sum > /offload/out/h'],
        secrets={"token": token},
        memory="128m",
    )
    result = job.result(timeout=90)
    assert result.status is JobStatus.SUCCEEDED, cluster.logs(*NODES)
    assert c.read(result.outputs["h"]).decode().split()[0] == digest  # the job saw it

    def tasks() -> dict[str, Any]:
        return dict(json.loads(flower_get(cluster, "/api/tasks")))

    wait_for(lambda: job.id in tasks(), 30, "Flower to list the job", interval=0.5)
    with cluster.admin(decode=False) as r:
        keys_and_values = everything_in(r)
    aof = subprocess.run(
        ["docker", "exec", cluster.container("redis"), "sh", "-c", "cat /data/appendonlydir/*"],
        capture_output=True,
        timeout=30,
    )
    assert aof.returncode == 0 and job.id.encode() in aof.stdout  # the right file, read whole
    status = run_cli(cluster, "status", job.id)
    places: dict[str, bytes] = {
        "every Redis key": keys_and_values,
        "the AOF": aof.stdout,
        "Flower /api/tasks": flower_get(cluster, "/api/tasks").encode(),
        "Flower /tasks": flower_get(cluster, "/tasks").encode(),
        "Flower task page": flower_get(cluster, f"/task/{job.id}").encode(),
        "offload status": status.stdout.encode(),
    }
    for where, text in places.items():
        assert token.encode() not in text, f"the secret's value is in clear in {where}"
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        flower_get(cluster, "/api/tasks", auth=False)
    assert anonymous.value.code == 401


def test_a_job_written_into_redis_without_the_key_is_never_run(
    cluster: Cluster, docker_client: docker.DockerClient
) -> None:
    c = cluster.client()  # a producer's Redis rights, but no use of the cluster key
    runs = Runs(docker_client)
    forged = uuid.uuid4().hex
    spec = JobSpec(image=PY, command=("sh", "-c", "echo pwned > /offload/out/x"))
    c.broker.records.create(forged, spec, "cpu-small")
    publish(c.broker.app, c.broker.records.get(forged))
    honest = c.submit(PY, ["true"], memory="128m")
    wait_for(lambda: c.job(forged).status().terminal, 60, "the forged job to end")
    record = c.job(forged).record()
    assert record.status is JobStatus.FAILED and record.reason == "forged", record
    assert honest.result(timeout=60).status is JobStatus.SUCCEEDED  # the nodes go on
    assert runs.count([forged])[forged] == 0


def test_the_worker_user_cannot_administer_redis(cluster: Cluster) -> None:
    r = redis_client(cluster.settings("worker"))
    try:
        assert r.ping()
        for command in (
            ("FLUSHALL",),
            ("FLUSHDB",),
            ("CONFIG", "GET", "*"),
            ("MODULE", "LIST"),
            ("KEYS", "*"),
            ("ACL", "LIST"),
            ("SET", "elsewhere", "1"),
            ("GET", "elsewhere"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                r.execute_command(*command)
    finally:
        r.close()
    anonymous = redis.Redis(
        port=cluster.redis_port, ssl=True, ssl_ca_certs=str(cluster.secrets / "ca.crt")
    )
    with pytest.raises(redis.AuthenticationError):  # the default user is off
        anonymous.ping()


def test_the_wrong_ca_fails_closed_naming_the_setting(cluster: Cluster, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=some other CA", "-keyout", str(tmp_path / "k"), "-out", str(other)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    redis_side = run_cli(cluster, "ls", OFFLOAD_REDIS_CA=str(other))
    assert redis_side.returncode == 2, redis_side.stderr
    assert "OFFLOAD_REDIS_CA" in redis_side.stderr and "certificate" in redis_side.stderr
    data = tmp_path / "data.txt"
    data.write_text("x")
    s3_side = run_cli(cluster, "put", str(data), OFFLOAD_S3_CA_BUNDLE=str(other))
    assert s3_side.returncode != 0
    assert "OFFLOAD_S3_CA_BUNDLE" in s3_side.stderr, s3_side.stderr
    ok = run_cli(cluster, "put", str(data))  # the right CA: the same call works
    assert ok.returncode == 0, ok.stderr


def test_a_job_reaches_the_internal_service_only_on_its_allowed_network(
    cluster: Cluster,
) -> None:
    c = cluster.client()
    on = c.submit(PY, ["python3", "-c", PROBE], network=cluster.job_network, memory="128m")
    off = c.submit(PY, ["python3", "-c", PROBE], memory="128m")
    assert on.result(timeout=90).status is JobStatus.SUCCEEDED, [x.text for x in on.logs()]
    assert any(line.text.strip() == "200" for line in on.logs())
    assert off.result(timeout=90, raise_on_failure=False).status is JobStatus.FAILED
    assert any("unreachable" in line.text for line in off.logs())
    with pytest.raises(SpecError) as refused:
        c.submit(PY, ["true"], network=f"{cluster.project}_offload-cluster")  # the nodes' own
    assert refused.value.field == "network"
