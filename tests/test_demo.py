"""The demo, end to end on a real worker: fingerprint jobs, then dedupe over their outputs."""

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
