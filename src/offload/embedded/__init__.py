"""The embedded default: the whole platform on one machine, started by ``offload up``.

A local ``redis-server`` (only when the configured Redis is on loopback and not already
answering; its default user off, one least-privilege user per role, each service started as
its role's user: :mod:`offload.broker.credentials`), one worker node, the autoscaler with the
local provider (more worker processes while work piles up), the scheduler, and Flower — all
bound to 127.0.0.1. Process ids are kept in
``<home>/run/`` and logs in ``<home>/logs/`` so ``offload down`` can stop what ``up`` started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from offload.config import Settings
from offload.embedded import metrics
from offload.errors import BrokerError, ConfigError, OffloadError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Service:
    name: str
    state: str  # "started" | "running" | "external"
    detail: str


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.home / "run" / f"{name}.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def running_pid(settings: Settings, name: str) -> int | None:
    try:
        pid = int(_pid_file(settings, name).read_text())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _spawn(
    settings: Settings,
    name: str,
    argv: list[str],
    umask: int = -1,
    extra_env: dict[str, str] | None = None,
) -> int:
    (settings.home / "run").mkdir(parents=True, exist_ok=True)
    (settings.home / "logs").mkdir(parents=True, exist_ok=True)
    log = (settings.home / "logs" / f"{name}.log").open("ab")
    env = {
        **os.environ,
        "OFFLOAD_HOME": str(settings.home),
        "OFFLOAD_REDIS_URL": settings.redis_url,
    }
    if settings.flower_auth is not None:  # the settings given, not only the environment's
        env["OFFLOAD_FLOWER_AUTH"] = settings.flower_auth.get_secret_value()
    env.update(extra_env or {})  # a role's Redis user: in the environment, never in argv
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
        umask=umask,
    )
    _pid_file(settings, name).write_text(str(proc.pid))
    return proc.pid


def _wait(what: str, check: Callable[[], bool], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise OffloadError(f"{what} did not come up within {timeout:g}s; see {log}")


def _redis_ok(settings: Settings) -> bool:
    """Whether Redis answers, reached as every process reaches it (TLS, user, Sentinel); one
    that answers but refuses the credentials is a :class:`ConfigError`."""
    from offload.broker.connection import answers

    return answers(settings)


def _role_env(settings: Settings, role: str) -> dict[str, str]:
    from offload.broker.credentials import role_env

    return role_env(settings, role)


def _write_acl(settings: Settings, data: Path, port: int) -> Path:
    """The ACL file of ``up``'s Redis, from the roles of this version (rewritten every start),
    with the kept passwords (new ones for new users)."""
    from offload.broker.acl import ROLES, aclfile
    from offload.broker.credentials import ensure, write_private

    if settings.redis_user or settings.redis_password or urlparse(settings.redis_url).username:
        raise ConfigError(
            f"OFFLOAD_REDIS_USER / OFFLOAD_REDIS_PASSWORD (or the URL's credentials) are set, "
            f"but no Redis answers at {settings.redis_url}: `offload up` starts its own, with "
            "its own users; unset them, or start that Redis yourself"
        )
    path = data / "users.acl"
    write_private(path, aclfile(settings, ensure(settings, ROLES, port)))
    return path


def start_redis(settings: Settings) -> Service:
    url = urlparse(settings.redis_url)
    if _redis_ok(settings):
        owned = running_pid(settings, "redis")
        return Service("redis", "running" if owned else "external", settings.redis_url)
    if url.hostname not in LOOPBACK or settings.redis_url.startswith("sentinel://"):
        raise BrokerError(f"Redis at {settings.redis_url} does not answer (not on this machine)")
    exe = shutil.which("redis-server")
    if exe is None:
        raise ConfigError(
            "redis-server is not installed; run `make setup` (apt-get install redis-server)"
        )
    data = settings.home / "redis"  # AOF: every spec, secrets included — owner only
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path in (data, *data.rglob("*")):
        path.chmod(0o700 if path.is_dir() else 0o600)
    acl = _write_acl(settings, data, url.port or 6379)
    _spawn(
        settings,
        "redis",
        [
            exe,
            "--bind",
            "127.0.0.1",
            "--port",
            str(url.port or 6379),
            "--dir",
            str(data),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",  # a submit that returned an id survives a kill -9 (docs/architecture.md)
            "--save",
            "",
            "--protected-mode",
            "yes",
            "--aclfile",
            str(acl),
            "--maxmemory",
            str(settings.redis_max_memory),
            "--maxmemory-policy",
            "noeviction",
        ],
        umask=0o077,  # its files 0600, folders 0700
    )
    _wait("redis-server", lambda: _redis_ok(settings), 15, settings.home / "logs/redis.log")
    from offload.spec import format_memory

    limit = (
        f"maxmemory {format_memory(settings.redis_max_memory)} (OFFLOAD_REDIS_MAX_MEMORY); "
        f"submits refused above {settings.redis_high_water:.0%} of it"
    )
    return Service("redis", "started", f"{settings.redis_url}, {limit}")


def start_worker(settings: Settings) -> Service:
    if running_pid(settings, "worker"):
        return Service("worker", "running", settings.node_name)
    metrics.forget(settings, settings.node_name)
    _spawn(settings, "worker", [sys.executable, "-m", "offload", "worker"],
           extra_env={**_role_env(settings, "worker"),
                      **metrics.env(settings, "worker")})  # fmt: skip
    from offload.broker.core import Broker

    app = Broker(settings).app
    node = f"offload@{settings.node_name}"

    def ready() -> bool:
        if not running_pid(settings, "worker"):
            raise OffloadError("the worker exited")
        return any(node in reply for reply in app.control.ping(timeout=0.5))

    _wait("the worker", ready, 60, settings.home / "logs/worker.log")
    where = metrics.where(settings, settings.node_name)
    return Service("worker", "started", f"{node}, metrics {where}")


def start_flower(settings: Settings) -> Service:
    from offload.broker.flower import check_flower_auth

    if running_pid(settings, "flower"):
        return Service("flower", "running", settings.flower_url)
    check_flower_auth(settings)  # beyond loopback only with authentication
    _spawn(settings, "flower", [sys.executable, "-m", "offload", "flower"],
           extra_env=_role_env(settings, "monitor"))  # fmt: skip

    def ready() -> bool:
        with urllib.request.urlopen(settings.flower_url + "/healthcheck", timeout=1) as r:
            return bool(r.status == 200)

    _wait("Flower", ready, 60, settings.home / "logs/flower.log")
    return Service("flower", "started", settings.flower_url)


def ensure_key(settings: Settings) -> Service:
    """The cluster key every process seals objects with; made on first use."""
    from offload.cache.keys import init_key, load_key

    path = settings.key_path
    if path.exists():
        return Service("key", "present", f"{path} ({load_key(path).fingerprint})")
    init_key(path)
    return Service("key", "created", f"{path} ({load_key(path).fingerprint})")


def start_autoscaler(settings: Settings) -> Service:
    """The autoscaler with the local provider: more worker processes when work piles up."""
    if running_pid(settings, "autoscaler"):
        return Service("autoscaler", "running", "local provider")
    nodes = {f"OFFLOAD_NODE_{k[8:]}": v for k, v in _role_env(settings, "worker").items()}
    metrics.forget(settings, "autoscaler")
    _spawn(settings, "autoscaler", [sys.executable, "-m", "offload", "autoscaler",
                                    "--provider", "local"],
           extra_env={**_role_env(settings, "autoscaler"), **nodes,
                      **metrics.env(settings, "autoscaler")})  # fmt: skip
    from offload.broker.core import Broker

    broker = Broker(settings)

    def ready() -> bool:
        if not running_pid(settings, "autoscaler"):
            raise OffloadError("the autoscaler exited")
        return broker.class_status(settings.classes[0].name) is not None

    _wait("the autoscaler", ready, 30, settings.home / "logs/autoscaler.log")
    where = metrics.where(settings, "autoscaler")
    return Service("autoscaler", "started", f"local provider, metrics {where}")


def start_scheduler(settings: Settings) -> Service:
    """The scheduler: fires schedules (active, or standing by for another one in the cluster)."""
    if running_pid(settings, "scheduler"):
        return Service("scheduler", "running", "schedules")
    _spawn(
        settings,
        "scheduler",
        [sys.executable, "-m", "offload", "scheduler"],
        extra_env=_role_env(settings, "producer"),
    )  # it submits, as a producer does
    from offload.broker.core import Broker

    schedules = Broker(settings).schedules

    def ready() -> bool:
        if not running_pid(settings, "scheduler"):
            raise OffloadError("the scheduler exited")
        return schedules.active() is not None

    _wait("the scheduler", ready, 30, settings.home / "logs/scheduler.log")
    return Service("scheduler", "started", "schedules")


def up(settings: Settings) -> list[Service]:
    return [
        ensure_key(settings),
        start_redis(settings),
        start_worker(settings),
        start_autoscaler(settings),
        start_scheduler(settings),
        start_flower(settings),
    ]


# -- down ------------------------------------------------------------------------------------

# node -> its running jobs, as "<job id> <name>"; told to ``down``'s caller as it changes


from offload.embedded.down import Progress, down  # noqa: E402

__all__ = ["Progress", "Service", "down", "running_pid", "start_redis", "up"]
