"""Counting what the data tier does, for whoever watches it.

The worker's metrics (:mod:`offload.worker.metrics`) install a :class:`Probe` of their own
before the pool forks; everywhere else the default one counts nothing, at the cost of one
method call. The data tier knows nothing of Prometheus.
"""

from __future__ import annotations

from typing import Literal

Direction = Literal["upload", "download"]


class Probe:
    """What the stores report; this one ignores it."""

    def read(self, local_hit: bool) -> None:
        """An object was read: from this node's cache (``local_hit``), or not (fetched from
        the shared store, or missing)."""

    def remote_bytes(self, direction: Direction, n: int) -> None:
        """``n`` bytes of sealed blobs went to (``upload``) or came from the shared store."""


_installed: list[Probe] = [Probe()]


def install(probe: Probe) -> None:
    _installed[0] = probe


def probe() -> Probe:
    return _installed[0]
