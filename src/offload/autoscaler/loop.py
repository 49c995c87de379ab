"""The autoscaler loop: observe, :func:`~offload.autoscaler.policy.decide`, act.

``tick(now)`` reads work (:func:`~offload.autoscaler.work.read_work`) and nodes (the
registry joined with the provider's view, :func:`join_nodes`), asks the pure policy, then acts
through the :class:`~offload.autoscaler.provider.NodeProvider`: starts nodes, and drains the
chosen ones (marked ``draining`` in the registry first, so they stop taking work even before
the provider reaches them). It never stops a node itself.

Each tick also writes, per class, a status hash that ``offload status`` shows for queued jobs::

    offload:autoscaler:<class>  HASH  desired, up, starting, draining, work, reason, at
                                      (expires after ``status_ttl`` s: no hash = no autoscaler)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields, replace
from typing import Any, cast

from redis import Redis

from offload.autoscaler.metrics import AutoscalerMetrics
from offload.autoscaler.policy import (
    ClassLimits,
    ClassWork,
    Decision,
    Limits,
    NodeState,
    NodeView,
    PolicyMemory,
    decide,
)
from offload.autoscaler.provider import NodeProvider, ProvidedNode
from offload.autoscaler.work import read_work
from offload.broker import keys
from offload.broker.nodes import NodeInfo, NodeRegistry
from offload.config import Settings
from offload.errors import ConfigError

log = logging.getLogger(__name__)

Recover = Callable[[float], object]


def status_key(resource_class: str) -> str:
    return f"{keys.PREFIX}:autoscaler:{resource_class}"


def read_status(r: Redis, resource_class: str) -> dict[str, str] | None:
    """The autoscaler's last word on a class, or None when no autoscaler runs."""
    raw = r.hgetall(status_key(resource_class))
    if not raw:
        return None
    return {_s(k): _s(v) for k, v in raw.items()}


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def join_nodes(
    registered: Sequence[NodeInfo],
    provided: Sequence[ProvidedNode],
    classes: Sequence[str],
    now: float,
    start_timeout: float,
) -> list[NodeView]:
    """The registry's nodes joined with the provider's, as the policy sees them.

    A provider node not registered yet is ``starting`` (``lost`` after ``start_timeout``); a
    registered node the provider does not know (started by hand, or by ``offload up``) counts
    as capacity for every class it serves, and is never drained (``managed=False``).
    """
    mine = {p.name: p for p in provided if p.state != "gone"}
    out: list[NodeView] = []
    for info in registered:
        p = mine.pop(info.name, None)
        st = _state(info.state)
        if p is None:
            out += [
                NodeView(info.name, c, info.slots, len(info.running), st, info.started_at, False)
                for c in info.classes
                if c in classes
            ]
            continue
        if p.state == "draining" and st == "up":
            st = "draining"
        out.append(
            NodeView(
                info.name, p.resource_class, info.slots, len(info.running), st, info.started_at
            )
        )
    for p in mine.values():
        state: NodeState
        if p.state == "draining":
            state = "draining"
        elif now - p.created_at > start_timeout:
            state = "lost"
        else:
            state = "starting"
        out.append(NodeView(p.name, p.resource_class, 0, 0, state, p.created_at))
    return out


def _state(value: str) -> NodeState:
    if value in ("starting", "up", "draining", "lost"):
        return cast(NodeState, value)
    return "lost"


def recovery_hook(settings: Settings, registry: NodeRegistry, redis: Redis) -> Recover | None:
    """``recover_lost`` of :mod:`offload.worker.recovery` bound to this platform, if present."""
    try:
        from offload.worker.recovery import recover_lost
    except ImportError:
        return None
    from offload.broker.app import make_app
    from offload.broker.records import JobRecords

    app = make_app(settings)
    records = JobRecords(
        redis, record_ttl=settings.record_ttl, log_max_entries=settings.log_max_entries
    )

    def recover(now: float) -> object:
        return recover_lost(registry, records, app, now)

    return recover


class Autoscaler:
    """Scales the nodes of ``classes`` on their work, through ``provider``."""

    def __init__(
        self,
        registry: NodeRegistry,
        provider: NodeProvider,
        redis: Redis,
        classes: Sequence[str],
        limits: Limits,
        clock: Callable[[], float] = time.time,
        *,
        metrics: AutoscalerMetrics | None = None,
        recover: Recover | None = None,
        start_timeout: float = 600.0,
        status_ttl: int = 60,
    ) -> None:
        self.registry = registry
        self.provider = provider
        self.r = redis
        self.classes = list(classes)
        self.limits = limits
        self.clock = clock
        self.metrics = metrics
        self.recover = recover
        self.start_timeout = start_timeout
        self.status_ttl = status_ttl
        self.memory = PolicyMemory()

    def observe(self, now: float) -> tuple[dict[str, ClassWork], list[NodeView], set[str]]:
        """Work per class, node views, and the names of the registered nodes."""
        work = read_work(self.r, self.classes)
        registered = self.registry.nodes(now)
        views = join_nodes(registered, self.provider.nodes(), self.classes, now, self.start_timeout)
        return work, views, {n.name for n in registered}

    def tick(self, now: float | None = None) -> Decision:
        """One round: recover lost nodes, observe, decide, act, publish status."""
        now = self.clock() if now is None else now
        if self.recover is not None:
            try:
                self.recover(now)
            except Exception:
                log.exception("recovering lost nodes")
        work, views, registered = self.observe(now)
        decision = decide(work, views, now, self.limits, self.memory)
        self.memory = decision.memory
        failures = self._act(decision, registered)
        self._publish(decision, failures, now)
        if self.metrics is not None:
            self.metrics.observe(work, views, decision, now)
        return decision

    def _act(self, decision: Decision, registered: set[str]) -> dict[str, str]:
        failures: dict[str, str] = {}
        for cls, count in decision.start.items():
            try:
                names = self.provider.start_nodes(cls, count)
                log.info("%s: started %s — %s", cls, ", ".join(names), decision.reasons[cls])
            except Exception as exc:
                log.exception("%s: starting %d node(s) failed", cls, count)
                failures[cls] = f"starting {count} node(s) failed: {exc}"
        for cls, d in decision.classes.items():
            for name in d.drain:
                try:
                    if name in registered:
                        self.registry.set_draining(name)
                    self.provider.drain(name)
                    log.info("%s: draining %s — %s", cls, name, d.reason)
                except Exception as exc:
                    log.exception("%s: draining %s failed", cls, name)
                    failures[cls] = f"draining {name} failed: {exc}"
        return failures

    def _publish(self, decision: Decision, failures: Mapping[str, str], now: float) -> None:
        pipe = self.r.pipeline(transaction=False)
        for cls, d in decision.classes.items():
            reason = failures.get(cls, d.reason)
            pipe.hset(
                status_key(cls),
                mapping={
                    "desired": d.desired,
                    "up": d.up,
                    "starting": d.starting + d.start,
                    "draining": len(d.drain),
                    "work": d.work,
                    "reason": reason,
                    "at": repr(now),
                },
            )
            pipe.expire(status_key(cls), self.status_ttl)
        pipe.execute()

    def run(self, interval: float, stop_event: threading.Event) -> None:
        """Tick every ``interval`` seconds until ``stop_event`` is set; errors are logged."""
        while not stop_event.is_set():
            try:
                self.tick(self.clock())
            except Exception:
                log.exception("autoscaler tick failed")
            stop_event.wait(interval)


_LIMIT_FIELDS = {f.name for f in fields(ClassLimits)}


def limits_from_settings(settings: Settings) -> Limits:
    """Limits per configured class: the ``autoscale_*`` defaults, GPU classes at min 0,
    then each class's overrides from ``OFFLOAD_AUTOSCALE`` (JSON: class → ClassLimits fields).
    """
    overrides: Mapping[str, Mapping[str, Any]] = getattr(settings, "autoscale", None) or {}
    known = {c.name for c in settings.classes}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(
            f"OFFLOAD_AUTOSCALE names unknown classes {sorted(unknown)}; known: {sorted(known)}"
        )
    try:
        default = ClassLimits(
            min_nodes=getattr(settings, "autoscale_min", 0),
            max_nodes=getattr(settings, "autoscale_max", 4),
            jobs_per_node=getattr(settings, "autoscale_jobs_per_node", None),
            max_step=getattr(settings, "autoscale_max_step", 4),
            idle_window=getattr(settings, "autoscale_idle_window", 60.0),
        )
        per: dict[str, ClassLimits] = {}
        for c in settings.classes:
            gpu = c.min_gpus > 0
            base = replace(default, gpu=gpu, min_nodes=0 if gpu else default.min_nodes)
            extra = dict(overrides.get(c.name, {}))
            bad = set(extra) - _LIMIT_FIELDS
            if bad:
                raise ConfigError(
                    f"OFFLOAD_AUTOSCALE[{c.name!r}]: unknown fields {sorted(bad)}; "
                    f"known: {sorted(_LIMIT_FIELDS)}"
                )
            per[c.name] = replace(base, **extra)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid autoscale limits: {exc}") from None
    return Limits(per_class=per, default=default)
