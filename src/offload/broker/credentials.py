"""The Redis users of the embedded platform (``offload up``) and whose credentials a process
on this machine uses when it is given none.

``up`` starts its ``redis-server`` with the default user off and one user per role of
:mod:`offload.broker.acl`, plus ``offload-admin`` (all rights). Their passwords are made once
(``secrets.token_urlsafe``) and kept in ``<home>/secrets/redis-users.json`` (0600, folder 0700)
with the port that Redis serves::

    {"port": 6379, "passwords": {"admin": "...", "producer": "...", "worker": "...", ...}}

A process whose settings name no credentials (no ``OFFLOAD_REDIS_USER`` /
``OFFLOAD_REDIS_PASSWORD``, none in the URL) and whose Redis URL is that loopback port — the
operator's CLI, ``Client()`` — connects as ``offload-admin``: whoever can read ``$OFFLOAD_HOME``
owns the platform. The services ``up`` starts get their role's user instead, in their
environment (never on a command line).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

from offload.config import Settings
from offload.errors import ConfigError

USER_PREFIX = "offload-"
ADMIN = "admin"
USERS_FILE = Path("secrets") / "redis-users.json"
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def user_name(role: str) -> str:
    """The Redis user of a role (``admin`` included): ``offload-<role>``."""
    return USER_PREFIX + role


def users_path(settings: Settings) -> Path:
    return settings.home / USERS_FILE


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, the file 0600 and its folder 0700."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.parent.chmod(0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _load(path: Path) -> tuple[int, dict[str, str]] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read the embedded Redis users' passwords {path}: {exc}"
        ) from None
    passwords = data.get("passwords") if isinstance(data, dict) else None
    port = data.get("port") if isinstance(data, dict) else None
    if not isinstance(port, int) or not isinstance(passwords, dict):
        raise ConfigError(f"{path}: expected {{'port': N, 'passwords': {{role: password}}}}")
    return port, {str(k): str(v) for k, v in passwords.items()}


def ensure(settings: Settings, roles: Iterable[str], port: int) -> dict[str, str]:
    """The passwords of ``admin`` and ``roles``: the kept ones, a new one for a new role;
    written back (with ``port``) atomically, 0600."""
    path = users_path(settings)
    kept = (_load(path) or (0, {}))[1]
    passwords = {r: kept.get(r) or secrets.token_urlsafe(32) for r in (ADMIN, *roles)}
    write_private(path, json.dumps({"port": port, "passwords": passwords}, indent=2) + "\n")
    return passwords


def _has_credentials(settings: Settings) -> bool:
    url = urlparse(settings.redis_url)
    return bool(settings.redis_user or settings.redis_password or url.username or url.password)


def served(settings: Settings) -> dict[str, str] | None:
    """The passwords of ``up``'s users when ``settings`` reach the Redis ``up`` serves (a
    ``redis://`` URL on loopback at the port kept with them) and name no credentials."""
    url = urlparse(settings.redis_url)
    if url.scheme != "redis" or url.hostname not in _LOOPBACK or _has_credentials(settings):
        return None
    kept = _load(users_path(settings))
    if kept is None or kept[0] != (url.port or 6379):
        return None
    return kept[1]


def embedded_admin(settings: Settings) -> tuple[str, str] | None:
    """``offload-admin`` and its password when :func:`served` applies, else None."""
    passwords = served(settings)
    if passwords is None or ADMIN not in passwords:
        return None
    return user_name(ADMIN), passwords[ADMIN]


def role_env(settings: Settings, role: str) -> dict[str, str]:
    """``OFFLOAD_REDIS_USER`` / ``_PASSWORD`` of ``role`` for a process ``up`` starts; empty
    when ``settings`` name their own credentials or the Redis is not ``up``'s."""
    passwords = served(settings)
    if passwords is None or role not in passwords:
        return {}
    return {"OFFLOAD_REDIS_USER": user_name(role), "OFFLOAD_REDIS_PASSWORD": passwords[role]}
