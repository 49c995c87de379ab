"""Outputs: every regular file under /offload/out, named by its path; nothing else."""

from __future__ import annotations

import hashlib

import pytest

from offload import JobFailed

from .conftest import Platform


def test_every_regular_file_becomes_an_output_named_by_its_path(platform: Platform) -> None:
    script = (
        "mkdir -p /offload/out/a/b && printf one > /offload/out/top.txt && "
        "printf two > /offload/out/a/b/deep.bin && printf one > /offload/out/a/same.txt && "
        "mkdir /offload/out/empty"
    )
    result = platform.client.submit("offload/base", ["sh", "-c", script]).result(timeout=60)
    one = "sha256:" + hashlib.sha256(b"one").hexdigest()
    two = "sha256:" + hashlib.sha256(b"two").hexdigest()
    assert result.outputs == {"top.txt": one, "a/b/deep.bin": two, "a/same.txt": one}
    assert platform.client.read(two) == b"two"


@pytest.mark.parametrize(
    ("script", "culprit"),
    [
        ("ln -s /etc/passwd /offload/out/passwd", "'passwd' is a symbolic link"),
        ("ln -s .. /offload/out/up", "'up' is a symbolic link (to '..')"),
        (
            "mkdir /offload/out/d && ln -s ../../.. /offload/out/d/escape",
            "'d/escape' is a symbolic",
        ),
        ("mkfifo /offload/out/pipe", "'pipe' is not a regular file"),
    ],
)
def test_links_escapes_and_special_files_are_refused(
    platform: Platform, script: str, culprit: str
) -> None:
    job = platform.client.submit(
        "offload/base", ["sh", "-c", f"echo fine > /offload/out/ok.txt; {script}"]
    )
    with pytest.raises(JobFailed) as info:
        job.result(timeout=60)
    assert info.value.result.reason == "output_rejected"
    assert culprit in (info.value.result.message or "")
    assert info.value.result.outputs == {}
