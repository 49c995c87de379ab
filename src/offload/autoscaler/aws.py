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

Settings read (with these defaults when the settings do not name them): ``aws_group_name``
(``"offload-{class}"``), ``aws_region`` (the S3 region), ``aws_endpoint_url`` (none: AWS),
``aws_key_parameter`` (``"/offload/cluster-key"``), ``aws_env_parameter`` (none),
``aws_install`` (``"offload"``). See ``docs/aws.md``.
"""

from __future__ import annotations

import base64
import logging
import shlex
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

from offload.autoscaler.local import settings_env
from offload.autoscaler.provider import NodeProvider, ProvidedNode
from offload.config import Settings
from offload.errors import ConfigError

log = logging.getLogger(__name__)

GROUP_NAME = "offload-{class}"
KEY_PARAMETER = "/offload/cluster-key"
NODE_HOME = "/var/lib/offload"
KEY_FILE = "/etc/offload/key"
ENV_FILE = "/etc/offload/worker.env"
TAG_CLASS = "offload:class"

_STARTING = ("Pending", "Warmed")
_DRAINING = ("Terminating", "Detaching", "EnteringStandby", "Standby")
_GONE = ("Terminated", "Detached")


def _setting(settings: Settings, name: str, default: Any) -> Any:
    value = getattr(settings, name, None)
    return default if value in (None, "") else value


def group_name(settings: Settings, resource_class: str, template: str | None = None) -> str:
    """The Auto Scaling group (and launch template) of ``resource_class``."""
    template = template or str(_setting(settings, "aws_group_name", GROUP_NAME))
    return template.replace("{class}", resource_class)


def _env_line(key: str, value: str) -> str:
    """One ``KEY=value`` line of a systemd EnvironmentFile."""
    if "'" not in value and "\n" not in value:
        return f"{key}='{value}'"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'{key}="{escaped}"'


def user_data(
    settings: Settings,
    resource_class: str,
    *,
    install: str | None = None,
    key_parameter: str | None = None,
    env_parameter: str | None = None,
    region: str | None = None,
) -> str:
    """The cloud-init script of a node of ``resource_class``: install offload, start a worker.

    It installs Docker and a Python virtualenv (Debian/Ubuntu AMIs: apt), ``pip install``\\ s
    ``install`` (a pip requirement: a version on an index you run, or a wheel's URL), reads
    the instance id through IMDSv2, fetches the cluster key from the SSM SecureString
    ``key_parameter`` (and, optionally, more ``KEY=VALUE`` lines — secrets such as a Redis
    password — from ``env_parameter``), writes ``/etc/offload/worker.env`` and starts the
    ``offload-worker`` systemd unit (SIGTERM on stop = warm shutdown; it waits up to the
    longest job timeout).

    Nothing secret is written into the script itself: a Redis URL with a password must come
    through ``env_parameter``.
    """
    settings.resource_class(resource_class)  # unknown class: ConfigError
    install = install or str(_setting(settings, "aws_install", "offload"))
    key_parameter = key_parameter or str(_setting(settings, "aws_key_parameter", KEY_PARAMETER))
    env_parameter = env_parameter or _setting(settings, "aws_env_parameter", None)
    region = region or str(_setting(settings, "aws_region", settings.s3_region))
    env = settings_env(settings)
    if urlparse(settings.redis_url).password:
        if not env_parameter:
            raise ConfigError(
                "the Redis URL holds a password, which must not go into EC2 user data: "
                "put OFFLOAD_REDIS_URL=... in an SSM SecureString and name it with "
                "aws_env_parameter (OFFLOAD_AWS_ENV_PARAMETER)"
            )
        env.pop("OFFLOAD_REDIS_URL", None)
    env.update(
        {
            "OFFLOAD_HOME": NODE_HOME,
            "OFFLOAD_CACHE_DIR": f"{NODE_HOME}/cache",
            "OFFLOAD_KEY_FILE": KEY_FILE,
            "OFFLOAD_WORKER_CLASSES": resource_class,
            "OFFLOAD_PROVIDER": "aws",
            "AWS_DEFAULT_REGION": region,
        }
    )
    env_lines = "\n".join(_env_line(k, v) for k, v in sorted(env.items()))
    stop_timeout = int(settings.max_timeout) + 120
    fetch = f"""
import os, sys
import boto3
ssm = boto3.client("ssm", region_name={region!r})
def get(name):
    return ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
os.umask(0o077)
with open({KEY_FILE!r}, "w") as f:
    f.write(get({key_parameter!r}).strip() + "\\n")
extra = {env_parameter!r}
if extra:
    with open({ENV_FILE!r}, "a") as f:
        f.write(get(extra).strip() + "\\n")
"""
    return f"""#!/bin/bash
# offload worker node for resource class {resource_class}
# (generated by offload.autoscaler.aws.user_data; see docs/aws.md)
set -euo pipefail
exec > >(tee -a /var/log/offload-user-data.log) 2>&1
export DEBIAN_FRONTEND=noninteractive

# 1. Docker, Python, curl
if ! command -v docker >/dev/null || ! python3 -c 'import ensurepip' 2>/dev/null \\
    || ! command -v curl >/dev/null; then
    apt-get update -q
    apt-get install -y -q docker.io python3-venv curl ca-certificates
fi
systemctl enable --now docker

# 2. offload, in its own virtualenv
python3 -m venv /opt/offload
/opt/offload/bin/pip install --disable-pip-version-check -q {install}

# 3. who am I (IMDSv2)
TOKEN=$(curl -sSf -X PUT http://169.254.169.254/latest/api/token \\
    -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')
INSTANCE_ID=$(curl -sSf -H "X-aws-ec2-metadata-token: $TOKEN" \\
    http://169.254.169.254/latest/meta-data/instance-id)

# 4. settings, and the cluster key from SSM (never in this script)
install -d -m 0700 /etc/offload
install -d -m 0755 {NODE_HOME}
umask 077
cat > {ENV_FILE} <<'OFFLOAD_ENV'
{env_lines}
OFFLOAD_ENV
echo "OFFLOAD_NODE_NAME=$INSTANCE_ID" >> {ENV_FILE}
AWS_DEFAULT_REGION={shlex.quote(region)} /opt/offload/bin/python - <<'OFFLOAD_PY'
{fetch.strip()}
OFFLOAD_PY

# 5. the worker: SIGTERM on stop is Celery's warm shutdown (finish running jobs, exit)
cat > /etc/systemd/system/offload-worker.service <<'OFFLOAD_UNIT'
[Unit]
Description=offload worker node ({resource_class})
After=docker.service network-online.target
Wants=network-online.target
Requires=docker.service

[Service]
EnvironmentFile={ENV_FILE}
ExecStart=/opt/offload/bin/offload worker
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec={stop_timeout}
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
OFFLOAD_UNIT
systemctl daemon-reload
systemctl enable --now offload-worker.service
"""


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
        self.region = region or str(_setting(settings, "aws_region", settings.s3_region))
        endpoint_url = endpoint_url or _setting(settings, "aws_endpoint_url", None)
        session = session or boto3.session.Session()
        self.autoscaling = session.client(
            "autoscaling", region_name=self.region, endpoint_url=endpoint_url
        )
        self.ec2 = session.client("ec2", region_name=self.region, endpoint_url=endpoint_url)
        self.classes = list(classes) if classes is not None else [c.name for c in settings.classes]

    def group_name(self, resource_class: str) -> str:
        return group_name(self.settings, resource_class, self.group_template)

    # -- the seam --------------------------------------------------------------------------

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
