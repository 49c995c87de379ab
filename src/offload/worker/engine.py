"""The Docker engine as a fault domain: bounded calls, its health, and telling its faults apart.

The engine under a node stops (an upgrade of docker, a crash), restarts, or hangs (a full disk,
SIGSTOP). None of that is the job's fault, and none of it may hold a worker forever:

* **Every call is bounded.** :class:`EngineHealth` wraps each engine call of a
  :class:`~offload.worker.docker_runtime.DockerRuntime`: a connection error or a timeout
  (``OFFLOAD_ENGINE_TIMEOUT``, the client's timeout) raises
  :class:`~offload.worker.runtime.EngineUnavailable` and marks the engine down; while it is
  down, each call first pings it (at most 2 s) and fails fast when it does not answer. A ping
  opens a connection of its own: an engine shutting down has closed its socket but still
  serves the connections already open, so only a new one tells the truth.
* **An engine kill is told from exit 143.** A container whose program exited on its own has
  no ``kill`` event; one the engine stopped at its shutdown has one (the engine sends the
  stop signal, then SIGKILL), sent by nobody in this worker. :func:`stopped_by_engine` reads
  the container's ``kill`` events between its start and its end from the engine's own event
  log (one bounded call, only for a non-zero exit this worker did not cause; it reads up to a
  second past the exit, so such an ending is recorded about a second later). A container
  whose wait was cut because the engine went away, on an engine without live-restore, was
  stopped by it too; so is one that exited as its engine stopped answering.
* **The node watches its engine.** :class:`EngineWatch` (a thread of the worker's main
  process) pings it every heartbeat; the heartbeat (:mod:`offload.worker.heartbeat`) stops
  consuming while it does not answer, says ``engine down`` in the registry, and resumes —
  removing what dead attempts left — once it answers again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import docker
import requests
from docker.errors import DockerException

from offload.worker.runtime import EngineUnavailable, Runtime

log = logging.getLogger(__name__)

PING_TIMEOUT = 2.0  # the most a ping waits while the engine is known to be down


def fresh_client(api: Any) -> Callable[[float], Any]:
    """Makes a new low-level client (a connection of its own) to the engine of ``api``, as
    the environment names it (``DOCKER_HOST``), with a timeout."""

    def make(timeout: float) -> Any:
        return docker.APIClient(
            **docker.utils.kwargs_from_env(), version=api.api_version, timeout=timeout
        )

    return make


class EngineHealth:
    """Whether one client's engine answers, from the calls it makes and from pings."""

    def __init__(self, api: Any, timeout: float) -> None:
        self.api, self.timeout = api, timeout
        self.fresh = fresh_client(api)
        self.pinger: Any = None  # a client of its own for pings, kept without idle connections
        self.down_since: float | None = None  # monotonic time of the first failure
        self.last_ok = 0.0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def ok(self) -> None:
        if self.down_since is not None:
            log.warning("the Docker engine answers again")
        self.down_since, self.last_ok = None, time.monotonic()

    def failed(self, exc: BaseException) -> EngineUnavailable:
        if self.down_since is None:
            log.warning("the Docker engine does not answer: %s", exc)
            self.down_since = time.monotonic()
        return EngineUnavailable(f"the Docker engine did not answer: {exc}")

    def ping(self, timeout: float | None = None) -> bool:
        """Whether the engine answers a new connection within ``timeout`` (the engine
        timeout by default)."""
        try:
            if self.pinger is None:
                self.pinger = self.fresh(self.timeout)
            # the connection is closed after each ping: the next one opens a new one
            reply = self.pinger.get(
                self.pinger._url("/_ping"),
                headers={"Connection": "close"},
                timeout=timeout or self.timeout,
            )
            reply.raise_for_status()
        except (requests.RequestException, DockerException, OSError) as exc:
            self.failed(exc)
            return False
        self.ok()
        return True

    def responsive(self) -> bool:
        return self.ping(min(PING_TIMEOUT, self.timeout) if self.down else None)

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """One engine call: fails fast while the engine is down; its failure marks it down."""
        if self.down and not self.ping(min(PING_TIMEOUT, self.timeout)):
            raise EngineUnavailable("the Docker engine does not answer")
        try:
            yield
        except requests.HTTPError:  # an answer (docker's APIError is one): the engine is up
            self.ok()
            raise
        except requests.RequestException as exc:  # refused, reset, or timed out
            raise self.failed(exc) from exc
        self.ok()


def engine_time(value: str) -> tuple[int, int]:
    """An engine timestamp (RFC 3339, nanoseconds) as (seconds, nanoseconds) since the epoch."""
    base, _, frac = value.rstrip("Z").partition(".")
    seconds = int(datetime.fromisoformat(base).replace(tzinfo=UTC).timestamp())
    return seconds, int((frac + "000000000")[:9])


def stopped_by_engine(
    health: EngineHealth,
    container: str,
    state: dict[str, Any],
    *,
    interrupted: bool,
    live_restore: bool,
) -> str:
    """Why the engine, not the container's program, ended a container that exited non-zero
    without this worker killing it; empty when its program ended by itself."""
    if interrupted and not live_restore:
        return "its engine stopped while it ran (no live-restore: the engine stopped it)"
    if int(state.get("ExitCode") or 0) <= 128:
        # not a death by signal (the sandbox's init exits 128 + the signal that ended the
        # job's program): the program ended by itself, and its end is recorded at once,
        # without the second a look at the engine's kill events takes
        return ""
    try:
        since, _ = engine_time(state["StartedAt"])
        sec, ns = engine_time(state["FinishedAt"])
        params = {
            "since": str(since),
            # the engine logs a kill after sending it: the event may follow the exit a little,
            # so the log is read up to a second past it (the engine answers at that second)
            "until": f"{sec + 1}.{ns:09d}",
            "filters": json.dumps({"container": [container], "event": ["kill"]}),
        }
        with health.call():
            reply = health.api.get(
                health.api._url("/events"), params=params, timeout=max(health.timeout, 2.0) + 1
            )
            reply.raise_for_status()
            events = [json.loads(line) for line in reply.text.splitlines() if line.strip()]
    except EngineUnavailable:
        return "its engine stopped answering as it exited"
    except (KeyError, ValueError, requests.RequestException) as exc:  # cannot tell: the program
        log.warning("container %s: its events are unreadable (%s)", container[:12], exc)
        return ""
    signals = [str((e.get("Actor") or {}).get("Attributes", {}).get("signal", "")) for e in events]
    if signals:
        return f"stopped by its engine (signal {', '.join(signals)}), not by its own program"
    return ""


def kill(runtime: Runtime, container: str, grace: float = 5.0) -> bool:
    """Kill a container and wait up to ``grace`` seconds for its end; False when the engine
    did not answer (the container goes once it does: the local reaper removes it)."""
    try:
        runtime.kill(container)
        runtime.wait(container, grace)
        return True
    except EngineUnavailable as exc:
        log.warning("container %s not killed: %s", container[:12], exc)
        return False


class EngineWatch:
    """Pings the engine every ``interval`` seconds from a thread of its own (a hung engine
    never holds the heartbeat); calls ``changed`` when it stops or starts answering."""

    def __init__(self, health: EngineHealth, interval: float, changed: Callable[[], None]):
        self.health, self.interval, self.changed = health, interval, changed
        self.up = True
        self.stopped = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self.loop, name="engine-watch", daemon=True).start()

    def loop(self) -> None:
        while not self.stopped.is_set():
            up = self.health.ping()
            if up != self.up:
                self.up = up
                log.warning("the Docker engine %s", "answers again" if up else "is down")
                self.changed()
            self.stopped.wait(self.interval)

    def stop(self) -> None:
        self.stopped.set()
