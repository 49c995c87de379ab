"""Per-job logs: live while the job runs, kept after it ends."""

from __future__ import annotations

import time

from offload import JobStatus

from .conftest import Platform

SCRIPT = "for i in 1 2 3; do echo line $i; sleep 1; done; echo oops >&2"


def test_follow_yields_lines_while_the_job_runs(platform: Platform) -> None:
    job = platform.client.submit("offload/base", ["sh", "-c", SCRIPT], cache=False)
    seen: list[tuple[str, str, JobStatus]] = []
    for line in job.logs(follow=True):
        seen.append((line.stream, line.text, job.status()))
    assert [(s, t) for s, t, _ in seen] == [
        ("out", "line 1"),
        ("out", "line 2"),
        ("out", "line 3"),
        ("err", "oops"),
    ]
    assert seen[0][2] is JobStatus.RUNNING  # the first line arrived before the end
    assert job.result(timeout=10).ok
    # kept after the end, also for a fresh reader
    assert [line.text for line in job.logs()] == ["line 1", "line 2", "line 3", "oops"]


def test_cli_logs_follow(platform: Platform) -> None:
    job = platform.client.submit("offload/base", ["sh", "-c", SCRIPT], cache=False)
    t0 = time.monotonic()
    out = platform.cli("logs", "-f", job.id)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "line 1\nline 2\nline 3\n"
    assert out.stderr == "oops\n"
    assert time.monotonic() - t0 >= 2  # it waited for the job rather than returning early
    assert job.status() is JobStatus.SUCCEEDED


def test_long_and_unterminated_lines_are_kept(platform: Platform) -> None:
    script = "head -c 40000 /dev/zero | tr '\\0' x; echo; printf 'no newline at end'"
    job = platform.client.submit("offload/base", ["sh", "-c", script])
    assert job.result(timeout=60).ok
    lines = [line.text for line in job.logs()]
    assert "".join(lines[:-1]) == "x" * 40000
    assert lines[-1] == "no newline at end"
