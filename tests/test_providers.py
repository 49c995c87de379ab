"""Node providers against the real thing: local worker processes, node containers on the
Docker engine, and EC2 Auto Scaling through boto3 against moto's server.

Local and docker: a node starts, registers, runs a job; draining it while a job runs lets
the job finish (it succeeds, once) and then the node exits. Nothing here ever kills a node.
What every provider promises (listing, draining, restarts, errors) is checked once for all
in tests/test_provider_conformance.py.
"""

from __future__ import annotations

import base64
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from offload import JobStatus
from offload.autoscaler.aws import AwsProvider, user_data
from offload.autoscaler.docker_provider import DockerProvider
from offload.autoscaler.local import LocalProvider
from offload.autoscaler.nodeenv import node_env, settings_env
from offload.broker.app import redis_client
from offload.broker.nodes import NodeRegistry
from offload.config import Settings
from offload.errors import ConfigError
from tests.conftest import bare_settings

from .conftest import Platform, make_platform, wait_for
from .s3server import MotoServer
from .test_provider_conformance import worker_image  # noqa: F401  (a fixture)

SCRIPT = "echo started; sleep 4; echo done > /offload/out/result.txt"


def registry(settings: Settings) -> NodeRegistry:
    return NodeRegistry(redis_client(settings), lost_after=settings.lost_after)


def registered(settings: Settings, name: str) -> bool:
    info = registry(settings).get(name)
    return info is not None and info.state == "up"


def drain_while_running(p: Platform, provider: LocalProvider | DockerProvider, name: str) -> None:
    """A job runs on the node; drain it; the job succeeds once and the node goes away."""
    job = p.client.submit("offload/base", ["sh", "-c", SCRIPT], name="drain-me", cache=False)
    wait_for(lambda: job.status() is JobStatus.RUNNING, 60, "the job to run")
    provider.drain(name)
    assert [n.state for n in provider.nodes() if n.name == name] in (["draining"], [])
    provider.drain(name)  # idempotent
    result = job.result(timeout=60)
    assert result.ok, result
    assert p.client.read(result.outputs["result.txt"]) == b"done\n"
    statuses = [e.status for e in job.timeline()]
    assert statuses.count(JobStatus.RUNNING) == 1
    assert statuses.count(JobStatus.SUCCEEDED) == 1
    wait_for(lambda: all(n.name != name for n in provider.nodes()), 60, "the node to exit")
    assert registry(p.settings).get(name) is None  # deregistered
    assert "Warm shutdown" in provider.log_path(name).read_text(errors="replace")  # no kill
    provider.drain(name)  # a gone node: no-op


# -- local ---------------------------------------------------------------------------------


@pytest.fixture(params=["shared-cache", "s3"])
def node_platform(
    request: pytest.FixtureRequest,
    redis_server: str,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> Platform:
    """A platform of the test's own; with "s3", blobs travel through a bucket on moto."""
    extra = {}
    if request.param == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        extra = {"OFFLOAD_S3_BUCKET": bucket.bucket, "OFFLOAD_S3_ENDPOINT_URL": bucket.endpoint_url}
    return make_platform(redis_server, tmp_path / "home", **extra)


@pytest.fixture
def local(node_platform: Platform) -> Iterator[tuple[Platform, LocalProvider]]:
    provider = LocalProvider(node_platform.settings, slots=1)
    yield node_platform, provider
    for n in provider.nodes():  # a failed test: let leftovers finish, never kill
        provider.drain(n.name)


def test_settings_env_round_trips() -> None:
    base = bare_settings()
    tiny = base.classes[0].model_copy(update={"name": "tiny"})
    s = bare_settings(
        classes=(tiny, *base.classes[1:]),
        s3_bucket="b",
        max_timeout=600,
        cache_budget="1g",
        node_name="mine",
    )
    env = settings_env(s)
    assert "OFFLOAD_NODE_NAME" not in env and "OFFLOAD_HOME" not in env
    assert "OFFLOAD_PULL_TIMEOUT" not in env  # defaults are not written
    again = bare_settings(
        **{k.removeprefix("OFFLOAD_").lower(): v for k, v in env.items()},
    )
    for field in ("classes", "s3_bucket", "max_timeout", "cache_budget", "redis_url"):
        assert getattr(again, field) == getattr(s, field)


def test_settings_env_writes_no_secret_and_node_env_the_ones_a_node_needs(
    tmp_path: Path,
) -> None:
    """A secret setting dumps as '**********': written out, it would replace the real value
    on the node (and user data must hold no secret). A node gets its Redis credentials and
    the Sentinels' password from node_env, never Flower's."""
    s = bare_settings(
        redis_url="sentinel://s1:26379;sentinel://s2:26379/0",
        redis_password="master-secret",
        redis_sentinel_password="sentinel-secret",
        flower_auth="admin:flower-secret",
    )
    env = settings_env(s)
    assert not any("*" * 5 in v or "secret" in v for v in env.values()), env
    node = node_env(s, "n1", "cpu-small", "local", home=tmp_path, cache_dir=tmp_path,
                    key_file=tmp_path / "key")  # fmt: skip
    assert node["OFFLOAD_REDIS_PASSWORD"] == "master-secret"
    assert node["OFFLOAD_REDIS_SENTINEL_PASSWORD"] == "sentinel-secret"
    assert "OFFLOAD_FLOWER_AUTH" not in node


def test_local_node_starts_registers_runs_and_drains(
    local: tuple[Platform, LocalProvider],
) -> None:
    p, provider = local
    (name,) = provider.start_nodes("cpu-small", 1)
    assert name.startswith("cpu-small-")
    log = provider.log_path(name)
    wait_for(lambda: registered(p.settings, name), 60, f"{name} to register ({log})")
    info = registry(p.settings).get(name)
    assert info is not None
    assert info.provider == "local" and info.classes == ("cpu-small",) and info.slots == 1
    wait_for(  # it answers Celery's control pings (a moment after it registered)
        lambda: any(f"offload@{name}" in r for r in p.client.broker.app.control.ping(timeout=1)),
        20,
        f"{name} to answer a ping",
    )

    (node,) = provider.nodes()
    assert (node.name, node.resource_class, node.state) == (name, "cpu-small", "running")
    own_cache = (p.settings.home / "nodes" / name / "cache").is_dir()
    assert own_cache == bool(p.settings.s3_bucket)

    drain_while_running(p, provider, name)
    assert not (p.settings.home / "run" / "nodes" / f"{name}.json").exists()
    assert log.exists()


# -- docker --------------------------------------------------------------------------------


def test_docker_node_starts_registers_runs_and_drains(
    node_platform: Platform,
    docker_client: docker.DockerClient,
    worker_image: str,  # noqa: F811  (the fixture imported above)
) -> None:
    p = node_platform
    provider = DockerProvider(p.settings, image=worker_image, client=docker_client, slots=1)
    names: list[str] = []
    try:
        names += provider.start_nodes("cpu-small", 1)
        (name,) = names
        container = provider.container(name)
        assert container is not None
        attrs = container.attrs
        assert attrs["HostConfig"]["NetworkMode"] == "host"
        assert attrs["Config"]["Labels"]["offload.node"] == name
        home = str((p.settings.home / "nodes" / name).resolve())
        binds = {m["Destination"]: (m["Source"], m["RW"]) for m in attrs["Mounts"]}
        assert binds[home] == (home, True)  # the same path inside and out
        key = str(p.settings.key_path.resolve())
        assert binds[key] == (key, False)
        assert "/var/run/docker.sock" in binds
        env = dict(e.split("=", 1) for e in attrs["Config"]["Env"])
        assert env["OFFLOAD_PROVIDER"] == "docker"
        if p.settings.s3_bucket:
            assert env["OFFLOAD_CACHE_DIR"] == f"{home}/cache"
            assert env["AWS_ACCESS_KEY_ID"] == os.environ["AWS_ACCESS_KEY_ID"]
        else:  # the only store: shared, at the same path
            shared = str(p.settings.store_dir.resolve())
            assert env["OFFLOAD_CACHE_DIR"] == shared and binds[shared] == (shared, True)

        wait_for(
            lambda: registered(p.settings, name),
            45,
            f"{name} to register: {container.logs()[-3000:]!r}",
        )
        info = registry(p.settings).get(name)
        assert info is not None and info.provider == "docker"
        assert [(n.name, n.state) for n in provider.nodes()] == [(name, "running")]

        drain_while_running(p, provider, name)
        assert (
            docker_client.containers.list(all=True, filters={"label": f"offload.node={name}"}) == []
        )
        assert provider.log_path(name).exists()  # its output outlives the container
    finally:
        for n in names:  # a failed test: never kill, but do not leave it consuming either
            provider.drain(n)


# -- aws (moto) ----------------------------------------------------------------------------


@pytest.fixture
def aws(s3_server: MotoServer, tmp_path: Path) -> Iterator[AwsProvider]:
    s3_server.start()
    settings = bare_settings(
        home=tmp_path,
        redis_url="rediss://broker.example:6380/0",
        s3_bucket="offload-bucket",
        max_timeout=900,
    )
    provider = AwsProvider(
        settings,
        endpoint_url=s3_server.endpoint_url,
        region="us-east-1",
        classes=["cpu-small", "cpu-large"],
        group_template=f"t{uuid.uuid4().hex[:6]}-{{class}}",
    )
    yield provider
    provider.close()


def _subnet_and_ami(provider: AwsProvider) -> tuple[str, str]:
    subnet = provider.ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    images = provider.ec2.describe_images(Owners=["amazon"])["Images"]
    return subnet, images[0]["ImageId"] if images else "ami-12c6146b"


def _group(provider: AwsProvider, cls: str) -> dict:  # type: ignore[type-arg]
    name = provider.group_name(cls)
    return provider.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])[
        "AutoScalingGroups"
    ][0]


def test_aws_groups_scale_protect_and_drain(aws: AwsProvider) -> None:
    provider = aws
    subnet, ami = _subnet_and_ami(provider)
    with pytest.raises(ConfigError, match="no Auto Scaling group"):
        provider.start_nodes("cpu-small", 1)

    created = provider.ensure_groups(
        ami, {"cpu-small": "t3.small", "cpu-large": "c6i.2xlarge"}, [subnet], max_size=3
    )
    assert created == {"cpu-small": True, "cpu-large": True}
    assert provider.ensure_groups(ami, "t3.small", [subnet]) == {
        "cpu-small": False,
        "cpu-large": False,
    }
    group = _group(provider, "cpu-small")
    assert (group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) == (0, 3, 0)
    assert group["NewInstancesProtectedFromScaleIn"] is True
    template = provider.ec2.describe_launch_template_versions(
        LaunchTemplateName=provider.group_name("cpu-small"), Versions=["$Latest"]
    )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    assert template["InstanceType"] == "t3.small"
    script = base64.b64decode(template["UserData"]).decode()
    assert "OFFLOAD_WORKER_CLASSES='cpu-small'" in script
    assert "OFFLOAD_PROVIDER='aws'" in script
    assert provider.nodes() == []

    # scale up: from zero, capped at the group's maximum
    started = provider.start_nodes("cpu-small", 2)
    assert _group(provider, "cpu-small")["DesiredCapacity"] == 2
    nodes = provider.nodes()
    assert len(nodes) == 2 and {n.resource_class for n in nodes} == {"cpu-small"}
    assert set(started) <= {n.name for n in nodes}
    assert all(n.state in ("starting", "running") and n.name.startswith("i-") for n in nodes)
    provider.start_nodes("cpu-small", 5)
    assert _group(provider, "cpu-small")["DesiredCapacity"] == 3
    assert len(provider.nodes()) == 3

    # protection: on at launch, off for an idle node, on again for a busy one
    first, second = sorted(n.name for n in provider.nodes())[:2]

    def protected(instance: str) -> bool:
        (inst,) = provider.autoscaling.describe_auto_scaling_instances(InstanceIds=[instance])[
            "AutoScalingInstances"
        ]
        return bool(inst["ProtectedFromScaleIn"])

    assert protected(first) and protected(second)
    provider.protect(first, busy=False)
    assert not protected(first)
    provider.protect(first, busy=True)
    assert protected(first)

    # drain an idle instance: protection off, terminated, desired capacity one lower
    provider.drain(first)
    assert _group(provider, "cpu-small")["DesiredCapacity"] == 2
    remaining = {n.name: n.state for n in provider.nodes()}
    assert remaining.get(first) in (None, "draining")
    assert second in remaining and remaining[second] != "draining"
    provider.drain(first)  # already going: no-op
    assert _group(provider, "cpu-small")["DesiredCapacity"] == 2
    assert _group(provider, "cpu-large")["DesiredCapacity"] == 0


def test_aws_user_data(tmp_path: Path) -> None:
    settings = bare_settings(
        home=tmp_path,
        redis_url="rediss://broker.example:6380/0",
        s3_bucket="offload-bucket",
        s3_prefix="team/",
        max_timeout=900,
    )
    script = user_data(settings, "cpu-large", install="offload==0.1.0", key_parameter="/k")
    for line in (
        "OFFLOAD_REDIS_URL='rediss://broker.example:6380/0'",
        "OFFLOAD_S3_BUCKET='offload-bucket'",
        "OFFLOAD_S3_PREFIX='team/'",
        "OFFLOAD_WORKER_CLASSES='cpu-large'",
        "OFFLOAD_PROVIDER='aws'",
        "OFFLOAD_KEY_FILE='/etc/offload/key'",
        "pip install --disable-pip-version-check -q offload==0.1.0",
        "X-aws-ec2-metadata-token-ttl-seconds",  # IMDSv2
        'echo "OFFLOAD_NODE_NAME=$INSTANCE_ID"',
        "TimeoutStopSec=1020",
        "KillSignal=SIGTERM",
        "'/k'",
    ):
        assert line in script, line
    assert str(tmp_path) not in script  # nothing of this machine's paths
    check = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert check.returncode == 0, check.stderr
    with pytest.raises(ConfigError, match="password"):
        user_data(
            settings.model_copy(update={"redis_url": "redis://:s3cret@h:6379/0"}), "cpu-small"
        )
    with_secret = user_data(
        settings.model_copy(update={"redis_url": "redis://:s3cret@h:6379/0"}),
        "cpu-small",
        env_parameter="/offload/env",
    )
    assert "s3cret" not in with_secret and "'/offload/env'" in with_secret
    with pytest.raises(ConfigError):
        user_data(settings, "no-such-class")
