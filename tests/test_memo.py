"""Memoized jobs: the same image digest, command, params, env and inputs → the earlier
outputs at once, without a container."""

from __future__ import annotations

import json
from pathlib import Path

import docker

from offload import JobStatus

from .conftest import Platform


def test_identical_job_returns_earlier_outputs_without_a_container(
    platform: Platform, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    data = tmp_path / "n.txt"
    data.write_text(str(tmp_path))  # unique per test run
    command = ["sh", "-c", "date +%s%N > /offload/out/stamp; cat /offload/in/n > /offload/out/n"]
    first = platform.client.submit("offload/base", command, inputs={"n": data}, params={"k": 1})
    done = first.result(timeout=60)
    assert done.cache_hit is None

    again = platform.client.submit("offload/base", command, inputs={"n": data}, params={"k": 1})
    hit = again.result(timeout=30)
    assert hit.cache_hit == first.id
    assert hit.outputs == done.outputs  # the same stamp: it did not run again
    statuses = [e.status for e in again.timeline()]
    assert JobStatus.RUNNING not in statuses
    assert statuses[-1] is JobStatus.SUCCEEDED

    changed = platform.client.submit("offload/base", command, inputs={"n": data}, params={"k": 2})
    assert changed.result(timeout=60).cache_hit is None

    opted_out = platform.client.submit(
        "offload/base", command, inputs={"n": data}, params={"k": 1}, cache=False
    )
    fresh = opted_out.result(timeout=60)
    assert fresh.cache_hit is None
    assert fresh.outputs["stamp"] != done.outputs["stamp"]


def test_a_memo_whose_outputs_are_gone_is_dropped_and_the_job_runs(
    platform: Platform, tmp_path: Path
) -> None:
    command = ["sh", "-c", f"echo {tmp_path.name} > /offload/out/x; date +%s%N >> /offload/out/x"]
    first = platform.client.submit("offload/base", command).result(timeout=60)
    platform.client.store.delete(first.outputs["x"])
    second = platform.client.submit("offload/base", command).result(timeout=60)
    assert second.cache_hit is None
    assert second.outputs["x"] != first.outputs["x"]
    third = platform.client.submit("offload/base", command).result(timeout=60)
    assert third.cache_hit is not None


def test_memoized_job_through_the_cli(platform: Platform, tmp_path: Path) -> None:
    args = ["submit", "offload/base", "--param", f"tag={tmp_path.name}", "--wait", "--",
            "sh", "-c", "echo computed; echo $OFFLOAD_PARAM_TAG > /offload/out/tag"]  # fmt: skip
    first = platform.cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "computed\n"
    second = platform.cli(*args)
    assert second.returncode == 0, second.stderr
    first_id = first.stderr.splitlines()[0]
    assert f"cached: outputs of job {first_id}" in second.stderr
    status = json.loads(platform.cli("status", "--json", second.stderr.splitlines()[0]).stdout)
    assert (
        status["outputs"]
        == json.loads(platform.cli("status", "--json", first_id).stdout)["outputs"]
    )
    no_cache = platform.cli(*args[:-4], "--no-cache", *args[-4:])
    assert no_cache.returncode == 0 and no_cache.stdout == "computed\n"
    assert "cached" not in no_cache.stderr
