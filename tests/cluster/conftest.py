"""The multi-host test cluster of ``infra/cluster`` (compose): TLS Redis with ACL users, S3
behind TLS, three worker-node containers on a private bridge network, the autoscaler and
Flower. Each test module brings up a cluster of its own (its own compose project, secrets,
loopback ports and node homes) once, and removes it — containers, networks, volumes and the
job containers its nodes left — afterwards.

The modules are in xdist groups (``cluster``, ``cluster-sentinel``): each runs whole in one
pytest process, next to the rest of the suite (``--dist loadgroup`` in ``infra/test.sh``).

The host reaches the cluster as a producer on another host would: ``rediss://127.0.0.1:<port>``
and ``https://127.0.0.1:<port>`` with the cluster's CA, its own ACL user and the cluster key.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
import redis

from offload import Client
from offload.broker.nodes import NodeRegistry
from offload.config import Settings
from tests.conftest import free_port, settings_from_env, wait_for

CLUSTER = Path(__file__).resolve().parents[2] / "infra" / "cluster"
NODES = ("node-1", "node-2", "node-3")
AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class Cluster:
    project: str
    secrets: Path
    homes: Path
    redis_port: int
    s3_port: int
    flower_port: int
    sentinel: bool

    @property
    def env(self) -> dict[str, str]:
        """What up.sh and down.sh are given."""
        return {
            **os.environ,
            "OFFLOAD_CLUSTER_PROJECT": self.project,
            "OFFLOAD_CLUSTER_SECRETS": str(self.secrets),
            "OFFLOAD_CLUSTER_DIR": str(self.homes),
            "OFFLOAD_CLUSTER_REDIS_PORT": str(self.redis_port),
            "OFFLOAD_CLUSTER_S3_PORT": str(self.s3_port),
            "OFFLOAD_CLUSTER_FLOWER_PORT": str(self.flower_port),
            "OFFLOAD_CLUSTER_SLOTS": "1",  # one job per node: parallel jobs land on 2 nodes
            "OFFLOAD_CLUSTER_SENTINEL": "1" if self.sentinel else "0",
            "OFFLOAD_SKIP_IMAGES": "1",  # infra/setup.sh built them
        }

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    @property
    def job_network(self) -> str:
        return f"{self.project}-orders"

    def role(self, role: str) -> dict[str, str]:
        """A role's OFFLOAD_REDIS_USER / _PASSWORD, from certs.sh's <role>.env."""
        lines = (self.secrets / f"{role}.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def settings(self, role: str = "producer") -> Settings:
        """Settings of a process on the host reaching the cluster as ``role``."""
        return settings_from_env(self.cli_env(role))

    def cli_env(self, role: str = "producer", **over: str) -> dict[str, str]:
        """The environment of an ``offload`` command run on the host as ``role``."""
        creds = self.role(role)
        return {
            **os.environ,
            "OFFLOAD_REDIS_URL": f"rediss://127.0.0.1:{self.redis_port}/0",
            "OFFLOAD_REDIS_CA": str(self.secrets / "ca.crt"),
            **creds,
            "OFFLOAD_KEY_FILE": str(self.secrets / "key"),
            "OFFLOAD_HOME": str(self.homes / f"host-{role}"),
            "OFFLOAD_S3_BUCKET": "offload",
            "OFFLOAD_S3_ENDPOINT_URL": f"https://127.0.0.1:{self.s3_port}",
            "OFFLOAD_S3_CA_BUNDLE": str(self.secrets / "ca.crt"),
            "OFFLOAD_JOB_NETWORKS": self.job_network,
            **AWS,
            **over,
        }

    def client(self) -> Client:
        return Client(self.settings())

    def admin(self, decode: bool = True) -> redis.Redis:
        """The cluster's Redis as its administrator (for checks a test makes)."""
        return redis.Redis(
            port=self.redis_port,
            ssl=True,
            ssl_ca_certs=str(self.secrets / "ca.crt"),
            username="offload-admin",
            password=(self.secrets / "admin.password").read_text().strip(),
            decode_responses=decode,
            socket_timeout=10,
        )

    def compose(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        files = ["-f", str(CLUSTER / "docker-compose.yml")]
        if self.sentinel:
            files += ["-f", str(CLUSTER / "docker-compose.sentinel.yml")]
        return subprocess.run(
            ["docker-compose", "-p", self.project, *files, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def logs(self, *services: str) -> str:
        """The last lines of the services' logs, for a failing assertion's message."""
        out = self.compose("logs", "--no-color", "--tail", "40", *services)
        return (out.stdout + out.stderr)[-8000:]

    def up_nodes(self) -> set[str]:
        """The nodes registered and not lost (heartbeats within OFFLOAD_LOST_AFTER, 6 s)."""
        with self.admin() as r:
            nodes = NodeRegistry(r, lost_after=6).nodes()
        return {n.name for n in nodes if n.name in NODES and not n.lost}


def start(tmp: Path, sentinel: bool, engine: docker.DockerClient) -> Cluster:
    for image in ("offload/redis", "offload/s3", "offload/worker"):
        try:
            engine.images.get(image)
        except docker.errors.ImageNotFound:
            pytest.fail(f"image {image} is not built; run infra/setup.sh", pytrace=False)
    c = Cluster(
        project=f"offload-test-{uuid.uuid4().hex[:8]}",
        secrets=tmp / "secrets",
        homes=tmp / "homes",
        redis_port=free_port(),
        s3_port=free_port(),
        flower_port=free_port(),
        sentinel=sentinel,
    )
    up = subprocess.run(
        ["bash", str(CLUSTER / "up.sh")], env=c.env, capture_output=True, text=True, timeout=300
    )
    if up.returncode != 0:
        stop(c)
        pytest.fail(f"infra/cluster/up.sh failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}")
    try:
        wait_for(lambda: c.up_nodes() == set(NODES), 90, "three nodes registered", interval=0.5)
    except (AssertionError, redis.RedisError):
        logs = c.logs()
        stop(c)
        raise AssertionError(f"the cluster's nodes did not come up:\n{logs}") from None
    return c


def stop(c: Cluster) -> None:
    subprocess.run(["bash", str(CLUSTER / "down.sh")], env=c.env, capture_output=True, timeout=180)


@contextlib.contextmanager
def running(
    engine: docker.DockerClient, tmp: pytest.TempPathFactory, sentinel: bool
) -> Iterator[Cluster]:
    """A cluster of its own, up for the ``with`` block and removed after it."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in AWS.items():  # the moto S3's credentials, for in-process clients
            mp.setenv(name, value)
        c = start(tmp.mktemp("cluster"), sentinel=sentinel, engine=engine)
        try:
            yield c
        finally:
            stop(c)


@pytest.fixture(scope="module")
def cluster(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    with running(docker_client, tmp_path_factory, sentinel=False) as c:
        yield c


@pytest.fixture(scope="module")
def sentinel_cluster(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """The same with a replica and three Sentinels (docker-compose.sentinel.yml)."""
    with running(docker_client, tmp_path_factory, sentinel=True) as c:
        # the replica's first full sync starts after Redis's diskless-sync delay (5 s): until
        # it is online, every write of the master is on the master alone, and a failover then
        # loses them all, not the "write or two" of the replication window
        wait_for(lambda: replica_online(c), 60, "the replica in sync with the master", interval=0.5)
        yield c


def replica_online(c: Cluster) -> bool:
    """The master has its replica online (full sync done) and nearly caught up."""
    with c.admin() as r:
        info = r.info("replication")
    replica = info.get("slave0")
    return (
        isinstance(replica, dict)
        and replica.get("state") == "online"
        and int(replica.get("lag", 99)) <= 1
    )
