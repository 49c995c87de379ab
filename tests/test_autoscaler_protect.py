"""Defect g: the loop keeps busy AWS instances protected from scale-in and idle ones not.

The aws provider against moto's server, the loop against real Redis: instances of busy
nodes get ``ProtectedFromScaleIn``, idle ones lose it, and the provider is told only when
a node's busy state changes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.autoscaler.aws import AwsProvider
from offload.autoscaler.loop import Autoscaler
from offload.autoscaler.policy import ClassLimits, Limits
from offload.broker.status import JobStatus
from offload.spec import JobSpec

from .conftest import Platform, make_platform
from .s3server import MotoServer


class CountingAws(AwsProvider):
    """The real provider, remembering what the loop told it."""

    told: list[tuple[str, bool]]

    def protect(self, node: str, busy: bool) -> None:
        self.told.append((node, busy))
        super().protect(node, busy)


@pytest.fixture
def aws(s3_server: MotoServer, redis_server: str, tmp_path: Path) -> Iterator[CountingAws]:
    s3_server.start()
    p = make_platform(redis_server, tmp_path / "home")
    settings = p.settings.model_copy(
        update={"aws_group_name": f"p{uuid.uuid4().hex[:6]}-{{class}}"}
    )
    provider = CountingAws(settings, endpoint_url=s3_server.endpoint_url, region="us-east-1")
    provider.told = []
    subnet = provider.ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    provider.ensure_groups("ami-12c6146b", "t3.small", [subnet], classes=["cpu-small"])
    yield provider
    provider.close()


def protected(provider: AwsProvider, instance: str) -> bool:
    (inst,) = provider.autoscaling.describe_auto_scaling_instances(InstanceIds=[instance])[
        "AutoScalingInstances"
    ]
    return bool(inst["ProtectedFromScaleIn"])


def test_the_loop_protects_busy_instances_and_unprotects_idle_ones(aws: CountingAws) -> None:
    p = Platform(settings=aws.settings, env={})
    broker = p.client.broker
    registry = broker.nodes
    limits = Limits(per_class={"cpu-small": ClassLimits(min_nodes=2, max_nodes=2)})
    scaler = Autoscaler(broker, aws, ["cpu-small"], limits)
    t = time.time()
    scaler.tick(t)
    a, b = sorted(n.name for n in aws.nodes())
    assert protected(aws, a) and protected(aws, b)  # protected from launch
    for name in (a, b):  # the instances boot and register under their ids
        registry.register(name, provider="aws", classes=["cpu-small"], slots=1, cpus=2,
                          memory=4 << 30, gpus=0)  # fmt: skip
    records = p.client.broker.records
    job = uuid.uuid4().hex
    records.create(job, JobSpec(image="offload/base", command=("true",)), "cpu-small")
    records.begin_attempt(job, a)

    scaler.tick(t + 1)
    assert protected(aws, a) and not protected(aws, b)
    assert sorted(aws.told) == [(a, True), (b, False)]
    scaler.tick(t + 2)
    assert len(aws.told) == 2  # nothing changed: nothing told

    for status in (JobStatus.RUNNING, JobStatus.UPLOADING, JobStatus.SUCCEEDED):
        records.transition(job, status, attempt=1)
    scaler.tick(t + 3)
    assert not protected(aws, a) and not protected(aws, b)
    assert aws.told[2:] == [(a, False)]
    assert scaler.registry.get(a) is not None  # idle, at the minimum: kept
