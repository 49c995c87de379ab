"""The demo, end to end on a real worker: one submission of the whole pipeline — fingerprint
jobs and the dedupe job over their future outputs — then its graph and its checked groups."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO, Platform


def test_demo_finds_the_near_duplicate_groups(platform: Platform) -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "examples" / "demo.py")],
        env={**platform.env, "COLUMNS": "120"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "found exactly the 3 near-duplicate groups and 3 distinct photos" in run.stdout
    assert "16 jobs in" in run.stdout
    assert "submitted 16 jobs (the array " in run.stdout and "before any result" in run.stdout
    assert "of 15 fingerprints and the dedupe)" in run.stdout
    graph = run.stdout.split("before any result:", 1)[1]
    root = graph.strip().splitlines()[0]
    assert "dedupe 15 photos" in root and "waiting" in root  # submitted before its inputs ran
    assert graph.count("fingerprint.json of fingerprint ") == 15
