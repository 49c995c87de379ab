"""The node provider seam: how the autoscaler starts and drains worker nodes.

A provider raises :class:`~offload.errors.ProviderError` when it cannot act (its engine or
cloud API fails, a node's process does not start) and :class:`~offload.errors.ConfigError`
when it is set up wrong (an unknown class, a missing group or image); the loop logs either
and tries again at its next tick. ``tests/test_provider_conformance.py`` holds every
implementation to this contract.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from offload.autoscaler.policy import Headroom
from offload.errors import ProviderError

__all__ = ["Headroom", "NodeProvider", "ProvidedNode", "ProviderError"]


@dataclass(frozen=True)
class ProvidedNode:
    """A node as its provider sees it (the registry has what the node says of itself)."""

    name: str
    resource_class: str
    state: str  # "starting" | "running" | "draining" | "gone"
    created_at: float


class NodeProvider(ABC):
    """Starts worker nodes for a resource class and drains them. It never kills a node."""

    name: str = "abstract"

    @abstractmethod
    def start_nodes(self, resource_class: str, count: int) -> list[str]:
        """Start up to ``count`` nodes serving ``resource_class``; returns their names.

        An unknown class starts nothing (``ConfigError``). Fewer names than asked mean the
        provider is at a limit of its own (a group's maximum; the machine's capacity) or,
        in the cloud, that the nodes are still being launched: :meth:`nodes` lists them.
        """

    @abstractmethod
    def drain(self, node: str) -> None:
        """Ask the node to stop consuming, finish its running jobs, then go away.

        Idempotent; a node that is gone, or not this provider's, is a no-op.
        """

    @abstractmethod
    def nodes(self) -> list[ProvidedNode]:
        """The nodes this provider started that have not gone yet (a new instance of the
        provider, as after a restart, finds them again)."""

    def headroom(self, classes: Sequence[str]) -> dict[str, Headroom]:
        """How many more nodes of each class fit now, where the provider has a limit."""
        return {}

    def protect(self, node: str, busy: bool) -> None:  # noqa: B027  (optional hook)
        """Shield a busy node from scale-in by others (a cloud group), or stop shielding it."""

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release the provider's own resources (not the nodes)."""
