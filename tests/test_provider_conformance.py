"""The ``NodeProvider`` contract, run against every implementation: local worker processes,
node containers on the Docker engine, and EC2 Auto Scaling (boto3 against moto's server).

Each implementation's class overrides two factories — ``make`` (a provider on the test's
platform; called again, a fresh instance, as after an autoscaler restart) and ``broken`` (one
that cannot act) — and says whether its drained nodes go away here (``exits``). What a
node does with jobs while it drains is in tests/test_providers.py.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from offload.autoscaler.aws import AwsProvider
from offload.autoscaler.docker_provider import DockerProvider
from offload.autoscaler.local import LocalProvider
from offload.autoscaler.provider import NodeProvider
from offload.config import Settings
from offload.errors import ConfigError, ProviderError
from tests.conftest import bare_settings

from .conftest import REPO, Platform, make_platform, wait_for
from .s3server import MotoServer

Factory = Callable[[], NodeProvider]


@pytest.fixture(scope="session")
def worker_image(docker_client: docker.DockerClient) -> str:
    """offload/worker, (re)built from this working tree by build.sh (seconds when current)."""
    run = subprocess.run(
        [str(REPO / "infra/images/build.sh")], capture_output=True, text=True, timeout=900
    )
    if run.returncode != 0:
        pytest.fail(f"infra/images/build.sh failed:\n{run.stdout}\n{run.stderr}", pytrace=False)
    docker_client.images.get("offload/worker")
    return "offload/worker"


@pytest.fixture
def plat(redis_server: str, tmp_path: Path) -> Platform:
    return make_platform(redis_server, tmp_path / "home")


class ProviderContract:
    """What :class:`~offload.autoscaler.provider.NodeProvider` promises."""

    exits = True  # drained nodes leave this provider's list here (not so in moto)
    unknown_node = "cpu-small-00000000"

    @pytest.fixture
    def make(self) -> Iterator[Factory]:
        raise NotImplementedError

    @pytest.fixture
    def broken(self) -> NodeProvider:
        raise NotImplementedError

    @pytest.fixture
    def provider(self, make: Factory) -> Iterator[NodeProvider]:
        provider = make()
        yield provider
        for node in provider.nodes():  # a failed test: drain what is left, never kill
            provider.drain(node.name)
        provider.close()

    def test_an_unknown_class_starts_nothing(self, provider: NodeProvider) -> None:
        with pytest.raises(ConfigError, match="no-such-class"):
            provider.start_nodes("no-such-class", 1)
        assert provider.nodes() == []

    def test_started_nodes_are_listed_then_drain_away(
        self, provider: NodeProvider, make: Factory
    ) -> None:
        names = provider.start_nodes("cpu-small", 1)
        assert len(names) <= 1

        def listed() -> list[str]:
            return [n.name for n in provider.nodes()]

        wait_for(lambda: len(listed()) == 1, 30, "the node to be listed")
        (node,) = provider.nodes()
        assert set(names) <= {node.name}
        assert node.resource_class == "cpu-small"
        assert node.state in ("starting", "running")
        again = make()  # an autoscaler that restarts finds its nodes again
        assert [(n.name, n.resource_class) for n in again.nodes()] == [(node.name, "cpu-small")]
        again.close()

        provider.drain(node.name)
        assert [n.state for n in provider.nodes() if n.name == node.name] in (["draining"], [])
        provider.drain(node.name)  # idempotent
        assert [n.state for n in provider.nodes() if n.name == node.name] in (["draining"], [])
        if self.exits:
            wait_for(lambda: listed() == [], 60, "the drained node to go away")
            provider.drain(node.name)  # gone: a no-op

    def test_draining_a_node_not_its_own_is_a_no_op(self, provider: NodeProvider) -> None:
        provider.drain(self.unknown_node)
        assert provider.nodes() == []

    def test_a_provider_that_cannot_act_raises_provider_error(self, broken: NodeProvider) -> None:
        with pytest.raises(ProviderError):
            broken.start_nodes("cpu-small", 1)


class TestLocal(ProviderContract):
    @pytest.fixture
    def make(self, plat: Platform) -> Iterator[Factory]:
        yield lambda: LocalProvider(plat.settings, slots=1)

    @pytest.fixture
    def broken(self, plat: Platform, tmp_path: Path) -> NodeProvider:
        return LocalProvider(plat.settings, slots=1, python=str(tmp_path / "no-such-python"))

    def test_a_node_that_does_not_start_leaves_nothing(
        self, broken: NodeProvider, plat: Platform
    ) -> None:
        with pytest.raises(ProviderError, match="did not start"):
            broken.start_nodes("cpu-small", 1)
        assert broken.nodes() == []
        assert list((plat.settings.home / "nodes").glob("*")) == []


class TestDocker(ProviderContract):
    @pytest.fixture
    def make(
        self, plat: Platform, docker_client: docker.DockerClient, worker_image: str
    ) -> Iterator[Factory]:
        yield lambda: DockerProvider(plat.settings, image=worker_image, slots=1)

    @pytest.fixture
    def broken(self, plat: Platform, tmp_path: Path) -> NodeProvider:
        engine = docker.DockerClient(base_url=f"unix://{tmp_path}/no-docker.sock", version="1.45")
        return DockerProvider(plat.settings, client=engine)


class TestAws(ProviderContract):
    exits = False  # moto keeps a terminated instance "Terminating"
    unknown_node = "i-00000000000000000"

    @pytest.fixture
    def settings(self, tmp_path: Path) -> Settings:
        return bare_settings(
            home=tmp_path,
            redis_url="rediss://broker.example:6380/0",
            s3_bucket="offload-bucket",
            aws_group_name=f"t{uuid.uuid4().hex[:6]}-{{class}}",
        )

    @pytest.fixture
    def make(self, s3_server: MotoServer, settings: Settings) -> Iterator[Factory]:
        s3_server.start()

        def make() -> NodeProvider:
            return AwsProvider(settings, endpoint_url=s3_server.endpoint_url, region="us-east-1")

        setup = AwsProvider(settings, endpoint_url=s3_server.endpoint_url, region="us-east-1")
        subnet = setup.ec2.describe_subnets()["Subnets"][0]["SubnetId"]
        setup.ensure_groups("ami-12c6146b", "t3.small", [subnet], max_size=2)
        yield make

    @pytest.fixture
    def broken(
        self, s3_server: MotoServer, settings: Settings, monkeypatch: pytest.MonkeyPatch
    ) -> NodeProvider:
        from .conftest import free_port

        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # no retries against a closed port
        return AwsProvider(settings, endpoint_url=f"http://127.0.0.1:{free_port()}")
