"""The autoscaler loop: observe, :func:`~offload.autoscaler.policy.decide`, act.

``tick(now)`` sweeps (:class:`offload.broker.sweeper.Sweeper`: jobs whose lease expired, lost
messages, lost nodes — one sweeper in the cluster at a time), reads work
(:meth:`offload.broker.core.Broker.depths`), nodes (the registry joined with the provider's
view, :func:`join_nodes`) and the provider's headroom, asks the pure policy, then
acts through the :class:`~offload.autoscaler.provider.NodeProvider`: keeps busy nodes
protected from scale-in and idle ones not (told only on change), starts nodes, and drains the
chosen ones (marked ``draining`` in the registry first, so they stop taking work even before
the provider reaches them). It never stops a node itself. A provider that cannot act
(:class:`~offload.errors.ProviderError`) is logged, named in the class's status, and asked
again at the next tick.

Each tick writes, per class, the status that ``offload status`` shows for queued jobs
(:mod:`offload.broker.scaling`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields, replace
from typing import cast

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
from offload.broker.core import Broker
from offload.broker.nodes import ENGINE_DOWN, NodeInfo
from offload.broker.scaling import ClassStatus
from offload.config import Settings
from offload.errors import ConfigError, OffloadError

log = logging.getLogger(__name__)

Recover = Callable[[float], object]


def join_nodes(
    registered: Sequence[NodeInfo],
    provided: Sequence[ProvidedNode],
    classes: Sequence[str],
    now: float,
    start_timeout: float,
    lost_after: float = float("inf"),
) -> list[NodeView]:
    """The registry's nodes joined with the provider's, as the policy sees them.

    A provider node not registered yet is ``starting`` (``lost`` after ``start_timeout``); a
    registered node the provider does not know (started by hand, or by ``offload up``) counts
    as capacity for every class it serves, and is never drained (``managed=False``). A node
    whose engine does not answer counts as ``up`` for ``lost_after`` seconds (a restarting
    engine comes back), then as ``lost``: a node replaces it, as one replaces a lost node.
    """
    mine = {p.name: p for p in provided if p.state != "gone"}
    out: list[NodeView] = []
    for info in registered:
        p = mine.pop(info.name, None)
        st = _state(info.state)
        if info.state == ENGINE_DOWN:
            down_for = now - info.engine_down_at
            st = "lost" if down_for > lost_after else ("draining" if info.draining else "up")
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


def recovery_hook(broker: Broker) -> Recover:
    """The sweeper of this platform, run from the loop (it paces itself)."""

    def recover(now: float) -> object:
        return broker.sweeper.sweep()

    return recover


class Autoscaler:
    """Scales the nodes of ``classes`` on their work, through ``provider``."""

    def __init__(
        self,
        broker: Broker,
        provider: NodeProvider,
        classes: Sequence[str],
        limits: Limits,
        clock: Callable[[], float] = time.time,
        *,
        metrics: AutoscalerMetrics | None = None,
        recover: Recover | None = None,
        start_timeout: float = 600.0,
        status_ttl: int = 60,
    ) -> None:
        self.broker = broker
        self.registry = broker.nodes
        self.provider = provider
        self.classes = list(classes)
        self.limits = limits
        self.clock = clock
        self.metrics = metrics
        self.recover = recover
        self.start_timeout = start_timeout
        self.status_ttl = status_ttl
        self.memory = PolicyMemory()
        self.protected: dict[str, bool] = {}  # node -> protection last told to the provider
        self.held: set[str] = set()  # classes held (offload hold) at the last tick

    def observe(self, now: float) -> tuple[dict[str, ClassWork], list[NodeView], set[str]]:
        """Work per class, node views, and the names of the registered nodes."""
        work = self.broker.depths(self.classes)
        registered = self.registry.nodes(now)
        views = join_nodes(
            registered,
            self.provider.nodes(),
            self.classes,
            now,
            self.start_timeout,
            self.registry.lost_after,
        )
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
        self.held = self.broker.held()  # a held class's waiting work starts no node
        work = {c: ClassWork(running=w.running) if c in self.held else w for c, w in work.items()}
        room = self.provider.headroom(self.classes)
        decision = decide(work, views, now, self.limits, self.memory, room)
        self.memory = decision.memory
        self._protect(views, registered)
        failures = self._act(decision, registered)
        self._publish(decision, views, failures, now)
        if self.metrics is not None:
            self.metrics.observe(work, views, decision, now)
        return decision

    def _protect(self, views: Sequence[NodeView], registered: set[str]) -> None:
        """Busy managed nodes protected from scale-in, idle ones not; told on change only."""
        busy: dict[str, bool] = {}
        for v in views:
            if v.managed and v.state == "up" and v.name in registered:
                busy[v.name] = busy.get(v.name, False) or v.running > 0
        for name in set(self.protected) - set(busy):
            del self.protected[name]
        for name, is_busy in sorted(busy.items()):
            if self.protected.get(name) is is_busy:
                continue
            try:
                self.provider.protect(name, is_busy)
            except OffloadError as exc:
                log.warning("%s: protection %s failed: %s", name, "on" if is_busy else "off", exc)
                continue
            self.protected[name] = is_busy

    def _act(self, decision: Decision, registered: set[str]) -> dict[str, str]:
        failures: dict[str, str] = {}
        for cls, count in decision.start.items():
            try:
                names = self.provider.start_nodes(cls, count)
                log.info("%s: started %s — %s", cls, ", ".join(names), decision.reasons[cls])
            except OffloadError as exc:
                log.warning("%s: starting %d node(s) failed: %s", cls, count, exc)
                failures[cls] = f"starting {count} node(s) failed: {exc}"
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
                except OffloadError as exc:
                    log.warning("%s: draining %s failed: %s", cls, name, exc)
                    failures[cls] = f"draining {name} failed: {exc}"
                except Exception as exc:
                    log.exception("%s: draining %s failed", cls, name)
                    failures[cls] = f"draining {name} failed: {exc}"
        return failures

    def _publish(
        self,
        decision: Decision,
        views: Sequence[NodeView],
        failures: Mapping[str, str],
        now: float,
    ) -> None:
        statuses = {
            cls: ClassStatus(
                desired=d.desired,
                up=d.up,
                starting=d.starting + d.start,
                draining=len(d.drain)
                + sum(1 for v in views if v.resource_class == cls and v.state == "draining"),
                work=d.work,
                reason=(f"held (offload release {cls}); " if cls in self.held else "")
                + failures.get(cls, d.reason),
                at=now,
            )
            for cls, d in decision.classes.items()
        }
        self.broker.write_class_status(statuses, self.status_ttl)

    def run(self, interval: float, stop_event: threading.Event) -> None:
        """Tick every ``interval`` seconds until ``stop_event`` is set; errors are logged."""
        while not stop_event.is_set():
            try:
                self.tick(self.clock())
            except OffloadError as exc:
                log.warning("autoscaler tick failed: %s", exc)
            except Exception:
                log.exception("autoscaler tick failed")
            stop_event.wait(interval)


def build_autoscaler(
    broker: Broker, provider: NodeProvider, *, metrics: AutoscalerMetrics | None = None
) -> Autoscaler:
    """The autoscaler of ``offload autoscaler``: every class, limits, registry and recovery
    from the broker's settings (a node is lost after ``lost_after`` without a heartbeat)."""
    settings = broker.settings
    return Autoscaler(
        broker,
        provider,
        [c.name for c in settings.classes],
        limits_from_settings(settings),
        metrics=metrics,
        recover=recovery_hook(broker),
    )


_LIMIT_FIELDS = {f.name for f in fields(ClassLimits)}


def limits_from_settings(settings: Settings) -> Limits:
    """Limits per configured class: the ``autoscale_*`` defaults, GPU classes at min 0,
    then each class's overrides from ``OFFLOAD_AUTOSCALE`` (JSON: class → ClassLimits fields).
    """
    overrides = settings.autoscale
    known = {c.name for c in settings.classes}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(
            f"OFFLOAD_AUTOSCALE names unknown classes {sorted(unknown)}; known: {sorted(known)}"
        )
    try:
        default = ClassLimits(
            min_nodes=settings.autoscale_min,
            max_nodes=settings.autoscale_max,
            jobs_per_node=settings.autoscale_jobs_per_node,
            max_step=settings.autoscale_max_step,
            idle_window=settings.autoscale_idle_window,
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
