"""How every Redis client of a process connects: redis-py, kombu (Celery) and Flower alike.

One place turns the settings into connection options, so TLS and credentials cannot differ
between clients:

* ``rediss://`` URLs verify the server's certificate (always) against ``OFFLOAD_REDIS_CA``
  (the system CAs when unset) and its host name; ``OFFLOAD_REDIS_CERT`` / ``OFFLOAD_REDIS_KEY``
  add a client certificate for mutual TLS. A failed verification names those settings;
* ``OFFLOAD_REDIS_USER`` / ``OFFLOAD_REDIS_PASSWORD`` (a Redis ACL user, ``offload acl``) go
  into the URL kombu connects with and into redis-py's options; credentials already in the
  URL are kept when these are unset; with none at all, the Redis ``offload up`` serves on
  this machine is reached as its admin user (:mod:`offload.broker.credentials`);
* a plain ``redis://`` URL to a host other than loopback logs a warning (:func:`warn_if_plain`);
* ``sentinel://h1:26379;sentinel://h2:26379/0`` (kombu's form: each Sentinel, ``;``-separated,
  the database on any of them) finds the master named ``OFFLOAD_REDIS_SENTINEL_MASTER``
  through the Sentinels, and finds the new one after a failover: kombu through its
  ``master_name`` transport option, redis-py through ``Sentinel.master_for``.
  ``OFFLOAD_REDIS_SENTINEL_TLS`` puts the Sentinels and the master behind TLS (the same CA,
  client certificate and host-name check as ``rediss://``); the master's credentials are
  ``OFFLOAD_REDIS_USER`` / ``_PASSWORD``, the Sentinels' ``OFFLOAD_REDIS_SENTINEL_USER`` /
  ``_PASSWORD``.

No Celery here: the data tier and the worker's runtime build their clients from this module.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator
from typing import Any
from urllib.parse import ParseResult, quote, urlparse, urlunparse

import redis
from redis.sentinel import Sentinel, SentinelManagedSSLConnection

from offload.broker.credentials import embedded_admin
from offload.config import Settings
from offload.errors import BrokerError, ConfigError

log = logging.getLogger(__name__)

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
TLS_SETTINGS = "OFFLOAD_REDIS_CA (the CA that signed the Redis server's certificate)"
SENTINEL = "sentinel://"
SENTINEL_PORT = 26379


def is_tls(settings: Settings) -> bool:
    if is_sentinel(settings):
        return settings.redis_sentinel_tls
    return settings.redis_url.startswith("rediss://")


def is_sentinel(settings: Settings) -> bool:
    return settings.redis_url.startswith(SENTINEL)


def sentinel_urls(settings: Settings) -> list[ParseResult]:
    """The Sentinels of a ``sentinel://`` URL, each checked (a :class:`ConfigError` naming
    OFFLOAD_REDIS_URL otherwise)."""
    urls = []
    for part in settings.redis_url.split(";"):
        url = urlparse(part.strip())
        try:
            port = url.port
        except ValueError:
            port = None
            url = url._replace(netloc="")
        if url.scheme != "sentinel" or not url.hostname or port == 0:
            raise ConfigError(
                f"OFFLOAD_REDIS_URL: {part.strip()!r} is not a Sentinel "
                "(sentinel://HOST[:PORT], several separated by ';')"
            )
        urls.append(url)
    return urls


def redis_db(settings: Settings) -> int:
    """The Redis database of ``OFFLOAD_REDIS_URL`` (for ``sentinel://``, the one any
    Sentinel's part names; they must agree)."""
    urls = sentinel_urls(settings) if is_sentinel(settings) else [urlparse(settings.redis_url)]
    named = {u.path.strip("/") for u in urls} - {""}
    if len(named) > 1:
        raise ConfigError(f"OFFLOAD_REDIS_URL names several databases: {sorted(named)}")
    path = named.pop() if named else "0"
    if not path.isdigit():
        raise ConfigError(f"OFFLOAD_REDIS_URL: database {path!r} is not a number")
    return int(path)


def _credentials(settings: Settings, url: ParseResult) -> tuple[str | None, str | None]:
    """The settings' user and password, else the URL's, else (for the Redis ``offload up``
    serves on this machine) its admin user's (:mod:`offload.broker.credentials`)."""
    secret = settings.redis_password.get_secret_value() if settings.redis_password else None
    user, password = settings.redis_user or url.username, secret or url.password
    if user is None and password is None:
        return embedded_admin(settings) or (None, None)
    return user, password


def _with_credentials(url: ParseResult, user: str | None, password: str | None) -> str:
    host = url.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{url.port}" if url.port else "")
    if user or password:
        netloc = f"{quote(user or '', safe='')}:{quote(password or '', safe='')}@{netloc}"
    return urlunparse(url._replace(netloc=netloc))


def broker_url(settings: Settings) -> str:
    """``settings.redis_url`` with ``redis_user`` / ``redis_password`` put in (kombu and
    Flower take credentials only from the URL). A ``sentinel://`` URL gets them, and the
    database, on every Sentinel's part (kombu reads both from the first)."""
    if is_sentinel(settings):
        urls = sentinel_urls(settings)
        user, password = _credentials(settings, urls[0])
        db = f"/{redis_db(settings)}"
        return ";".join(_with_credentials(u._replace(path=db), user, password) for u in urls)
    url = urlparse(settings.redis_url)
    if settings.redis_user is None and settings.redis_password is None:
        admin = embedded_admin(settings)  # None when the URL holds credentials: kept as given
        return settings.redis_url if admin is None else _with_credentials(url, *admin)
    return _with_credentials(url, *_credentials(settings, url))


def sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    """redis-py options for the connections to the Sentinels themselves (TLS, their
    credentials, short timeouts: a dead Sentinel must not hold up asking the next)."""
    opts: dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": 5}
    opts.update(liveness_options())
    tls = ssl_options(settings)
    if tls is not None:
        opts.update(tls, ssl=True, ssl_cert_reqs="required")
    if settings.redis_sentinel_user:
        opts["username"] = settings.redis_sentinel_user
    if settings.redis_sentinel_password is not None:
        opts["password"] = settings.redis_sentinel_password.get_secret_value()
    return opts


# A Redis host that dies without closing its connections (a crashed or partitioned host, a
# killed container: no RST comes back) must not hang a client: TCP keepalive probes find the
# dead peer within ~11 s (idle 5 s, then 3 probes 2 s apart), and a timeout bounds every
# blocking call. Without them a worker blocked on the old master after a failover consumed
# nothing until kombu's own check (~51 s), and a publish could wait forever.
KEEPALIVE: dict[int, int] = {
    socket.TCP_KEEPIDLE: 5,
    socket.TCP_KEEPINTVL: 2,
    socket.TCP_KEEPCNT: 3,
}


def liveness_options() -> dict[str, Any]:
    """redis-py keywords (and kombu transport options) that notice a dead Redis host."""
    return {"socket_keepalive": True, "socket_keepalive_options": dict(KEEPALIVE)}


def transport_options(settings: Settings) -> dict[str, Any]:
    """kombu transport options the connection needs: noticing a dead host (keepalive, a
    socket timeout above the BRPOP's 1 s, kombu's BRPOP check every 5 s), and for
    ``sentinel://`` the master's name and how to reach the Sentinels."""
    opts: dict[str, Any] = {
        **liveness_options(),
        "socket_timeout": 15,
        "socket_connect_timeout": 5,
        "health_check_interval": 5,
    }
    if is_sentinel(settings):
        opts["master_name"] = settings.redis_sentinel_master
        opts["sentinel_kwargs"] = sentinel_kwargs(settings)
    return opts


def ssl_options(settings: Settings) -> dict[str, Any] | None:
    """kombu's ``broker_use_ssl`` (redis-py's ``ssl_*`` keywords); None for ``redis://``."""
    if not is_tls(settings):
        return None
    opts: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True}
    if settings.redis_ca is not None:
        opts["ssl_ca_certs"] = str(settings.redis_ca)
    if settings.redis_cert is not None:
        opts["ssl_certfile"] = str(settings.redis_cert)
    if settings.redis_key is not None:
        opts["ssl_keyfile"] = str(settings.redis_key)
    return opts


def _tls_hint(message: str, exception: BaseException) -> str:
    if isinstance(exception, ssl.SSLError):
        message += f"; TLS to Redis failed: check {TLS_SETTINGS}, OFFLOAD_REDIS_CERT/_KEY, "
        message += "and that the host in OFFLOAD_REDIS_URL is named in the certificate"
    return message


class VerifiedSSLConnection(redis.SSLConnection):
    """redis-py's TLS connection whose verification failures name the settings to fix."""

    def _error_message(self, exception: BaseException) -> str:
        return _tls_hint(str(super()._error_message(exception)), exception)  # type: ignore[misc]


class VerifiedSentinelSSLConnection(SentinelManagedSSLConnection):
    """The same, for a master found through the Sentinels (it follows a failover)."""

    def _error_message(self, exception: BaseException) -> str:
        return _tls_hint(str(super()._error_message(exception)), exception)  # type: ignore[misc]


def redis_options(settings: Settings) -> dict[str, Any]:
    """redis-py keywords for ``Redis.from_url(broker_url(settings), **…)``."""
    opts: dict[str, Any] = {}
    tls = ssl_options(settings)
    if tls is not None:
        opts.update(tls)
        opts["ssl_cert_reqs"] = "required"
        opts["connection_class"] = VerifiedSSLConnection
    return opts


def redis_client(settings: Settings, **overrides: Any) -> redis.Redis:
    """A Redis client for records and logs, decoding to str, TLS-verified for rediss://."""
    options: dict[str, Any] = dict(
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=30,  # above the longest blocking read (XREAD BLOCK 5 s)
        health_check_interval=30,
        **liveness_options(),
    )
    options.update(redis_options(settings))
    options.update(overrides)
    if is_sentinel(settings):
        urls = sentinel_urls(settings)
        user, password = _credentials(settings, urls[0])
        if "connection_class" in options:  # TLS: a connection that follows the master
            options["connection_class"] = VerifiedSentinelSSLConnection
        sentinels = Sentinel(
            [(u.hostname or "", u.port or SENTINEL_PORT) for u in urls],
            sentinel_kwargs=sentinel_kwargs(settings),
        )
        return sentinels.master_for(
            settings.redis_sentinel_master,
            db=redis_db(settings),
            username=user,
            password=password,
            **options,
        )
    return redis.Redis.from_url(broker_url(settings), **options)


def warn_if_plain(settings: Settings) -> bool:
    """Log a warning when Redis is reached without TLS off this machine; True if it did."""
    if is_sentinel(settings):
        away = [u.hostname for u in sentinel_urls(settings) if u.hostname not in LOOPBACK]
        host = ", ".join(h for h in away if h)
        if not host or is_tls(settings):
            return False
    else:
        host = urlparse(settings.redis_url).hostname or ""
        if is_tls(settings) or host in LOOPBACK or settings.redis_url.startswith("unix:"):
            return False
    log.warning(
        "Redis at %s is reached over plain redis:// (no TLS): job specs, secrets and logs "
        "cross the network in clear; use rediss:// with OFFLOAD_REDIS_CA",
        host,
    )
    return True


def check(settings: Settings, *, unreachable_ok: bool = False) -> None:
    """Connect once, at a process's start: a TLS failure is a :class:`ConfigError` naming
    the settings (fail closed, never a retry loop), refused credentials too; an unreachable
    Redis a :class:`BrokerError`, or with ``unreachable_ok`` a warning (a worker started
    before its broker waits for it)."""
    warn_if_plain(settings)
    client = redis_client(settings, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        error = broker_error(exc)
        if isinstance(error, ConfigError):
            raise error from None
        if unreachable_ok and isinstance(exc, redis.ConnectionError):
            log.warning("Redis at %s does not answer yet: %s", _where(settings), exc)
            return
        raise BrokerError(f"cannot reach Redis at {_where(settings)}: {exc}") from None
    finally:
        client.close()


def broker_error(exc: redis.RedisError) -> BrokerError | ConfigError:
    """What a Redis failure means to the user: a TLS verification failure or refused
    credentials or permissions are configuration (exit 2, naming the settings; retrying
    cannot help); anything else is the broker failing (exit 4)."""
    text = str(exc)
    if isinstance(exc, redis.ConnectionError) and ("SSL" in text or "certificate" in text):
        if TLS_SETTINGS not in text:
            text += f"; check {TLS_SETTINGS}"
        return ConfigError(f"cannot reach Redis over TLS: {text}")
    if isinstance(exc, redis.AuthenticationError):
        return ConfigError(
            f"Redis refused the credentials (OFFLOAD_REDIS_USER / OFFLOAD_REDIS_PASSWORD): {text}"
        )
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return ConfigError(
            f"Redis refused a command to this process's user (OFFLOAD_REDIS_USER; its role's "
            f"rules: `offload acl`): {text}"
        )
    return BrokerError(f"broker (Redis) error: {text}")


def answers(settings: Settings, timeout: float = 2.0) -> bool:
    """Whether Redis answers now, reached as every process reaches it (TLS, user, Sentinel);
    one that answers but refuses the credentials is a :class:`ConfigError`."""
    client = redis_client(
        settings, socket_connect_timeout=min(1.0, timeout), socket_timeout=timeout
    )
    try:
        return bool(client.ping())
    except redis.AuthenticationError as exc:
        raise ConfigError(
            f"Redis at {settings.redis_url} answers but refuses these credentials ({exc}): "
            "set OFFLOAD_REDIS_USER / OFFLOAD_REDIS_PASSWORD to one of its users"
        ) from None
    except redis.RedisError:
        return False
    finally:
        client.close()


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Raise a Redis failure inside the block as :func:`broker_error` says."""
    try:
        yield
    except redis.RedisError as exc:
        raise broker_error(exc) from exc


def _where(settings: Settings) -> str:
    if is_sentinel(settings):
        hosts = [f"{u.hostname}:{u.port or SENTINEL_PORT}" for u in sentinel_urls(settings)]
        return f"Sentinel master {settings.redis_sentinel_master!r} of {', '.join(hosts)}"
    url = urlparse(settings.redis_url)
    return f"{url.scheme}://{url.hostname}:{url.port or 6379}"
