"""Data in and out by location, end to end through a real worker and the Docker engine:
URL inputs fetched by the node (not the submitter), outputs delivered to the real S3 server,
every output of a map downloaded in bulk, an interrupted download resumed."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload import JobStatus
from offload.broker.status import Reason
from offload.errors import SpecError
from offload.producer import download as dl

from .conftest import Platform, make_platform
from .httpserver import HTTPFiles
from .s3server import DUMMY_ENV, MotoServer


@pytest.fixture
def s3_user_platform(
    redis_server: str, s3_server: MotoServer, docker_client: object, tmp_path: Path
) -> Iterator[tuple[Platform, str]]:
    """A worker of its own whose user-data S3 is the test server, and a user bucket."""
    p = make_platform(
        redis_server, tmp_path / "home", **DUMMY_ENV,
        OFFLOAD_DELIVER_ENDPOINT_URL=s3_server.endpoint_url, OFFLOAD_WORKER_SLOTS="2",
        OFFLOAD_FETCH_BACKOFF="0.05", OFFLOAD_DELIVER_ATTEMPTS="1",
    )  # fmt: skip
    bucket = s3_server.create_bucket(f"user-{uuid.uuid4().hex[:8]}")
    yield p, bucket
    p.kill_worker()
    s3_server.remove_bucket(bucket)


def test_url_inputs_are_fetched_by_the_node_and_s3_outputs_delivered(
    s3_user_platform: tuple[Platform, str], s3_server: MotoServer, http_files: HTTPFiles
) -> None:
    p, bucket = s3_user_platform
    http_files.files["/words.txt"] = b"pear\nfig\n"
    url = http_files.url("/words.txt").replace("http://", "http://ann:pw-123@") + "?token=t0k"
    http_files.auth["/words.txt"] = "ann:pw-123"
    command = ["sh", "-c", "sort /offload/in/w > /offload/out/sorted.txt; cat /offload/in/n"]
    job = p.client.submit(
        "offload/base", command, name="sorter",
        inputs={"w": url, "n": f"s3://{bucket}/in/n.txt"},
        deliver=f"s3://{bucket}/out/{{name}}/{{input.w.stem}}-{{output}}",
    )  # fmt: skip
    # submit fetched nothing: the URL was not asked for, the S3 object does not exist yet
    assert http_files.requests["/words.txt"] == 0
    s3_server.client().put_object(Bucket=bucket, Key="in/n.txt", Body=b"from s3\n")
    rec = job.record()
    assert rec.spec.inputs["w"].startswith("http://***@127.0.0.1:")  # credentials sealed
    assert "pw-123" not in json.dumps(rec.view) and "t0k" not in rec.spec.encode()
    p.start_worker()
    result = job.result(timeout=90)
    assert result.ok, (result.reason, result.message)
    assert [line.text for line in job.logs()] == ["from s3"]
    rec = job.record()
    assert rec.fetched == {
        "w": "sha256:" + hashlib.sha256(b"pear\nfig\n").hexdigest(),
        "n": "sha256:" + hashlib.sha256(b"from s3\n").hexdigest(),
    }
    where = f"s3://{bucket}/out/sorter/words-sorted.txt"
    assert rec.delivered == {"sorted.txt": where} and rec.deliver_error == ""
    got = s3_server.client().get_object(Bucket=bucket, Key="out/sorter/words-sorted.txt")
    assert got["Body"].read() == b"fig\npear\n"  # plaintext: the user's own bucket
    shown = p.cli("status", job.id)
    assert where in shown.stdout and "pw-123" not in shown.stdout

    # the same content again: fetched as a 304, memo hit on content, delivered again
    again = p.client.submit("offload/base", command, name="sorter2",
                            inputs={"w": url, "n": f"s3://{bucket}/in/n.txt"},
                            deliver=f"s3://{bucket}/again/")  # fmt: skip
    hit = again.result(timeout=60)
    assert hit.cache_hit == job.id
    assert http_files.sent["/words.txt"] == len(b"pear\nfig\n")  # the body crossed once
    assert again.record().delivered == {"sorted.txt": f"s3://{bucket}/again/sorted.txt"}

    # a missing URL fails input_missing naming it (no credentials shown); a bad bucket for
    # delivery leaves the job succeeded, the failure shown
    missing = p.client.submit(
        "offload/base",
        ["true"],
        inputs={"gone": http_files.url("/gone.bin").replace("http://", "http://ann:pw-123@")},
    )
    bad = p.client.submit("offload/base", ["sh", "-c", "echo x > /offload/out/x"],
                          deliver="s3://no-such-bucket-here/x/")  # fmt: skip
    failed = missing.result(timeout=60, raise_on_failure=False)
    assert failed.status is JobStatus.FAILED and failed.reason is Reason.INPUT_MISSING
    assert "HTTP 404" in (failed.message or "") and "/gone.bin" in (failed.message or "")
    assert "pw-123" not in (failed.message or "")
    done = bad.result(timeout=60)
    assert done.ok and "not delivered" in bad.record().deliver_error
    assert "delivery failed" in p.cli("status", bad.id).stdout


def test_bad_uris_and_templates_are_refused_at_submit(platform: Platform, tmp_path: Path) -> None:
    c = platform.client
    cases = {
        "inputs.d": dict(inputs={"d": "ftp://host/x"}),
        "inputs.p": dict(inputs={"p": "https://host/x#sha256=abc"}),
        "deliver": dict(deliver="s3://bucket/{nope}/"),
    }
    for field, options in cases.items():
        with pytest.raises(SpecError) as err:
            c.submit("offload/base", ["true"], **options)
        assert err.value.field == field
    with pytest.raises(SpecError, match="index"):
        c.submit("offload/base", ["true"], deliver="s3://b/{index}/")
    bad = platform.cli("submit", "offload/base", "--input", "d=http:/127.0.0.1/x", "--", "true")
    assert bad.returncode == 2 and "inputs.d" in bad.stderr
    out = platform.cli("submit", "offload/base", "--deliver", "/tmp/x/", "--", "true")
    assert out.returncode == 2 and "deliver" in out.stderr


def test_every_output_of_a_map_downloaded_and_a_broken_download_resumed(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = tmp_path.name
    script = (f"for i in $(seq 1 250); do echo {tag}-$OFFLOAD_TASK_INDEX-$i "
              "> /offload/out/f$i.txt; done")  # fmt: skip
    jobs = platform.client.map("offload/base", ["sh", "-c", script], each=[{}] * 4)
    assert all(r.ok for r in platform.client.wait(jobs, timeout=120))
    first = tmp_path / "all"
    report = platform.client.download_outputs(jobs, first)
    assert len(report.written) == 1000
    assert (first / "3" / "f250.txt").read_text() == f"{tag}-3-250\n"

    # Ctrl-C after 300 files: what was written is whole, nothing half-written is left
    real, calls = dl.fetch_one, [0]

    def interrupted(store, item):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] > 300:
            raise KeyboardInterrupt
        return real(store, item)

    monkeypatch.setattr(dl, "fetch_one", interrupted)
    broken = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        platform.client.download_outputs(jobs, broken, "{index}-{output}", workers=4)
    monkeypatch.setattr(dl, "fetch_one", real)
    kept = list(broken.iterdir())
    assert 300 <= len(kept) < 1000 and not [f for f in kept if f.name.startswith(".")]
    again = platform.client.download_outputs(jobs, broken, "{index}-{output}", workers=4)
    assert len(again.skipped) == len(kept) and len(again.written) == 1000 - len(kept)
    assert (broken / "2-f7.txt").read_text() == f"{tag}-2-7\n"

    # through the CLI: an output that cannot be had is named and the exit code is not 0
    one = jobs[0].id
    ok = platform.cli("get", one, "--to", str(tmp_path / "one"))
    assert ok.returncode == 0, ok.stderr
    assert len(os.listdir(tmp_path / "one")) == 250
    oid = jobs[1].record().outputs["f9.txt"]
    platform.client.store.delete(oid)
    bad = platform.cli("get", jobs[1].id, "--to", str(tmp_path / "two"))
    assert bad.returncode != 0 and f"{jobs[1].id}/f9.txt" in bad.stderr
    assert len(os.listdir(tmp_path / "two")) == 249
