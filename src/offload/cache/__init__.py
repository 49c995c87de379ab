"""Content-addressed, encrypted storage: the :class:`Store` seam, the sealed store over the
node-local cache and S3, the envelope, keys, and the action cache.

Names are imported on first use (PEP 562): a module of the package that needs no boto3 (the
archive's store, the keys) does not import it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from offload.cache.factory import open_store
    from offload.cache.sealed import SealedStore
    from offload.cache.store import Store, file_id

_WHERE = {
    "open_store": "offload.cache.factory",
    "SealedStore": "offload.cache.sealed",
    "Store": "offload.cache.store",
    "file_id": "offload.cache.store",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'offload.cache' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


__all__ = ["SealedStore", "Store", "file_id", "open_store"]
