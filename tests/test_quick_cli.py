"""A quick CLI: commands' modules are imported only when they run, `offload --help` imports
neither Celery, docker, boto3 nor pydantic, and `status` / `ls` no Celery, docker or boto3."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from offload.cli import COMMANDS, cli, load_all

HEAVY = ("celery", "kombu", "docker", "boto3", "botocore")


def test_the_lazy_table_is_the_commands_own() -> None:
    load_all()
    assert set(cli.commands) == set(COMMANDS)
    for name, command in cli.commands.items():
        module, short = COMMANDS[name]
        assert command.callback is not None
        assert command.callback.__module__ == f"offload.cli.{module}", name
        assert command.get_short_help_str(limit=150) == short, name


def imported_by(*args: str) -> list[str]:
    probe = (
        "import sys, json\n"
        f"sys.argv = ['offload', *{list(args)!r}]\n"
        "from offload.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print(json.dumps([m for m in {[*HEAVY, 'pydantic']!r} if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return list(json.loads(out.stdout.splitlines()[-1]))


def test_help_imports_nothing_heavy() -> None:
    assert imported_by("--help") == []


def test_status_and_ls_import_no_celery_docker_or_boto3(
    redis_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OFFLOAD_REDIS_URL", f"{redis_server}/0")
    monkeypatch.setenv("OFFLOAD_HOME", str(tmp_path))
    assert imported_by("ls", "-n", "1") == ["pydantic"]  # settings and specs are models
    assert imported_by("status", "0" * 32) == ["pydantic"]
