"""A quick CLI: commands' modules are imported only when they run, `offload --help` imports
neither Celery, docker, boto3 nor pydantic, and `status` / `ls` nothing they do not use
(no Celery, docker or boto3, no progress bars, no other command's module); a command's
import leaves the garbage collector on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from offload.cli import COMMANDS, cli, load_all

HEAVY = ("celery", "kombu", "docker", "boto3", "botocore")
# What the read commands have no use for: uploads' and downloads' progress bars, the other
# commands' modules, the worker, the autoscaler, S3.
UNUSED_BY_READS = (
    "rich.progress",
    "rich.table",  # ls draws one on a terminal only (these probes write to a pipe)
    "offload.cli.getcmd",
    "offload.cli.submitcmd",
    "offload.cli.platform",
    "offload.cli.schedulecmd",
    "offload.worker",
    "offload.autoscaler",
    "offload.cache.s3",
)


def test_the_lazy_table_is_the_commands_own() -> None:
    load_all()
    assert set(cli.commands) == set(COMMANDS)
    for name, command in cli.commands.items():
        module, short = COMMANDS[name]
        assert command.callback is not None
        assert command.callback.__module__ == f"offload.cli.{module}", name
        assert command.get_short_help_str(limit=150) == short, name


def imported_by(*args: str, among: tuple[str, ...] = (*HEAVY, "pydantic")) -> list[str]:
    """Which of ``among`` (modules, or packages: any module under one counts) ``offload
    ARGS`` imports; asserts that the command leaves the garbage collector enabled."""
    probe = (
        "import gc, sys, json\n"
        f"sys.argv = ['offload', *{list(args)!r}]\n"
        "from offload.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"among = {list(among)!r}\n"
        "hit = [m for m in among if any(n == m or n.startswith(m + '.') for n in sys.modules)]\n"
        "print(json.dumps({'imported': hit, 'gc': gc.isenabled()}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["gc"] is True, args
    return list(got["imported"])


def test_help_imports_nothing_heavy() -> None:
    assert imported_by("--help") == []


def test_status_and_ls_import_no_celery_docker_or_boto3(
    redis_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OFFLOAD_REDIS_URL", f"{redis_server}/0")
    monkeypatch.setenv("OFFLOAD_HOME", str(tmp_path))
    assert imported_by("ls", "-n", "1") == ["pydantic"]  # settings and specs are models
    assert imported_by("status", "0" * 32) == ["pydantic"]
    for args in (("ls", "-n", "1"), ("status", "0" * 32)):
        assert imported_by(*args, among=UNUSED_BY_READS) == [], args
