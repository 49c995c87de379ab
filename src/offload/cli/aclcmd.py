"""``offload acl``: the least-privilege Redis users of each role (:mod:`offload.broker.acl`)."""

from __future__ import annotations

import secrets

import click

from offload.broker.acl import ROLES, roles, setuser_lines
from offload.cli import cli, handle_errors, settings_of


@cli.command()
@click.option(
    "--passwords",
    is_flag=True,
    help="Give each user a fresh random password (printed as OFFLOAD_REDIS_USER/_PASSWORD "
    "lines per role after the commands).",
)
@click.option("--role", type=click.Choice(ROLES), multiple=True, help="Only these roles.")
@click.pass_context
@handle_errors
def acl(ctx: click.Context, passwords: bool, role: tuple[str, ...]) -> None:
    """Print the Redis ACL users for each role (producer, worker, autoscaler, monitor).

    One `ACL SETUSER` line per role, for `redis-cli` (or an ACL file without the leading
    `ACL SETUSER`): only the commands, keys and channels that role needs; no FLUSHALL,
    CONFIG, MODULE, KEYS or other administrative command. Load them as an administrator,
    give each process its role's user (OFFLOAD_REDIS_USER / OFFLOAD_REDIS_PASSWORD), then
    turn the default user off (`ACL SETUSER default off`).
    """
    settings = settings_of(ctx)
    wanted = role or ROLES
    secret = {r: secrets.token_urlsafe(24) for r in wanted} if passwords else {}
    lines = setuser_lines(settings, secret)
    for name, line in zip(roles(settings), lines, strict=True):
        if name in wanted:
            click.echo(line)
    for name in wanted:
        if name in secret:
            user = roles(settings)[name].user
            click.echo(f"# {name}: OFFLOAD_REDIS_USER={user} OFFLOAD_REDIS_PASSWORD={secret[name]}")
