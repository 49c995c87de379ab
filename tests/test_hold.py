"""Held classes on a real worker: `offload hold` lets running jobs finish, starts no new one
(each says why), `offload release` runs them; the autoscaler does not scale a held class up."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.autoscaler.aws import AwsProvider
from offload.autoscaler.loop import Autoscaler
from offload.autoscaler.policy import ClassLimits, Limits
from offload.broker.scaling import read_status
from offload.broker.status import JobStatus
from tests.conftest import Platform, make_platform, wait_for
from tests.s3server import MotoServer

HELD = "class cpu-small is held (offload release cpu-small)"


def test_hold_and_release(platform: Platform) -> None:
    c = platform.client
    tag = uuid.uuid4().hex[:6]
    running = c.submit("offload/base", ["sh", "-c", f"sleep 2; echo {tag}"], cache=False)
    wait_for(lambda: running.status() is JobStatus.RUNNING, 60, "the first job running")
    held = platform.cli("hold", "cpu-small")
    assert held.returncode == 0, held.stderr
    try:
        later = [
            c.submit("offload/base", ["sh", "-c", f"echo {tag} {n}"], cache=False) for n in range(2)
        ]
        assert running.result(timeout=60).ok  # a running job finishes
        wait_for(
            lambda: all(j.record().wait == "held:cpu-small" for j in later),
            60,
            "the new jobs waiting on the hold",
        )
        shown = platform.cli("status", later[0].id)
        assert f"waiting: {HELD}" in shown.stdout, shown.stdout
        assert all(j.record().started_at is None for j in later)  # none started
        queued = c.submit("offload/base", ["true"], cache=False)
        if queued.status() is JobStatus.QUEUED:  # not picked up yet: it says why too
            assert c.control.why(queued.record()) in (HELD, None)
    finally:
        released = platform.cli("release", "cpu-small")
    assert released.returncode == 0, released.stderr
    assert "queued" in released.stdout
    for j in [*later, queued]:
        assert j.result(timeout=60).ok
    assert c.control.held() == []


def test_hold_of_an_unknown_class_exits_2(platform: Platform) -> None:
    bad = platform.cli("hold", "cpu-huge")
    assert bad.returncode == 2 and "cpu-huge" in bad.stderr, bad.stderr


@pytest.fixture
def aws(s3_server: MotoServer, redis_server: str, tmp_path: Path) -> Iterator[AwsProvider]:
    s3_server.start()
    p = make_platform(redis_server, tmp_path / "home")
    settings = p.settings.model_copy(
        update={"aws_group_name": f"h{uuid.uuid4().hex[:6]}-{{class}}"}
    )
    provider = AwsProvider(settings, endpoint_url=s3_server.endpoint_url, region="us-east-1")
    subnet = provider.ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    provider.ensure_groups("ami-12c6146b", "t3.small", [subnet], classes=["cpu-small"])
    yield provider
    provider.close()


def test_the_autoscaler_does_not_scale_a_held_class_up(aws: AwsProvider) -> None:
    p = Platform(settings=aws.settings, env={})
    c = p.client
    r = c.broker.redis
    limits = Limits(per_class={"cpu-small": ClassLimits(min_nodes=0, max_nodes=2)})
    scaler = Autoscaler(c.broker, aws, ["cpu-small"], limits)
    c.hold("cpu-small")
    job = c.submit("offload/base", ["true"], cache=False)  # queued; no worker anywhere
    decision = scaler.tick()
    assert decision.start == {} and aws.nodes() == []
    status = read_status(r, "cpu-small")
    assert status is not None and status["reason"].startswith("held (offload release cpu-small)")
    c.release("cpu-small")
    assert scaler.tick().start == {"cpu-small": 1}
    job.cancel()
