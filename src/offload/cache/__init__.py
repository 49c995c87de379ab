"""Content-addressed storage: the :class:`Store` seam and the node-local implementation."""

from offload.cache.local import LocalStore
from offload.cache.store import Store, file_id

__all__ = ["LocalStore", "Store", "file_id"]
