"""Flower, as ``offload flower`` runs it: the same broker connection as every process, and
behind authentication whenever it listens beyond loopback.

Authentication is Flower's own: basic auth from ``OFFLOAD_FLOWER_AUTH`` (``user:password``,
handed to Flower in-process, never on a command line ``ps`` shows), or its OAuth
(``OFFLOAD_FLOWER_AUTH_PROVIDER`` + ``OFFLOAD_FLOWER_AUTH_EMAILS``, the ``FLOWER_OAUTH2_*``
variables as Flower documents them). With either, the pages and the API need it; Flower
leaves ``/metrics`` open, so :func:`run_flower` closes it too. ``/healthcheck`` stays open
(it says only "OK").
"""

from __future__ import annotations

from typing import Any

from offload.broker.connection import LOOPBACK, check
from offload.config import Settings
from offload.errors import ConfigError


def has_auth(settings: Settings) -> bool:
    return settings.flower_credentials() is not None or bool(
        settings.flower_auth_provider and settings.flower_auth_emails
    )


def check_flower_auth(settings: Settings) -> None:
    """Refuse to serve Flower beyond loopback without authentication."""
    if settings.flower_address in LOOPBACK or has_auth(settings):
        return
    raise ConfigError(
        f"Flower would listen on {settings.flower_address} (OFFLOAD_FLOWER_ADDRESS) without "
        "authentication: set OFFLOAD_FLOWER_AUTH=user:password (or Flower's OAuth: "
        "OFFLOAD_FLOWER_AUTH_PROVIDER and OFFLOAD_FLOWER_AUTH_EMAILS), or keep it on 127.0.0.1"
    )


def flower_argv(settings: Settings) -> list[str]:
    """Flower's arguments (given in-process: the password never shows in a process list)."""
    argv = [
        "flower",
        f"--address={settings.flower_address}",
        f"--port={settings.flower_port}",
        # a job that did not succeed shows why: "TaskFailed: oom_killed: killed for …"
        "--tasks_columns=name,uuid,state,exception,received,runtime,worker",
    ]
    credentials = settings.flower_credentials()
    if credentials is not None:
        argv.append(f"--basic-auth={credentials[0]}:{credentials[1]}")
    if settings.flower_auth_provider and settings.flower_auth_emails:
        argv += [
            f"--auth_provider={settings.flower_auth_provider}",
            f"--auth={settings.flower_auth_emails}",
        ]
    return argv


def _protect_metrics() -> None:
    """Make Flower's ``/metrics`` ask for the same authentication as its pages."""
    import tornado.web
    from flower.views.monitor import Metrics

    def prepare(self: Any) -> None:
        options = self.application.options
        if (options.basic_auth or options.auth) and not self.current_user:
            raise tornado.web.HTTPError(401)

    Metrics.prepare = prepare


def run_flower(settings: Settings) -> None:
    """Serve Flower until stopped; refuses an unauthenticated non-loopback address and a
    broker it cannot reach (a TLS failure names ``OFFLOAD_REDIS_CA``)."""
    from offload.broker.app import make_app

    check_flower_auth(settings)
    check(settings, unreachable_ok=True)
    _protect_metrics()
    make_app(settings).start(flower_argv(settings))
