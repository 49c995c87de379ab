"""The Docker implementation of :class:`~offload.worker.runtime.Runtime` (docker SDK).

Uses the low-level API so a job costs about the engine calls ``docker run`` makes: inspect
the image, create, attach (docker-py inspects the container there), start, wait, inspect,
remove. The client is kept per worker process, without per-request proxy lookups.

Every call is bounded by the client's timeout (``OFFLOAD_ENGINE_TIMEOUT``) and raises
:class:`~offload.worker.runtime.EngineUnavailable` when the engine does not answer
(:mod:`offload.worker.engine`). A container's waiter outlives its engine: when the engine goes
away mid-run it waits for the engine to answer again, then waits on the container again (with
live-restore it still runs: logs re-attached, the job finishes normally, once).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import DeviceRequest, LogConfig

from offload.errors import RuntimeUnavailable
from offload.worker.engine import PING_TIMEOUT, EngineHealth, stopped_by_engine
from offload.worker.runtime import (
    ContainerRequest,
    EngineUnavailable,
    Exit,
    ImageMissing,
    LogSink,
    Runtime,
    StartFailed,
)

log = logging.getLogger(__name__)

LABEL_JOB = "offload.job_id"
LABEL_ATTEMPT = "offload.attempt"
LABEL_MANAGED = "offload.managed"
# not "offload.node": that one labels the docker provider's node containers
LABEL_NODE = "offload.job_node"
LABEL_CLUSTER = "offload.cluster"
LABEL_GPUS = "offload.gpus"  # comma list of the UUIDs of the GPUs the container was given


def connect(timeout: float = 10, *, ping: bool = True) -> docker.DockerClient:
    """A client whose every call is bounded by ``timeout`` seconds; checked with a ping
    unless ``ping`` is False (a caller that watches the engine itself)."""
    try:
        client = docker.from_env(timeout=max(1, round(timeout)))
        if ping:
            client.api.ping()
    except (DockerException, requests.RequestException) as exc:
        raise RuntimeUnavailable(
            f"cannot reach the Docker engine ({exc}); is dockerd running? `make setup` starts one"
        ) from exc
    return client


class _Run:
    """A started container: its waiter thread and log thread."""

    def __init__(self) -> None:
        self.exited = threading.Event()
        self.status: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.logs: threading.Thread | None = None
        self.sink: LogSink | None = None
        self.interrupted = False  # the engine went away while it ran
        self.killed = False  # this worker killed it (timeout, cancel, lost lease)
        self.abandoned = threading.Event()  # removed: its waiter gives up on the engine
        self.engine_lost = ""


class DockerRuntime(Runtime):
    def __init__(
        self,
        client: docker.DockerClient,
        *,
        pull_timeout: float = 60,
        networks: tuple[str, ...] = (),
    ) -> None:
        self.client = client
        self.networks = networks  # the Docker networks a job may name (OFFLOAD_JOB_NETWORKS)
        self.api = client.api
        self.api.trust_env = False  # no proxy lookup per engine call (0.15 ms each, measured)
        self.pull_timeout = pull_timeout
        self._runs: dict[str, _Run] = {}
        self.health = EngineHealth(self.api, float(self.api.timeout))
        self.live_restore: bool | None = None  # the engine's setting, read at the first start

    def responsive(self) -> bool:
        return self.health.responsive()

    # -- images ----------------------------------------------------------------------------

    def ensure_image(self, image: str) -> str:
        try:
            with self.health.call():
                return str(self.api.inspect_image(image)["Id"])
        except ImageNotFound:
            pass
        except APIError as exc:
            if exc.status_code != 404:
                raise
        self._pull(image)
        with self.health.call():
            return str(self.api.inspect_image(image)["Id"])

    def _pull(self, image: str) -> None:
        result: list[BaseException | None] = [None]

        def pull() -> None:
            try:
                self.api.pull(image)
            except BaseException as exc:  # reported to the caller below
                result[0] = exc

        t = threading.Thread(target=pull, daemon=True, name=f"pull {image}")
        t.start()
        t.join(self.pull_timeout)
        if t.is_alive():
            raise ImageMissing(f"image {image!r} is not on this node and pulling it timed out")
        if result[0] is not None:
            raise ImageMissing(
                f"image {image!r} is not on this node and no registry provided it: {result[0]}"
            )

    # -- lifecycle -------------------------------------------------------------------------

    def create(self, req: ContainerRequest) -> str:
        if isinstance(req.network, str) and req.network not in self.networks:
            raise StartFailed(
                f"network {req.network!r} is not allowed on this node "
                f"(OFFLOAD_JOB_NETWORKS: {', '.join(self.networks) or 'none'})"
            )
        host_config: dict[str, Any] = dict(
            binds={
                str(m.source): {"bind": m.target, "mode": "ro" if m.read_only else "rw"}
                for m in req.mounts
            },
            mem_limit=req.memory,
            memswap_limit=req.memory,
            nano_cpus=int(req.cpu * 1e9),
            pids_limit=req.pids_limit,
            read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={req.tmpfs_size}"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            network_mode=(
                req.network if isinstance(req.network, str) else "bridge" if req.network else "none"
            ),
            init=req.init,
            log_config=LogConfig(type="json-file", config={"max-size": "10m", "max-file": "1"}),
        )
        labels = {
            **req.labels,
            LABEL_MANAGED: "1",
            LABEL_JOB: req.job_id,
            LABEL_ATTEMPT: str(req.attempt),
            LABEL_NODE: req.node,
            LABEL_CLUSTER: req.cluster,
        }
        if req.gpus:
            host_config["device_requests"] = [gpu_request(req.gpus)]
            labels[LABEL_GPUS] = ",".join(req.gpus)
        try:
            options: dict[str, Any] = dict(
                command=list(req.command) if req.command is not None else None,
                entrypoint=list(req.entrypoint) if req.entrypoint is not None else None,
                environment=req.env,
                user=req.user,
                labels=labels,
                host_config=self.api.create_host_config(**host_config),
                network_disabled=not req.network,
                stdin_open=req.stdin,
            )
            name = req.name or f"offload-{req.job_id}-{req.attempt}"
            with self.health.call():
                if req.stdin:  # docker-py has no argument for StdinOnce
                    config = self.api.create_container_config(req.image, **options)
                    config["StdinOnce"] = True  # closed once the attached client goes
                    created = self.api.create_container_from_config(config, name)
                else:
                    created = self.api.create_container(req.image, name=name, **options)
        except APIError as exc:
            self._refused_or_gone(exc)
            raise StartFailed(
                f"the engine refused to create the container: {exc.explanation}"
            ) from exc
        return str(created["Id"])

    def start(self, container: str, sink: LogSink) -> None:
        run = _Run()
        run.sink = sink
        self._runs[container] = run
        with self.health.call():
            if self.live_restore is None:
                self.live_restore = bool(self.api.info().get("LiveRestoreEnabled"))
            stream = self.api.attach(
                container, stdout=True, stderr=True, stream=True, logs=True, demux=True
            )
        try:
            with self.health.call():
                self.api.start(container)
        except EngineUnavailable:
            _close(stream)
            raise
        except APIError as exc:
            _close(stream)
            self._refused_or_gone(exc)
            explanation = str(exc.explanation or exc)
            gpu = "device driver" in explanation or "gpu" in explanation.lower()
            raise StartFailed(
                f"no GPU runtime on this node: {explanation}" if gpu else explanation, gpu=gpu
            ) from exc
        run.logs = threading.Thread(
            target=self._pump_logs, args=(stream, sink), daemon=True, name=f"logs {container[:12]}"
        )
        run.logs.start()
        threading.Thread(
            target=self._wait, args=(container, run), daemon=True, name=f"wait {container[:12]}"
        ).start()

    def _refused_or_gone(self, exc: APIError) -> None:
        """A server error from an engine that stops answering right after (it was shutting
        down) is the engine's loss, not a refusal of the job."""
        if exc.is_server_error() and not self.health.ping(PING_TIMEOUT):
            raise EngineUnavailable(f"the Docker engine went away: {exc.explanation}") from exc

    @staticmethod
    def _pump_logs(stream: Any, sink: LogSink) -> None:
        try:
            for out, err in stream:
                if out:
                    sink("out", out)
                if err:
                    sink("err", err)
        except Exception as exc:  # the container is gone; the log is as complete as it gets
            log.debug("log stream ended: %s", exc)

    def _wait(self, container: str, run: _Run) -> None:
        try:
            while True:
                try:
                    # no timeout: a job may run for hours; a hung engine holds only this thread
                    self.api.wait(container, timeout=None)
                    with self.health.call():
                        state: dict[str, Any] = self.api.inspect_container(container)["State"]
                    break
                except requests.HTTPError:  # an answer (no such container…): not an outage
                    raise
                except (requests.RequestException, EngineUnavailable) as exc:
                    # the engine went away while the container ran: wait for it to answer,
                    # then wait on the container again (with live-restore it still runs)
                    run.interrupted = True
                    self.health.failed(exc)
                    if not self._reconnect(container, run):
                        return
            run.status = state
            if state.get("ExitCode") and not state.get("OOMKilled") and not run.killed:
                run.engine_lost = stopped_by_engine(
                    self.health,
                    container,
                    state,
                    interrupted=run.interrupted,
                    live_restore=bool(self.live_restore),
                )
        except BaseException as exc:
            run.error = exc
        finally:
            run.exited.set()

    def _reconnect(self, container: str, run: _Run) -> bool:
        """Wait for the engine to answer again (False: the run was removed meanwhile), then
        re-attach the container's log stream (output from now on: what it printed while the
        engine was away is in ``docker logs``)."""
        while not self.health.ping():
            if run.abandoned.wait(1.0):
                return False
        if run.sink is not None and not run.killed:
            try:
                with self.health.call():
                    stream = self.api.attach(
                        container, stdout=True, stderr=True, stream=True, logs=False, demux=True
                    )
                run.logs = threading.Thread(
                    target=self._pump_logs, args=(stream, run.sink), daemon=True
                )
                run.logs.start()
            except (EngineUnavailable, APIError) as exc:
                log.debug("re-attaching %s: %s", container[:12], exc)
        return True

    def wait(self, container: str, timeout: float) -> Exit | None:
        run = self._runs[container]
        if not run.exited.wait(timeout):
            return None
        if run.error is not None:
            if isinstance(run.error, NotFound):  # it went with its engine's state
                return Exit(-1, False, "its container vanished while its engine was away")
            raise run.error
        state = run.status or {}
        return Exit(
            code=int(state.get("ExitCode", -1)),
            oom_killed=bool(state.get("OOMKilled")),
            engine_lost=run.engine_lost,
        )

    def finish_logs(self, container: str, timeout: float) -> None:
        run = self._runs.get(container)
        if run is not None and run.logs is not None:
            run.logs.join(0 if self.health.down else timeout)  # a hung engine holds the stream

    def kill(self, container: str) -> None:
        run = self._runs.get(container)
        if run is not None:
            run.killed = True
        try:
            with self.health.call():
                self.api.kill(container)
        except (NotFound, APIError) as exc:
            log.debug("kill %s: %s", container[:12], exc)

    def remove(self, container: str) -> None:
        run = self._runs.pop(container, None)
        if run is not None:
            run.abandoned.set()
        try:
            with self.health.call():
                self.api.remove_container(container, force=True, v=True)
        except NotFound:
            pass
        except APIError as exc:
            if exc.status_code != 409:  # removal already in progress
                raise

    def gpus_in_use(self) -> set[str]:
        with self.health.call():
            running = self.api.containers(filters={"label": [f"{LABEL_MANAGED}=1", LABEL_GPUS]})
        return {
            uuid
            for c in running
            for uuid in (c.get("Labels") or {}).get(LABEL_GPUS, "").split(",")
            if uuid
        }

    def job_containers(self, cluster: str) -> list[tuple[str, str, str, int]]:
        if not cluster:
            return []
        wanted = [f"{LABEL_MANAGED}=1", f"{LABEL_CLUSTER}={cluster}"]
        with self.health.call():
            found = self.api.containers(all=True, filters={"label": wanted})
        out = []
        for c in found:
            labels = c.get("Labels") or {}
            try:
                out.append(
                    (c["Id"], labels[LABEL_NODE], labels[LABEL_JOB], int(labels[LABEL_ATTEMPT]))
                )
            except (KeyError, ValueError):
                continue
        return out

    def remove_job_containers(self, job_id: str) -> list[str]:
        with self.health.call():
            found = self.api.containers(all=True, filters={"label": f"{LABEL_JOB}={job_id}"})
        removed = []
        for c in found:
            self.remove(c["Id"])
            removed.append(c["Id"])
        return removed


def gpu_request(uuids: Sequence[str]) -> DeviceRequest:
    """The device request that gives a container these NVIDIA GPUs, and no others.

    By id, never by count: a count makes the engine give every container the host's first
    GPUs, so concurrent jobs would share GPU 0 while the others idle.
    """
    if not uuids:
        raise ValueError("gpu_request needs at least one GPU UUID")
    return DeviceRequest(driver="nvidia", device_ids=list(uuids), capabilities=[["gpu"]])


def _close(stream: Any) -> None:
    with contextlib.suppress(Exception):
        stream.close()
