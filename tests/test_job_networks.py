"""Reaching an internal service on purpose: a job naming an allowed Docker network
(`network="<net>"`, allowed by OFFLOAD_JOB_NETWORKS) reaches a service on it; a job without
it reaches nothing; a network outside the allow-list is refused at submit naming the field."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from offload import SpecError

from .conftest import Platform, make_platform

PROBE = (
    "import urllib.request,sys\n"
    "try:\n"
    "    print(urllib.request.urlopen('http://orders-db:8000/', timeout=5).status)\n"
    "except Exception as e:\n"
    "    print('unreachable', type(e).__name__); sys.exit(3)\n"
)


@pytest.fixture
def service_net(docker_client: docker.DockerClient) -> Iterator[str]:
    """A user-defined network of the test's own with a small HTTP service named orders-db."""
    name = f"offload-test-net-{uuid.uuid4().hex[:8]}"
    net = docker_client.networks.create(name, driver="bridge")
    svc = docker_client.containers.create(
        "offload/python",
        ["python3", "-m", "http.server", "8000", "--directory", "/tmp"],
        name=f"{name}-svc",
        labels={"offload.test": "networks"},
    )
    net.connect(svc, aliases=["orders-db"])
    svc.start()
    try:
        yield name
    finally:
        svc.remove(force=True)
        net.remove()


def test_a_job_reaches_a_service_only_on_its_allowed_network(
    redis_server: str, docker_client: docker.DockerClient, service_net: str, tmp_path: Path
) -> None:
    p: Platform = make_platform(redis_server, tmp_path / "home", OFFLOAD_JOB_NETWORKS=service_net)
    p.start_worker()
    try:
        c = p.client
        on = c.submit("offload/python", ["python3", "-c", PROBE], network=service_net,
                      memory="128m", timeout=60)  # fmt: skip
        off = c.submit("offload/python", ["python3", "-c", PROBE], memory="128m", timeout=60)
        assert on.result(timeout=120).status == "succeeded", [x.text for x in on.logs()]
        assert any(line.text.strip() == "200" for line in on.logs())
        off_result = off.result(timeout=120, raise_on_failure=False)
        assert off_result.status == "failed"
        assert any("unreachable" in line.text for line in off.logs())
        with pytest.raises(SpecError) as refused:
            c.submit("offload/python", ["true"], network="some-other-net")
        assert refused.value.field == "network" and "OFFLOAD_JOB_NETWORKS" in str(refused.value)
        with pytest.raises(SpecError) as host:
            c.submit("offload/python", ["true"], network="host")
        assert host.value.field == "network"

        # the same from the shell: --network NAME, and a name outside the allow-list refused
        cli_on = p.cli(
            "submit", "offload/python", "--network", service_net, "--memory", "128m", "--wait",
            "--", "python3", "-c", PROBE,
        )  # fmt: skip
        assert cli_on.returncode == 0, cli_on.stderr
        assert "200" in cli_on.stdout
        spec = c.job(cli_on.stderr.splitlines()[0].strip()).record().spec
        assert spec.network == service_net
        cli_off = p.cli("submit", "offload/python", "--network", "some-other-net", "--", "true")
        assert cli_off.returncode == 2 and "network" in cli_off.stderr
        anywhere = p.cli("submit", "offload/base", "--network", "--", "true")
        assert anywhere.returncode == 0, anywhere.stderr
        full = c.job(anywhere.stdout.strip())
        assert full.record().spec.network is True
        assert full.result(timeout=60).status == "succeeded"  # ended before the worker is killed
    finally:
        p.kill_worker()
