"""``offload cache stats|verify|gc`` through the real command, on a node's own cache."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from offload.cache.keys import init_key, load_key
from offload.errors import CacheError
from tests.conftest import Platform

MiB = 1024 * 1024


def stats(p: Platform) -> dict[str, Any]:
    res = p.cli("cache", "stats", "--json")
    assert res.returncode == 0, res.stderr
    out: dict[str, Any] = json.loads(res.stdout)
    return out


def blob_files(p: Platform) -> list[Path]:
    return sorted((p.settings.store_dir / "blobs").glob("*/*"))


def put_objects(p: Platform, sizes: list[int]) -> list[str]:
    store = p.client.store
    return [store.put_bytes(os.urandom(n)) for n in sizes]


def test_stats_counts_objects_and_bytes(private_platform: Platform) -> None:
    p = private_platform
    put_objects(p, [10, 1000, 100_000])
    s = stats(p)
    files = blob_files(p)
    assert s["count"] == 3 == len(files)
    assert s["bytes"] == sum(f.stat().st_size for f in files)
    assert s["budget"] is None
    assert (s["pinned"], s["held"], s["quarantined"]) == (0, 0, 0)
    assert s["dir"] == str(p.settings.store_dir)

    p.env["OFFLOAD_CACHE_BUDGET"] = "64m"
    assert stats(p)["budget"] == 64 * MiB
    human = p.cli("cache", "stats")
    assert human.returncode == 0, human.stderr
    assert "objects" in human.stdout and "quarantined" in human.stdout
    assert "uploads pending" in human.stdout


def test_verify_quarantines_a_damaged_blob(private_platform: Platform) -> None:
    p = private_platform
    oids = put_objects(p, [5000, 6000, 7000])
    ok = p.cli("cache", "verify")
    assert ok.returncode == 0, ok.stderr
    assert "3 ok" in ok.stdout

    key = load_key(p.settings.key_path)
    victim_oid = oids[1]
    name = key.name_of(victim_oid)
    path = p.settings.store_dir / "blobs" / name[:2] / name
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    bad = p.cli("cache", "verify")
    assert bad.returncode == 5, (bad.stdout, bad.stderr)
    assert f"quarantined {name}" in bad.stdout
    assert "2 ok, 1 bad" in bad.stdout
    assert "quarantined" in bad.stderr
    assert not path.exists()
    assert (p.settings.store_dir / "quarantine" / f"{name}.why").read_text().strip()

    s = stats(p)
    assert (s["count"], s["quarantined"]) == (2, 1)
    with pytest.raises(CacheError):
        p.client.read(victim_oid)
    assert len(p.client.read(oids[0])) == 5000

    again = p.cli("cache", "verify")
    assert again.returncode == 0, again.stderr


def test_verify_quarantines_a_misnamed_blob(private_platform: Platform) -> None:
    p = private_platform
    a, b = put_objects(p, [300, 400])
    key = load_key(p.settings.key_path)
    name_a, name_b = key.name_of(a), key.name_of(b)
    path_a = p.settings.store_dir / "blobs" / name_a[:2] / name_a
    path_b = p.settings.store_dir / "blobs" / name_b[:2] / name_b
    path_b.chmod(0o644)
    path_b.write_bytes(path_a.read_bytes())  # an intact envelope under another object's name

    res = p.cli("cache", "verify")
    assert res.returncode == 5, (res.stdout, res.stderr)
    assert f"quarantined {name_b}" in res.stdout
    assert name_a not in res.stdout
    assert stats(p)["quarantined"] == 1


def test_gc_with_a_budget_evicts_the_least_recently_used(private_platform: Platform) -> None:
    p = private_platform
    oids = put_objects(p, [4 * MiB, 4 * MiB, 4 * MiB])
    before = stats(p)
    assert before["count"] == 3

    res = p.cli("cache", "gc", "--budget", "6m")
    assert res.returncode == 0, res.stderr
    assert "freed" in res.stdout
    after = stats(p)
    assert after["count"] == 1
    assert after["bytes"] <= 6 * MiB
    freed = before["bytes"] - after["bytes"]
    assert f"freed {freed} bytes" in res.stdout
    assert len(p.client.read(oids[2])) == 4 * MiB  # the newest survives

    plain = p.cli("cache", "gc")  # no budget configured: only temp files are swept
    assert plain.returncode == 0, plain.stderr
    assert stats(p)["count"] == 1

    refused = p.cli("cache", "gc", "--budget", "lots")
    assert refused.returncode == 2
    assert "--budget" in refused.stderr


def test_verify_with_another_key_quarantines_nothing(
    private_platform: Platform, tmp_path: Path
) -> None:
    p = private_platform
    put_objects(p, [100, 200])
    other = init_key(tmp_path / "other-key")
    p.env["OFFLOAD_KEY_FILE"] = str(other)

    res = p.cli("cache", "verify")
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "sealed with key" in res.stderr
    assert "nothing was" in res.stderr
    s = stats(p)
    assert (s["count"], s["quarantined"]) == (2, 0)
    assert not list((p.settings.store_dir / "quarantine").iterdir())
