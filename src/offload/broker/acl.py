"""Least-privilege Redis users, one per role: what ``offload acl`` prints and ``offload up``
loads.

Each role gets only the commands and the keys and channels it needs, from the key schema
(:mod:`offload.broker.keys`) and kombu's keys (:mod:`offload.broker.queues`):

============  =================================================================================
role          what it does in Redis
============  =================================================================================
producer      writes job records (``offload:*``) and publishes to the class and node queues;
              reads logs and timelines; sends Celery's ``task-sent`` events
worker        all of the producer's, plus consuming (``unacked*``, kombu's bindings), its
              control mailbox (``*.pidbox``) and events; the sweeper
autoscaler    the worker's keys (it runs the sweeper, which republishes and reads queues)
monitor       Flower: reads ``offload:*`` and the queues; writes only kombu's bindings, its
              event receiver's queue (``celeryev.*``) and its control reply mailbox; events
              and broadcasts
============  =================================================================================

No role may run a command of Redis's ``@dangerous`` or ``@admin`` categories (FLUSHALL,
FLUSHDB, CONFIG, MODULE, KEYS, DEBUG, SHUTDOWN, ACL, …) but INFO (the producer, to admit work
below the high-water mark; the autoscaler, for its gauges), nor touch a key outside its
patterns. Pub/sub channels are Celery's event and control channels of the cluster's
database only (kombu's ``/<db>.<exchange>`` topics). The scheduler submits jobs as a producer
does and holds its lock under ``offload:*``: it runs as the producer.

:func:`aclfile` is the ACL file ``offload up`` starts its ``redis-server`` with: the default
user off, ``offload-admin`` with all rights, and these roles, each with its password's SHA-256
(:mod:`offload.broker.credentials` keeps the passwords).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis

from offload.broker import keys
from offload.broker.connection import redis_db
from offload.broker.credentials import ADMIN, USER_PREFIX, user_name
from offload.broker.queues import UNACKED, UNACKED_INDEX
from offload.config import Settings

ROLES = ("producer", "worker", "autoscaler", "monitor")

# Every role: no server administration, no key enumeration, no flushing (CLIENT SETNAME and
# SETINFO are @connection: allowed).
_COMMON = ("-@all", "+@all", "-@dangerous", "-@admin")
_MONITOR = (
    "-@all", "+@read", "+@connection", "+@pubsub", "+@list", "+@set", "+@write",
    "+@transaction",  # kombu's channel wraps its binding writes in MULTI/EXEC (Flower's events)
    "+@scripting", "+time",  # and refreshes its bindings' deadlines by EVALSHA (calls TIME)
    "-@dangerous", "-@admin",
)  # fmt: skip


@dataclass(frozen=True)
class Role:
    name: str
    commands: tuple[str, ...]
    keys: tuple[str, ...]  # ~pattern (read-write) or %R~pattern (read only)
    channels: tuple[str, ...]

    @property
    def user(self) -> str:
        return USER_PREFIX + self.name

    def rules(self, password: str | None = None, *, hashed: bool = False) -> list[str]:
        """The ``ACL SETUSER <user>`` arguments; without a password, ``nopass`` is not given:
        the user has none until one is added (``>password``). ``hashed``: the password as
        its SHA-256 (``#hex``), for a file that must not hold it."""
        secret = [_password_rule(password, hashed)] if password else []
        return [
            "reset",
            "on",
            *secret,
            *self.keys,
            *(f"&{c}" for c in self.channels),
            *self.commands,
        ]


def _db(settings: Settings) -> int:
    return redis_db(settings)  # sentinel:// URLs too


def _queue_patterns(settings: Settings) -> list[str]:
    """Every class queue's priority lists (``<class>`` and ``<class>\\x06\\x16<step>``) and the
    node queues."""
    return [f"{c.name}*" for c in settings.classes] + [f"{keys.NODE_QUEUE_PREFIX}*"]


def roles(settings: Settings) -> dict[str, Role]:
    """The four roles for ``settings``' resource classes and Redis database."""
    db = _db(settings)
    offload_keys = f"{keys.PREFIX}:*"
    queues = _queue_patterns(settings)
    kombu = [UNACKED, UNACKED_INDEX, f"{UNACKED}_mutex", "_kombu.*"]
    mailbox = "*.pidbox*"  # <node>.celery.pidbox, <uuid>.reply.celery.pidbox, priority lists
    events = [f"/{db}.celeryev/*"]
    control = [f"/{db}.celery.pidbox"]  # PSUBSCRIBE patterns must match literally
    worker_keys = tuple(f"~{k}" for k in (offload_keys, *queues, *kombu, mailbox))
    return {
        # INFO (memory) is @dangerous, so named alone: the producer reads it to admit work below
        # the high-water mark (broker/room.py), the autoscaler for the offload_redis_* gauges
        "producer": Role(
            "producer",
            (*_COMMON, "+info"),
            tuple(f"~{k}" for k in (offload_keys, *queues, "_kombu.*", mailbox)),
            (*events, *control),
        ),
        "worker": Role("worker", _COMMON, worker_keys, (*events, *control)),
        "autoscaler": Role("autoscaler", (*_COMMON, "+info"), worker_keys, (*events, *control)),
        "monitor": Role(
            "monitor",
            _MONITOR,
            (
                f"%R~{offload_keys}",
                *(f"%R~{q}" for q in queues),
                f"%R~{UNACKED}*",
                "~_kombu.*",
                f"~{mailbox}",
                "~celeryev.*",  # its event receiver's queue: declared (LLEN), deleted at close
                f"~{UNACKED}_mutex",  # taken when a channel restores unacked messages (none)
            ),
            (*events, *control),
        ),
    }


def setuser_lines(settings: Settings, passwords: dict[str, str] | None = None) -> list[str]:
    """One ``ACL SETUSER`` command per role, as ``redis-cli`` takes them (patterns quoted)."""
    out = []
    for name, role in roles(settings).items():
        rules = role.rules((passwords or {}).get(name))
        out.append(" ".join(["ACL", "SETUSER", role.user, *(_quote(r) for r in rules)]))
    return out


def apply(client: redis.Redis, settings: Settings, passwords: dict[str, str]) -> None:
    """Create (or reset) the role users in the Redis ``client`` talks to."""
    for name, role in roles(settings).items():
        client.execute_command("ACL", "SETUSER", role.user, *role.rules(passwords[name]))


def aclfile(settings: Settings, passwords: dict[str, str]) -> str:
    """An ACL file (``redis-server --aclfile``): the default user off, ``offload-admin``
    (every command, key and channel) and each role's user, passwords as SHA-256 only."""
    lines = [  # the default user off and without a password, but with all rights: Redis 7.0
        # replays an AOF's MULTI/EXEC as the default user, checked against them (NOPERM: lost)
        "user default off resetpass ~* &* +@all",
        " ".join(["user", user_name(ADMIN), "reset", "on",
                  _password_rule(passwords[ADMIN], True), "~*", "&*", "+@all"]),
    ]  # fmt: skip
    for name, role in roles(settings).items():
        lines.append(" ".join(["user", role.user, *role.rules(passwords[name], hashed=True)]))
    return "\n".join(lines) + "\n"


def _password_rule(password: str, hashed: bool) -> str:
    return f"#{hashlib.sha256(password.encode()).hexdigest()}" if hashed else f">{password}"


def _quote(rule: str) -> str:
    return f'"{rule}"' if any(c in rule for c in " *?[") else rule
