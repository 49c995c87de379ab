"""The node provider seam: how the autoscaler starts and drains worker nodes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


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
        """Start ``count`` nodes serving ``resource_class``; returns their node names."""

    @abstractmethod
    def drain(self, node: str) -> None:
        """Ask the node to stop consuming, finish its running jobs, then exit."""

    @abstractmethod
    def nodes(self) -> list[ProvidedNode]:
        """The nodes this provider started that have not gone yet."""

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release the provider's own resources (not the nodes)."""
