"""The docker provider: each worker node is a container from the ``offload/worker`` image.

That is what a node looks like on a cloud VM: one container with the Docker socket, which
starts the job containers beside itself. A node container runs with

* ``network_mode=host`` — it reaches Redis and S3 where the host does (loopback included);
* the Docker socket mounted, as root inside (the job containers keep their own sandbox);
* its own folder ``<home>/nodes/<name>`` bind-mounted at the SAME path, holding its home,
  cache and job workspaces: the worker bind-mounts workspace paths into sibling job
  containers, and the engine resolves those paths on the host, so they must match. The
  cache is the node's own when an S3 bucket is configured; without one the host's store
  is mounted (same path) and shared, as it is the only store
  (:func:`~offload.autoscaler.nodeenv.node_cache`);
* the AWS credential variables of the autoscaler's environment, when set (S3 access on a
  machine without an instance role), and any ``env`` given;
* the cluster key file mounted read-only at the same path;
* labels ``offload.node=<name>``, ``offload.class=<class>``, ``offload.provider=docker``,
  ``offload.scope=<hash of the Redis URL>`` (it lists only its own cluster's nodes);
* ``init=True`` (an init process forwards signals and reaps the pool's processes).

Draining sends SIGTERM to the container (Celery's warm shutdown: stop consuming, finish the
running jobs, exit). It never sends SIGKILL: unlike ``docker stop`` there is no deadline
after which the engine kills the node, and the call returns at once. A node container that
has exited is removed by :meth:`DockerProvider.nodes`, its output kept in
``<home>/logs/<name>.log``.

An engine that cannot be reached or refuses a call raises
:class:`~offload.errors.ProviderError`; an image that is not built, ``ConfigError``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import docker
from docker.errors import APIError, DockerException, NotFound
from docker.types import DeviceRequest

from offload.autoscaler.nodeenv import new_node_name, node_cache, node_env
from offload.autoscaler.provider import NodeProvider, ProvidedNode
from offload.config import Settings
from offload.errors import ConfigError, ProviderError

LABEL_NODE = "offload.node"
LABEL_CLASS = "offload.class"
LABEL_PROVIDER = "offload.provider"
# The cluster a node belongs to (a hash of its Redis URL): two clusters sharing an engine never
# see, drain or count each other's nodes.
LABEL_SCOPE = "offload.scope"
FORWARD_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_CA_BUNDLE",
)

_STARTING = {"created", "restarting"}
_GONE = {"exited", "dead", "removing"}


@contextlib.contextmanager
def _engine_call(what: str) -> Iterator[None]:
    """The engine's failures (unreachable, refusing) as :class:`ProviderError`."""
    try:
        yield
    except (DockerException, OSError) as exc:  # OSError: requests' connection errors too
        raise ProviderError(f"docker engine: {what}: {exc}") from exc


class DockerProvider(NodeProvider):
    """Worker nodes as containers of the local Docker engine."""

    name = "docker"

    def __init__(
        self,
        settings: Settings,
        *,
        image: str | None = None,
        client: docker.DockerClient | None = None,
        slots: int | None = None,
        loglevel: str = "INFO",
        env: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.extra_env = {k: os.environ[k] for k in FORWARD_ENV if os.environ.get(k)}
        self.extra_env.update(env or {})
        self.image = image or settings.docker_worker_image
        if client is None:
            with _engine_call("connecting"):
                client = docker.from_env()
        self.client = client
        self.slots = slots
        self.loglevel = loglevel
        self.state_dir = settings.home / "run" / "nodes"

    # -- the seam --------------------------------------------------------------------------

    def start_nodes(self, resource_class: str, count: int) -> list[str]:
        self.settings.resource_class(resource_class)  # unknown class: ConfigError
        with _engine_call(f"starting {resource_class} nodes"):
            try:
                self.client.images.get(self.image)
            except docker.errors.ImageNotFound:
                raise ConfigError(
                    f"the worker image {self.image} is not built; run infra/images/build.sh"
                ) from None
            return [self._start(resource_class) for _ in range(count)]

    def drain(self, node: str) -> None:
        """SIGTERM to the node's container (warm shutdown), once; a node already gone or
        already draining is a no-op."""
        with _engine_call(f"draining {node}"):
            container = self._container(node)
            if container is None or container.status in _GONE:
                return
            if (self.state_dir / f"{node}.draining").exists():
                return  # told once: a SIGTERM again, mid-shutdown, can hang Celery's
            self._mark_draining(node)
            with contextlib.suppress(NotFound):
                try:
                    container.kill(signal="SIGTERM")
                except APIError as exc:  # "is not running": it exited meanwhile
                    if "not running" not in str(exc):
                        raise

    def nodes(self) -> list[ProvidedNode]:
        with _engine_call("listing nodes"):
            return self._nodes()

    def _nodes(self) -> list[ProvidedNode]:
        out = []
        for c in self._containers():
            node = c.labels.get(LABEL_NODE, "")
            if c.status in _GONE:
                self._forget(node, c)
                continue
            draining = (self.state_dir / f"{node}.draining").exists()
            state = "draining" if draining else ("starting" if c.status in _STARTING else "running")
            out.append(
                ProvidedNode(
                    name=node,
                    resource_class=c.labels.get(LABEL_CLASS, ""),
                    state=state,
                    created_at=_created(c),
                )
            )
        return sorted(out, key=lambda n: n.name)

    def close(self) -> None:
        self.client.close()

    # -- helpers ---------------------------------------------------------------------------

    def node_dir(self, node: str) -> Path:
        return self.settings.home / "nodes" / node

    def log_path(self, node: str) -> Path:
        return self.settings.home / "logs" / f"{node}.log"

    def container(self, node: str) -> Any:
        """The node's container (docker SDK object), or ``None``."""
        return self._container(node)

    def _engine(self) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
        """How the node reaches the engine: the socket mounted, or DOCKER_HOST (host network)."""
        host = os.environ.get("DOCKER_HOST", "")
        if host and not host.startswith("unix://"):
            return {}, {"DOCKER_HOST": host}
        sock = urlparse(host).path if host else "/var/run/docker.sock"
        return {sock: {"bind": "/var/run/docker.sock", "mode": "rw"}}, {}

    def _start(self, resource_class: str) -> str:
        name = new_node_name(resource_class)
        home = self.node_dir(name).resolve()
        home.mkdir(parents=True, exist_ok=True)
        cache = node_cache(self.settings, home).resolve()
        cache.mkdir(parents=True, exist_ok=True)
        key = self.settings.key_path.resolve()
        if not key.is_file():
            raise ConfigError(f"the cluster key {key} is missing; run `offload key init`")
        env = dict(self.extra_env)
        env |= node_env(
            self.settings,
            name,
            resource_class,
            "docker",
            home=home,
            cache_dir=cache,
            key_file=key,
            slots=self.slots,
        )
        shared = (
            {} if cache.is_relative_to(home) else {str(cache): {"bind": str(cache), "mode": "rw"}}
        )
        engine_volumes, engine_env = self._engine()
        env.update(engine_env)
        cls = self.settings.resource_class(resource_class)
        devices = [DeviceRequest(count=-1, capabilities=[["gpu"]])] if cls.min_gpus > 0 else None
        self.client.containers.run(
            self.image,
            ["offload", "worker", "--loglevel", self.loglevel],
            name=f"offload-node-{name}",
            detach=True,
            network_mode="host",
            user="0:0",
            init=True,
            environment=env,
            labels={
                LABEL_NODE: name,
                LABEL_CLASS: resource_class,
                LABEL_PROVIDER: "docker",
                LABEL_SCOPE: self.scope,
            },
            volumes={
                **engine_volumes,
                str(home): {"bind": str(home), "mode": "rw"},
                str(key): {"bind": str(key), "mode": "ro"},
                **shared,
            },
            device_requests=devices,
            stop_signal="SIGTERM",
            log_config={"type": "json-file", "config": {"max-size": "20m", "max-file": "2"}},
        )
        return name

    def _containers(self) -> list[Any]:
        return list(
            self.client.containers.list(
                all=True,
                filters={
                    "label": [LABEL_NODE, f"{LABEL_PROVIDER}=docker", f"{LABEL_SCOPE}={self.scope}"]
                },
            )
        )

    @property
    def scope(self) -> str:
        return hashlib.sha256(self.settings.redis_url.encode()).hexdigest()[:16]

    def _container(self, node: str) -> Any:
        found = self.client.containers.list(all=True, filters={"label": f"{LABEL_NODE}={node}"})
        return found[0] if found else None

    def _mark_draining(self, node: str) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / f"{node}.draining").write_text(json.dumps({"at": time.time()}))

    def _forget(self, node: str, container: Any) -> None:
        """An exited node: keep its output in the logs folder, remove the container."""
        with contextlib.suppress(Exception):
            path = self.log_path(node)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(container.logs(stdout=True, stderr=True))
        with contextlib.suppress(NotFound):
            try:
                container.remove()
            except APIError as exc:  # already being removed
                if "in progress" not in str(exc):
                    raise
        (self.state_dir / f"{node}.draining").unlink(missing_ok=True)
        # Written by root inside the container: remove what we may.
        shutil.rmtree(self.node_dir(node), ignore_errors=True)


def _created(container: Any) -> float:
    text = str(container.attrs.get("Created", ""))
    try:
        # '2024-05-01T12:00:00.123456789Z': trim to microseconds
        head, _, frac = text.rstrip("Z").partition(".")
        stamp = datetime.fromisoformat(head + ("." + frac[:6] if frac else "") + "+00:00")
        return stamp.timestamp()
    except ValueError:
        return time.time()
