"""The AWS provider: one EC2 Auto Scaling group per resource class, driven through boto3.

* A node is an EC2 instance; its node name is the instance id (the worker reads it from
  IMDSv2 at boot, see :func:`user_data`).
* :meth:`AwsProvider.start_nodes` raises the class's group's desired capacity.
* Instances start protected from scale-in (the group's ``NewInstancesProtectedFromScaleIn``),
  and :meth:`AwsProvider.protect` sets or clears that protection: the loop keeps busy nodes
  protected, so nothing that lowers a group's capacity — a person in the console included —
  can take a busy instance.
* :meth:`AwsProvider.drain` clears the protection and terminates the instance, decrementing
  the desired capacity. **The autoscaler only drains idle nodes** (and marks them draining in
  the registry first, so they take no new work); the instance's shutdown then stops the
  worker's systemd unit with SIGTERM — Celery's warm shutdown — as a last guard.
* :meth:`AwsProvider.ensure_groups` creates a launch template and a group per class where
  they are absent.

* An AWS API call that fails (throttled, refused, unreachable) raises
  :class:`~offload.errors.ProviderError`; a missing group, ``ConfigError``.

Settings read: ``aws_group_name``, ``aws_region`` (none: the S3 region), ``aws_endpoint_url``
(none: AWS), and those of the node script (:mod:`offload.autoscaler.aws_userdata`). See
``docs/aws.md``.
"""

from __future__ import annotations

import base64
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from offload.autoscaler.aws_userdata import group_name, user_data
from offload.autoscaler.provider import NodeProvider, ProvidedNode
from offload.config import Settings
from offload.errors import ConfigError, ProviderError

__all__ = ["AwsProvider", "group_name", "user_data"]

log = logging.getLogger(__name__)

TAG_CLASS = "offload:class"

_STARTING = ("Pending", "Warmed")
_DRAINING = ("Terminating", "Detaching", "EnteringStandby", "Standby")
_GONE = ("Terminated", "Detached")


P = ParamSpec("P")
T = TypeVar("T")


def _api(what: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """A provider method whose AWS API failures are raised as :class:`ProviderError`."""

    def wrap(fn: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(fn)
        def call(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return fn(*args, **kwargs)
            except (BotoCoreError, ClientError) as exc:
                raise ProviderError(f"AWS: {what}: {exc}") from exc

        return call

    return wrap


class AwsProvider(NodeProvider):
    """Worker nodes as instances of one EC2 Auto Scaling group per resource class."""

    name = "aws"

    def __init__(
        self,
        settings: Settings,
        *,
        session: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        classes: Iterable[str] | None = None,
        group_template: str | None = None,
    ) -> None:
        import boto3

        self.settings = settings
        self.group_template = group_template
        self.region = region or settings.aws_region or settings.s3_region
        endpoint_url = endpoint_url or settings.aws_endpoint_url
        session = session or boto3.session.Session()
        self.autoscaling = session.client(
            "autoscaling", region_name=self.region, endpoint_url=endpoint_url
        )
        self.ec2 = session.client("ec2", region_name=self.region, endpoint_url=endpoint_url)
        self.classes = list(classes) if classes is not None else [c.name for c in settings.classes]

    def group_name(self, resource_class: str) -> str:
        return group_name(self.settings, resource_class, self.group_template)

    # -- the seam --------------------------------------------------------------------------

    @_api("starting nodes")
    def start_nodes(self, resource_class: str, count: int) -> list[str]:
        """Raise the group's desired capacity by ``count`` (up to its maximum).

        Returns the ids of the instances that appeared at once — often none on AWS, where
        instances launch over the next seconds; :meth:`nodes` lists them as ``starting``.
        """
        name = self.group_name(resource_class)
        group = self._group(name)
        if group is None:
            raise ConfigError(
                f"no Auto Scaling group {name!r} for class {resource_class!r}; "
                "create it with AwsProvider.ensure_groups (docs/aws.md)"
            )
        before = {i["InstanceId"] for i in group.get("Instances", [])}
        desired = int(group["DesiredCapacity"]) + count
        if desired > int(group["MaxSize"]):
            log.warning(
                "%s: at its maximum of %d instance(s); asked for %d",
                name,
                group["MaxSize"],
                desired,
            )
            desired = int(group["MaxSize"])
        if desired > int(group["DesiredCapacity"]):
            self.autoscaling.set_desired_capacity(
                AutoScalingGroupName=name, DesiredCapacity=desired, HonorCooldown=False
            )
        after = self._group(name) or {}
        return sorted({i["InstanceId"] for i in after.get("Instances", [])} - before)

    @_api("draining")
    def drain(self, node: str) -> None:
        """Unprotect and terminate an IDLE instance, lowering the desired capacity by one.

        The caller guarantees the node is idle (the loop drains only idle nodes); the
        instance's shutdown stops the worker with SIGTERM (warm shutdown) all the same.
        An instance already terminating or gone is a no-op.
        """
        found = self.autoscaling.describe_auto_scaling_instances(InstanceIds=[node]).get(
            "AutoScalingInstances", []
        )
        if not found:
            return
        inst = found[0]
        if inst["LifecycleState"].startswith(("Terminat", "Detach")):
            return
        self.autoscaling.set_instance_protection(
            InstanceIds=[node],
            AutoScalingGroupName=inst["AutoScalingGroupName"],
            ProtectedFromScaleIn=False,
        )
        self.autoscaling.terminate_instance_in_auto_scaling_group(
            InstanceId=node, ShouldDecrementDesiredCapacity=True
        )

    @_api("listing nodes")
    def nodes(self) -> list[ProvidedNode]:
        names = {self.group_name(c): c for c in self.classes}
        instances: list[tuple[str, str, str]] = []
        for group in self._groups(list(names)):
            cls = names.get(group["AutoScalingGroupName"], "")
            for inst in group.get("Instances", []):
                instances.append((inst["InstanceId"], cls, inst["LifecycleState"]))
        launched = self._launch_times([i for i, _, _ in instances])
        out = []
        for instance_id, cls, state in instances:
            if state.startswith(_GONE):
                continue
            if state.startswith(_STARTING):
                mine = "starting"
            elif state.startswith(_DRAINING):
                mine = "draining"
            else:
                mine = "running"
            out.append(ProvidedNode(instance_id, cls, mine, launched.get(instance_id, time.time())))
        return sorted(out, key=lambda n: n.name)

    # -- more for the loop -----------------------------------------------------------------

    @_api("scale-in protection")
    def protect(self, instance_id: str, busy: bool) -> None:
        """Scale-in protection on (busy) or off (idle) for one instance of our groups."""
        found = self.autoscaling.describe_auto_scaling_instances(InstanceIds=[instance_id]).get(
            "AutoScalingInstances", []
        )
        if not found:
            return
        self.autoscaling.set_instance_protection(
            InstanceIds=[instance_id],
            AutoScalingGroupName=found[0]["AutoScalingGroupName"],
            ProtectedFromScaleIn=busy,
        )

    @_api("creating groups")
    def ensure_groups(
        self,
        ami: str,
        instance_types: str | Mapping[str, str],
        subnets: Sequence[str],
        *,
        max_size: int | Mapping[str, int] = 10,
        security_groups: Sequence[str] = (),
        instance_profile: str | None = None,
        key_name: str | None = None,
        install: str | None = None,
        classes: Iterable[str] | None = None,
    ) -> dict[str, bool]:
        """A launch template and a group (min 0, desired 0) per class, where absent.

        Returns ``{class: created}``. Existing templates and groups are left as they are.
        """
        if not subnets:
            raise ConfigError("ensure_groups needs at least one subnet")
        created: dict[str, bool] = {}
        for cls in list(classes) if classes is not None else self.classes:
            itype = instance_types if isinstance(instance_types, str) else instance_types.get(cls)
            if not itype:
                continue
            name = self.group_name(cls)
            self._ensure_template(
                name, cls, ami, itype, security_groups, instance_profile, key_name, install
            )
            if self._group(name) is not None:
                created[cls] = False
                continue
            size = max_size if isinstance(max_size, int) else max_size.get(cls, 10)
            self.autoscaling.create_auto_scaling_group(
                AutoScalingGroupName=name,
                LaunchTemplate={"LaunchTemplateName": name, "Version": "$Latest"},
                MinSize=0,
                MaxSize=size,
                DesiredCapacity=0,
                VPCZoneIdentifier=",".join(subnets),
                NewInstancesProtectedFromScaleIn=True,
                Tags=[
                    {"Key": TAG_CLASS, "Value": cls, "PropagateAtLaunch": True},
                    {"Key": "Name", "Value": name, "PropagateAtLaunch": True},
                ],
            )
            created[cls] = True
        return created

    # -- helpers ---------------------------------------------------------------------------

    def _ensure_template(
        self,
        name: str,
        cls: str,
        ami: str,
        instance_type: str,
        security_groups: Sequence[str],
        instance_profile: str | None,
        key_name: str | None,
        install: str | None,
    ) -> None:
        existing = self.ec2.describe_launch_templates(
            Filters=[{"Name": "launch-template-name", "Values": [name]}]
        ).get("LaunchTemplates", [])
        if existing:
            return
        script = user_data(self.settings, cls, install=install, region=self.region)
        data: dict[str, Any] = {
            "ImageId": ami,
            "InstanceType": instance_type,
            "UserData": base64.b64encode(script.encode()).decode("ascii"),
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": [{"Key": TAG_CLASS, "Value": cls}]}
            ],
        }
        if security_groups:
            data["SecurityGroupIds"] = list(security_groups)
        if instance_profile:
            data["IamInstanceProfile"] = {"Name": instance_profile}
        if key_name:
            data["KeyName"] = key_name
        self.ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData=data)

    def _group(self, name: str) -> dict[str, Any] | None:
        groups = self._groups([name])
        return groups[0] if groups else None

    def _groups(self, names: list[str]) -> list[dict[str, Any]]:
        if not names:
            return []
        out: list[dict[str, Any]] = []
        pages = self.autoscaling.get_paginator("describe_auto_scaling_groups")
        for page in pages.paginate(AutoScalingGroupNames=names):
            out.extend(page.get("AutoScalingGroups", []))
        return out

    def _launch_times(self, ids: list[str]) -> dict[str, float]:
        times: dict[str, float] = {}
        for start in range(0, len(ids), 100):
            chunk = ids[start : start + 100]
            try:
                reply = self.ec2.describe_instances(InstanceIds=chunk)
            except Exception:  # an instance vanished between the calls: no times this round
                log.debug("describe_instances failed", exc_info=True)
                continue
            for res in reply.get("Reservations", []):
                for inst in res.get("Instances", []):
                    launched = inst.get("LaunchTime")
                    if launched is not None:
                        times[inst["InstanceId"]] = launched.timestamp()
        return times
