"""What a job sees inside its container: its data, and the sandbox around it."""

from __future__ import annotations

import json
from pathlib import Path

from offload import JobStatus

from .conftest import Platform

PROBE = r"""
import json, os, socket
def attempt(fn):
    try:
        fn(); return "allowed"
    except OSError as exc:
        return type(exc).__name__ + ": " + str(exc)
def connect():
    s = socket.create_connection(("1.1.1.1", 53), timeout=2); s.close()
def write_root():
    open("/probe", "w").write("x")
def write_input():
    open("/offload/in/data", "a").write("x")
def write_tmp():
    open("/tmp/probe", "w").write("x")
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
report = {
    "uid": os.getuid(), "gid": os.getgid(),
    "interfaces": sorted(os.listdir("/sys/class/net")),
    "connect": attempt(connect),
    "write_root": attempt(write_root),
    "write_input": attempt(write_input),
    "write_tmp": attempt(write_tmp),
    "cap_eff": status["CapEff"].strip(),
    "no_new_privs": status["NoNewPrivs"].strip(),
    "pid1": open("/proc/1/cmdline").read().split("\0")[0],
    "input": open("/offload/in/data").read(),
    "params_file": json.load(open("/offload/params.json")),
    "env": {k: v for k, v in os.environ.items() if k.startswith("OFFLOAD_") or k == "GREETING"},
    "pids_max": open("/sys/fs/cgroup/pids/pids.max").read().strip()
        if os.path.exists("/sys/fs/cgroup/pids/pids.max") else open("/sys/fs/cgroup/pids.max").read().strip(),
}
os.makedirs("/offload/out", exist_ok=True)
json.dump(report, open("/offload/out/report.json", "w"))
"""


def run_probe(platform: Platform, tmp_path: Path, **kwargs: object) -> dict:  # type: ignore[type-arg]
    data = tmp_path / "data.txt"
    data.write_text("input bytes")
    job = platform.client.submit(
        "offload/python",
        ["python3", "-c", PROBE],
        inputs={"data": data},
        params={"size": 256, "mode": "fast", "opts": {"a": [1, 2]}},
        env={"GREETING": "hello"},
        cache=False,
        **kwargs,  # type: ignore[arg-type]
    )
    result = job.result(timeout=120)
    assert result.status is JobStatus.SUCCEEDED
    report: dict = json.loads(platform.client.read(result.outputs["report.json"]))  # type: ignore[type-arg]
    report["job_id"] = job.id
    return report


def test_the_sandbox_holds_by_default(platform: Platform, tmp_path: Path) -> None:
    r = run_probe(platform, tmp_path)
    assert (r["uid"], r["gid"]) == (65534, 65534)
    assert r["interfaces"] == ["lo"]
    assert r["connect"] != "allowed"
    assert "Read-only file system" in r["write_root"]
    assert r["write_input"] != "allowed"
    assert r["write_tmp"] == "allowed"
    assert int(r["cap_eff"], 16) == 0
    assert r["no_new_privs"] == "1"
    assert r["pid1"].endswith("docker-init")
    assert r["pids_max"] == "512"


def test_inputs_params_and_env_reach_the_job(platform: Platform, tmp_path: Path) -> None:
    r = run_probe(platform, tmp_path)
    assert r["input"] == "input bytes"
    assert r["params_file"] == {"size": 256, "mode": "fast", "opts": {"a": [1, 2]}}
    assert r["env"]["OFFLOAD_PARAM_SIZE"] == "256"
    assert r["env"]["OFFLOAD_PARAM_MODE"] == "fast"
    assert json.loads(r["env"]["OFFLOAD_PARAM_OPTS"]) == {"a": [1, 2]}
    assert r["env"]["OFFLOAD_JOB_ID"] == r["job_id"]
    assert r["env"]["GREETING"] == "hello"


def test_network_is_given_only_when_asked(platform: Platform, tmp_path: Path) -> None:
    r = run_probe(platform, tmp_path, network=True)
    assert "eth0" in r["interfaces"]
    assert "Read-only file system" in r["write_root"]
