"""Secrets sealed from producer to container: the job sees them; Redis (every key, streams
included), its append-only file, Flower and `offload status` hold only ciphertext or ``***``.
The sealing and signing themselves: unit tests at the end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import redis

from offload.cache import jobseal
from offload.cache.keys import ClusterKey
from offload.errors import ForgedJob
from offload.spec import JobSpec

from .conftest import Platform, free_port, make_platform, wait_for
from .faults.conftest import RedisProcess
from .test_flower import api_tasks, fetch

JOB = "a" * 32


@pytest.fixture
def aof_platform(
    tmp_path: Path, docker_client: docker.DockerClient
) -> Iterator[tuple[Platform, RedisProcess]]:
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisProcess(free_port(), folder)
    server.start()
    p = make_platform(server.url, tmp_path / "home", OFFLOAD_WORKER_CLASSES="cpu-small")
    try:
        yield p, server
    finally:
        p.kill_worker()
        server.stop()


def start_flower(p: Platform) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**p.env, "OFFLOAD_FLOWER_PORT": str(port), "FLOWER_UNAUTHENTICATED_API": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "offload", "flower"],
        env=env,
        stdout=(p.settings.home / "flower.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, (p.settings.home / "flower.log").read_text()[-3000:]
        try:
            return fetch(f"{base}/healthcheck") == "OK"
        except OSError:
            return False

    wait_for(healthy, 30, "Flower")
    return proc, base


def everything_in(r: redis.Redis) -> bytes:
    """Every key's name, DUMP and values (strings, hashes, lists, sets, zsets, streams)."""
    out = []
    for name in r.scan_iter(count=1000):
        out.append(name)
        out.append(r.dump(name) or b"")
        kind = r.type(name)
        if kind == b"string":
            out.append(r.get(name) or b"")
        elif kind == b"hash":
            out += [k + b"=" + v for k, v in r.hgetall(name).items()]
        elif kind == b"list":
            out += r.lrange(name, 0, -1)
        elif kind == b"set":
            out += list(r.smembers(name))
        elif kind == b"zset":
            out += r.zrange(name, 0, -1)
        elif kind == b"stream":
            for _, fields in r.xrange(name):
                out += [k + b"=" + v for k, v in fields.items()]
    return b"\n".join(out)


def test_the_job_sees_its_secrets_and_nothing_else_holds_them(
    aof_platform: tuple[Platform, RedisProcess],
) -> None:
    p, server = aof_platform
    token = f"tok-{uuid.uuid4().hex}"
    flower, base = start_flower(p)
    try:
        p.start_worker()
        client = p.client
        script = (
            'printf %s "$OFFLOAD_PARAM_TOKEN" > /offload/out/param; '
            "cp /offload/params.json /offload/out/params.json"
        )
        job = client.submit(
            "offload/base",
            ["sh", "-c", script],
            params={"plain": "visible"},
            secrets={"token": token},
            name="sealed-probe",
        )
        result = job.result(timeout=120)
        assert client.read(result.outputs["param"]).decode() == token
        assert json.loads(client.read(result.outputs["params.json"]))["token"] == token
        wait_for(lambda: job.id in api_tasks(base), 20, "Flower to list the job")
        shown = {
            "flower /api/tasks": fetch(f"{base}/api/tasks"),
            "flower task info": fetch(f"{base}/api/task/info/{job.id}"),
            "offload status": p.cli("status", job.id).stdout,
        }
    finally:
        os.killpg(flower.pid, signal.SIGTERM)
        flower.wait(10)
    stored = everything_in(redis.Redis.from_url(p.settings.redis_url))
    aof = b"".join(f.read_bytes() for f in server.folder.rglob("*") if f.is_file())
    assert b"sealed-probe" in aof, "the AOF is on and was read"
    texts = {"redis": stored, "aof": aof, **{k: v.encode() for k, v in shown.items()}}
    for where, text in texts.items():
        assert token.encode() not in text, f"the secret param is in clear in {where}"
    assert b"sealed-probe" in stored  # the scan did reach the job's record


# -- sealing and signing, unit -------------------------------------------------------------------

SPEC = JobSpec.create(
    image="offload/base",
    command=["sh", "-c", "true"],
    params={"n": 1, "token": "s3cret-param"},
    env={"MODE": "fast", "DB_PASSWORD": "s3cret-env"},
    secret=frozenset({"token", "DB_PASSWORD"}),
    retry={"on": ["exit_code", "timeout", "oom_killed"], "never_exit_codes": [3, 9, 7]},
    labels={"b": "1", "a": "2"},
)


def test_sealed_spec_holds_no_secret_and_opens_for_its_job_only() -> None:
    key = ClusterKey.generate()
    wire = jobseal.seal_job(key, JOB, SPEC).encode()
    assert "s3cret" not in wire
    back = JobSpec.decode(wire)
    assert back.params["token"] == back.env["DB_PASSWORD"] == "***"
    opened = jobseal.open_job(key, JOB, back)
    assert opened.params == SPEC.params and opened.env == SPEC.env
    with pytest.raises(ForgedJob, match="signature"):
        jobseal.open_job(key, "b" * 32, back)  # replayed under another id
    with pytest.raises(ForgedJob, match="signature"):
        jobseal.open_job(ClusterKey.generate(), JOB, back)  # another cluster's key
    with pytest.raises(ForgedJob, match="not signed"):
        jobseal.open_job(key, JOB, SPEC)


@pytest.mark.parametrize(
    "change",
    [
        {"image": "offload/python"},
        {"command": ("sh", "-c", "rm -rf /offload/in")},
        {"params": {"n": 2, "token": "***"}},
        {"env": {"MODE": "slow", "DB_PASSWORD": "***"}},
        {"inputs": {"x": "sha256:" + "1" * 64}},
        {"network": True},
        {"secret": frozenset({"token"})},
    ],
)
def test_any_change_to_a_signed_spec_is_refused(change: dict[str, object]) -> None:
    key = ClusterKey.generate()
    sealed = JobSpec.decode(jobseal.seal_job(key, JOB, SPEC).encode())
    with pytest.raises(ForgedJob):
        jobseal.open_job(key, JOB, sealed.model_copy(update=change))


def test_a_box_from_another_job_does_not_open() -> None:
    key = ClusterKey.generate()
    other = "c" * 32
    mine, theirs = jobseal.seal_job(key, JOB, SPEC), jobseal.seal_job(key, other, SPEC)
    assert mine.seal is not None and theirs.seal is not None
    swapped = jobseal.sign(key, JOB, mine.model_copy(update={"seal": theirs.seal}))
    with pytest.raises(ForgedJob, match="do not open"):
        jobseal.open_job(key, JOB, swapped)


def test_the_signature_is_the_same_in_another_process() -> None:
    """Sets (secret names, retry reasons) iterate in a per-process order: canonical anyway."""
    key = ClusterKey.generate()
    code = (
        "import sys; from offload.cache import jobseal; from offload.cache.keys import ClusterKey;"
        "from tests.test_sealed_secrets import SPEC, JOB;"
        f"print(jobseal.seal_job(ClusterKey(bytes.fromhex('{key.secret.hex()}')), JOB, SPEC)"
        ".encode())"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        assert jobseal.open_job(key, JOB, JobSpec.decode(out)).params["token"] == "s3cret-param"


def test_resolved_inputs_keep_the_signed_references() -> None:
    key = ClusterKey.generate()
    ref = "output:" + "d" * 32 + "/out.txt"
    spec = jobseal.seal_job(key, JOB, SPEC.model_copy(update={"inputs": {"x": ref}}))
    oid = "sha256:" + "2" * 64
    resolved = JobSpec.decode(spec.resolved({ref: oid}).encode())
    assert resolved.inputs == {"x": oid}
    assert resolved.seal is not None and resolved.seal.refs == {"x": ref}
    jobseal.open_job(key, JOB, resolved)
    unref = resolved.model_copy(update={"seal": resolved.seal.model_copy(update={"refs": {}})})
    with pytest.raises(ForgedJob):
        jobseal.open_job(key, JOB, unref)  # a resolved id passed off as submitted
