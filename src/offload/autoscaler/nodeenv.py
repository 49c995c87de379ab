"""What a provider gives a new node: its name, its ``OFFLOAD_*`` environment, its cache.

Shared by the local, docker and aws providers.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from pydantic import SecretStr

from offload.config import Settings

# Settings that describe one node, never copied from the autoscaler's own settings; nor are
# the Redis credentials (a node gets its own, by node_env; secrets never go to user data).
NODE_FIELDS = frozenset(
    {"node_name", "worker_classes", "cache_dir", "provider", "home", "key_file",
     "redis_user", "redis_password", "node_redis_user", "node_redis_password",
     "metrics_port", "node_metrics_port"}
)  # fmt: skip


def new_node_name(resource_class: str) -> str:
    return f"{resource_class}-{uuid.uuid4().hex[:8]}"


def settings_env(settings: Settings, *, exclude: frozenset[str] = NODE_FIELDS) -> dict[str, str]:
    """``OFFLOAD_*`` variables that give a node the same platform settings as ``settings``.

    Only values that differ from the defaults are written (``redis_url`` always), so a node's
    environment stays short and readable; node-specific fields are left to the caller.
    """
    dumped = settings.model_dump(mode="json")
    defaults = type(settings).model_construct().model_dump(mode="json")
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        if name in exclude or isinstance(getattr(settings, name), SecretStr):
            continue  # a secret dumps as '**********': node_env gives a node the ones it needs
        value = dumped[name]
        if name != "redis_url" and value == defaults.get(name):
            continue
        if value is None:
            continue
        if isinstance(value, list | dict):
            text = json.dumps(value, separators=(",", ":"))
        else:
            text = str(value)
        env[f"OFFLOAD_{name.upper()}"] = text
    return env


def node_cache(settings: Settings, node_dir: Path) -> Path:
    """A node's cache folder: its own when blobs travel through S3, else the shared store.

    Without a remote tier the local store is where producers put inputs and read outputs;
    a node with a private cache would see no inputs and its outputs would reach no one.
    """
    return node_dir / "cache" if settings.s3_bucket else settings.store_dir


def node_env(
    settings: Settings,
    name: str,
    resource_class: str,
    provider: str,
    *,
    home: Path,
    cache_dir: Path,
    key_file: Path,
    slots: int | None = None,
) -> dict[str, str]:
    """The ``OFFLOAD_*`` environment of one node: the platform's settings plus its identity."""
    env = settings_env(settings)
    env.update(
        {
            "OFFLOAD_HOME": str(home),
            "OFFLOAD_CACHE_DIR": str(cache_dir),
            "OFFLOAD_KEY_FILE": str(key_file),
            "OFFLOAD_NODE_NAME": name,
            "OFFLOAD_WORKER_CLASSES": resource_class,
            "OFFLOAD_PROVIDER": provider,
        }
    )
    if slots is not None:
        env["OFFLOAD_WORKER_SLOTS"] = str(slots)
    # never the autoscaler's own port (it may be in the environment the node inherits)
    port = settings.node_metrics_port
    env["OFFLOAD_METRICS_PORT"] = "" if port is None else str(port)
    env.update(node_credentials(settings))
    return env


def node_credentials(settings: Settings) -> dict[str, str]:
    """A node's ``OFFLOAD_REDIS_USER`` / ``_PASSWORD``: ``node_redis_user`` /
    ``node_redis_password`` (``offload up`` gives its autoscaler the worker role's), else the
    autoscaler's own."""
    if settings.node_redis_user or settings.node_redis_password:
        user, password = settings.node_redis_user, settings.node_redis_password
    else:
        user, password = settings.redis_user, settings.redis_password
    env = {"OFFLOAD_REDIS_USER": user} if user else {}
    if password is not None:
        env["OFFLOAD_REDIS_PASSWORD"] = password.get_secret_value()
    if settings.redis_sentinel_password is not None:  # the Sentinels': the same for everyone
        env["OFFLOAD_REDIS_SENTINEL_PASSWORD"] = settings.redis_sentinel_password.get_secret_value()
    return env
