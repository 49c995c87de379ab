"""kombu's Sentinel transport, made to survive its master's death (``sentinel://`` URLs).

When the master dies, Celery closes its broker connection twice: the first close fails on
the dead master (a connection error, ignored) after the transport has let go of its
connection details, and the second rebuilds the channel's pool from them — an
``AttributeError`` that Celery takes for an unrecoverable error, and the worker stops.
Here the second attempt is a connection error like the first, so Celery reconnects (to
the master the Sentinels name now).
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.redis import SentinelChannel, SentinelTransport


class Channel(SentinelChannel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection is closed")
        return super()._connparams(asynchronous)


class Transport(SentinelTransport):
    Channel = Channel


def install() -> None:
    """Make ``sentinel://`` URLs use this transport (kombu resolves its alias by name)."""
    TRANSPORT_ALIASES["sentinel"] = f"{__name__}:Transport"
