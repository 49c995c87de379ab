"""Where ``offload up``'s processes serve their metrics (``docs/metrics.md``).

The autoscaler (cluster-wide figures) listens on ``OFFLOAD_METRICS_PORT`` and the worker
(its own figures) on the port after it; unset, each takes a free port, so platforms side by
side never clash. Either way every serving process writes where it listens to
``<home>/run/metrics/<name>.json`` (Prometheus ``file_sd``: the local-provider nodes the
autoscaler starts appear there too), which is where ``up`` reads the address it prints.
All on ``OFFLOAD_METRICS_ADDRESS``, 127.0.0.1 by default.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from offload.config import Settings


def ports(settings: Settings) -> tuple[int, int]:
    """(autoscaler, worker) ports for ``up``; 0: any free port."""
    base = settings.metrics_port or 0
    return base, base + 1 if base else 0


def env(settings: Settings, role: str) -> dict[str, str]:
    """The ``OFFLOAD_*METRICS*`` variables of the autoscaler or the worker ``up`` starts."""
    scaler, worker = ports(settings)
    if role == "worker":
        return {"OFFLOAD_METRICS_PORT": str(worker)}
    return {"OFFLOAD_METRICS_PORT": str(scaler), "OFFLOAD_NODE_METRICS_PORT": "0"}


def target(settings: Settings, name: str) -> Path:
    return settings.metrics_targets / f"{name}.json"


def forget(settings: Settings, name: str) -> None:
    """Drop what an earlier run said (a killed process leaves its file)."""
    target(settings, name).unlink(missing_ok=True)


def where(settings: Settings, name: str, timeout: float = 10.0) -> str:
    """``http://host:port/metrics`` of ``name`` once it said so; '' if it did not in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            (entry,) = json.loads(target(settings, name).read_text())
            return f"http://{entry['targets'][0]}/metrics"
        except (OSError, ValueError, KeyError, IndexError):
            time.sleep(0.1)
    return ""
