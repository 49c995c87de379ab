"""Chunk leases: which worker runs a chunk of a batched array now (key ``offload:chunk:<id>``).

A chunk (:mod:`offload.spec.arrays`) is one message carrying up to ``batch`` items, run one
after another in one warm container (:mod:`offload.worker.chunks`). Each item is an ordinary
job with its own attempt and lease; the chunk's lease says the *container* is still owned:

* the node's reaper (:mod:`offload.worker.reaper`) removes a warm container and its folder
  once its chunk's lease is gone or names another run — between two items no item's record
  names the container, the chunk's lease does;
* the sweeper (:mod:`offload.broker.sweeper`) leaves alone the items of a chunk whose message
  was delivered long ago while its lease lives: they wait their turn in the chunk; once the
  lease is gone (its worker died) they are published again, one message each.

The value is ``<node>:<run>``, ``run`` a number the worker picks for this delivery of the
chunk (a redelivered chunk is another run); PX ``lease_ttl``, renewed every quarter of it.
"""

from __future__ import annotations

import redis

from offload.broker import keys, scripts
from offload.broker.connection import translated

# Set or extend a lease only while it is this run's (or nobody's).
_RENEW = """
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class ChunkLeases:
    def __init__(self, client: redis.Redis, lease_ttl: float) -> None:
        self.r = client
        self.ttl_ms = max(1, int(lease_ttl * 1000))
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(scripts.RELEASE_LOCK)

    @staticmethod
    def owner(node: str, run: int) -> str:
        return f"{node}:{run}"

    def hold(self, chunk: str, node: str, run: int) -> bool:
        """Take or extend the lease of ``chunk`` for this run; False if another run holds it."""
        with translated():
            value = self.owner(node, run)
            return bool(self._renew(keys=[keys.chunk(chunk)], args=[value, self.ttl_ms]))

    def release(self, chunk: str, node: str, run: int) -> None:
        with translated():
            self._release(keys=[keys.chunk(chunk)], args=[self.owner(node, run)])

    def holder(self, chunk: str) -> str | None:
        """``<node>:<run>`` of the run holding ``chunk`` now; None when none does."""
        with translated():
            value = self.r.get(keys.chunk(chunk))
        return None if value is None else str(value)

    def live(self, chunks: list[str]) -> set[str]:
        """Which of ``chunks`` a live run holds (one round trip)."""
        if not chunks:
            return set()
        with translated():
            pipe = self.r.pipeline(transaction=False)
            for chunk in chunks:
                pipe.exists(keys.chunk(chunk))
            return {c for c, n in zip(chunks, pipe.execute(), strict=True) if n}


__all__ = ["ChunkLeases"]
