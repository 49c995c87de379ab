"""Job control from the producer side: concurrency limits and held classes.

Thin over :class:`offload.broker.limits.Limits` (where the mechanism and its crash safety
live); :class:`~offload.producer.client.Client` exposes these as ``set_limit``, ``limits``,
``remove_limit``, ``hold``, ``release`` and ``held``::

    c.set_limit("db=orders", 2)     # at most 2 jobs labelled db=orders run at once
    c.hold("cpu-small")             # no new cpu-small job starts; running ones finish
    c.release("cpu-small")          # the held jobs are queued again
"""

from __future__ import annotations

from offload.broker.core import Broker
from offload.broker.limits import Limits, LimitUsage
from offload.broker.records import JobRecord


class Control:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    @property
    def _limits(self) -> Limits:
        return self.broker.limits

    def set_limit(self, limit: str, max_running: int) -> LimitUsage:
        """At most ``max_running`` jobs labelled ``limit`` (``label=value``) run at once,
        cluster-wide. A bad limit or maximum raises :class:`~offload.errors.SpecError`."""
        return self._limits.set_limit(limit, max_running)

    def remove_limit(self, limit: str) -> bool:
        """Remove a limit (False if none was set); jobs waiting for it are queued."""
        return self._limits.remove_limit(limit)

    def limits(self) -> list[LimitUsage]:
        """Every limit: its maximum, how many jobs hold a permit now, how many wait."""
        return self._limits.usages()

    def hold(self, resource_class: str) -> bool:
        """Start no new job of ``resource_class`` (a configured class, else
        :class:`~offload.errors.ConfigError`); False if it was held already."""
        self.broker.settings.resource_class(resource_class)
        return self._limits.hold(resource_class)

    def release(self, resource_class: str) -> list[str]:
        """Undo :meth:`hold`; returns the jobs queued again."""
        self.broker.settings.resource_class(resource_class)
        return self._limits.release(resource_class)

    def held(self) -> list[str]:
        return self._limits.held()

    def why(self, rec: JobRecord) -> str | None:
        """Why ``rec``'s job does not start when a limit or a hold is the cause, else None."""
        return self._limits.why(rec)
