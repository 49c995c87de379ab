"""Large parameters: refused at submit over the spec limit; over the environment limit,
given through /offload/params.json only (issue 8, item 3).

Before: a 200 KB parameter passed validation and failed the job as ``exit_code 1`` with
``exec /sbin/docker-init: argument list too long`` (it was put in the container's environment).
"""

from __future__ import annotations

import json

import pytest
import redis

from offload.errors import SpecError
from offload.spec import MAX_ENV_PARAM, MAX_SPEC_VALUES, JobSpec
from offload.worker.staging import job_env

from ..conftest import Platform


def test_a_200_kb_parameter_is_refused_at_submit_and_nothing_is_queued(
    private_platform: Platform,
) -> None:
    with pytest.raises(SpecError) as info:
        private_platform.client.submit("offload/base", ["true"], params={"blob": "x" * 200_000})
    assert info.value.field == "params.blob"
    assert "64 KiB" in info.value.message and "inputs" in info.value.message
    r = redis.Redis.from_url(private_platform.settings.redis_url)
    assert r.dbsize() == 0  # no record, no message


def test_the_cli_refuses_it_with_exit_code_2(private_platform: Platform) -> None:
    # 100 KB: over the spec limit, under the kernel's 128 KiB limit for one argument
    out = private_platform.cli("submit", "offload/base", "--param", "blob=" + "x" * 100_000)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "params.blob" in out.stderr and "inputs" in out.stderr
    assert "xxxxxxxxxx" not in out.stderr  # the value is not echoed back
    r = redis.Redis.from_url(private_platform.settings.redis_url)
    assert r.dbsize() == 0


def test_only_small_params_become_environment_variables() -> None:
    spec = JobSpec.create(
        image="offload/base",
        params={"small": "s", "edge": "e" * MAX_ENV_PARAM, "big": "b" * (MAX_ENV_PARAM + 1)},
    )
    env = job_env("j1", spec)
    assert env["OFFLOAD_PARAM_SMALL"] == "s"
    assert env["OFFLOAD_PARAM_EDGE"] == "e" * MAX_ENV_PARAM
    assert "OFFLOAD_PARAM_BIG" not in env


def test_a_40_kb_parameter_reaches_the_job_through_params_json_only(platform: Platform) -> None:
    blob = "x" * 40_000
    assert MAX_ENV_PARAM < len(blob) < MAX_SPEC_VALUES
    job = platform.client.submit(
        "offload/base",
        ["sh", "-c", "cp /offload/params.json /offload/out/params.json; env > /offload/out/env"],
        params={"blob": blob, "rows": [1, 2, 3], "small": "hello"},
        cache=False,
    )
    result = job.result(timeout=120)
    params = json.loads(platform.client.read(result.outputs["params.json"]))
    assert params == {"blob": blob, "rows": [1, 2, 3], "small": "hello"}
    env = platform.client.read(result.outputs["env"]).decode()
    assert "OFFLOAD_PARAM_BLOB" not in env and blob not in env
    assert "OFFLOAD_PARAM_SMALL=hello\n" in env and "OFFLOAD_PARAM_ROWS=[1, 2, 3]\n" in env
