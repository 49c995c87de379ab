"""Content-addressed, encrypted storage: the :class:`Store` seam, the sealed store over the
node-local cache and S3, the envelope, keys, and the action cache."""

from offload.cache.factory import open_store
from offload.cache.sealed import SealedStore
from offload.cache.store import Store, file_id

__all__ = ["SealedStore", "Store", "file_id", "open_store"]
