"""offload/dedupe: group near-duplicate photos by their perceptual hashes.

Contract (offload job image):
  inputs  /offload/in/<any name>       each a fingerprint.json written by
                                       offload/fingerprint ({"phash": "<16 hex>", ...});
                                       the input's name is what the groups list
  param   threshold                    int 0..64, default 10: two photos are near
                                       duplicates when their 64-bit hashes differ
                                       in at most this many bits
                                       (/offload/params.json or OFFLOAD_PARAM_THRESHOLD)
  output  /offload/out/groups.json
          {"threshold": t,
           "groups":  [[name, ...], ...],   # size >= 2, each sorted, list sorted
           "singles": [name, ...],          # sorted
           "count": n,                      # fingerprints read
           "phash": {name: hex, ...}}
  stdout  the groups, one per line
  exit    0 ok; 2 an unreadable input or bad parameter; 1 anything else

Grouping is single linkage (union-find over every pair within the threshold),
so a chain a~b~c puts a, b and c in one group even when a and c are further
apart than the threshold.

Python 3 only. OFFLOAD_ROOT (default /offload) moves the whole layout.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

ROOT = os.environ.get("OFFLOAD_ROOT", "/offload")
IN_DIR = os.path.join(ROOT, "in")
OUT_DIR = os.path.join(ROOT, "out")
PARAMS_FILE = os.path.join(ROOT, "params.json")
DEFAULT_THRESHOLD = 10
BITS = 64


class InputError(Exception):
    """The job's inputs or parameters are unusable (exit code 2)."""


def load_params() -> dict[str, Any]:
    try:
        with open(PARAMS_FILE, encoding="utf-8") as fh:
            params = json.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {PARAMS_FILE}: {exc}") from exc
    if not isinstance(params, dict):
        raise InputError(f"{PARAMS_FILE} must hold a JSON object, not {type(params).__name__}")
    return params


def threshold_param(params: dict[str, Any]) -> int:
    raw: Any = params.get("threshold")
    if raw is None:
        raw = os.environ.get("OFFLOAD_PARAM_THRESHOLD", DEFAULT_THRESHOLD)
    if isinstance(raw, bool):
        raise InputError(f"threshold must be an integer, not {raw!r}")
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise InputError(f"threshold must be an integer, not {raw!r}") from None
    if isinstance(raw, float) and raw != value:
        raise InputError(f"threshold must be an integer, not {raw!r}")
    if not 0 <= value <= BITS:
        raise InputError(f"threshold must be between 0 and {BITS}, not {value}")
    return value


def read_fingerprints() -> dict[str, int]:
    """{input name: hash} for every regular file under the input folder."""
    if not os.path.isdir(IN_DIR):
        return {}
    hashes: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(IN_DIR):
        dirnames.sort()
        for fname in sorted(filenames):
            path = os.path.join(dirpath, fname)
            name = os.path.relpath(path, IN_DIR)
            if not os.path.isfile(path):
                continue
            try:
                with open(path, encoding="utf-8") as fh:
                    doc = json.load(fh)
            except (OSError, ValueError) as exc:
                raise InputError(f"input {name!r} is not a fingerprint.json: {exc}") from exc
            value = doc.get("phash") if isinstance(doc, dict) else None
            if not isinstance(value, str) or len(value) != BITS // 4:
                raise InputError(
                    f'input {name!r} is not a fingerprint.json: no 16-hex-digit "phash" field'
                )
            try:
                hashes[name] = int(value, 16)
            except ValueError:
                raise InputError(f"input {name!r}: phash {value!r} is not hexadecimal") from None
    return hashes


def group(hashes: dict[str, int], threshold: int) -> tuple[list[list[str]], list[str]]:
    names = sorted(hashes)
    parent = list(range(len(names)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    values = [hashes[n] for n in names]
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if bin(values[i] ^ values[j]).count("1") <= threshold:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    clusters: dict[int, list[str]] = {}
    for i, name in enumerate(names):
        clusters.setdefault(find(i), []).append(name)
    groups = sorted(sorted(c) for c in clusters.values() if len(c) >= 2)
    singles = sorted(c[0] for c in clusters.values() if len(c) == 1)
    return groups, singles


def main() -> int:
    threshold = threshold_param(load_params())
    hashes = read_fingerprints()
    groups, singles = group(hashes, threshold)
    result = {
        "threshold": threshold,
        "groups": groups,
        "singles": singles,
        "count": len(hashes),
        "phash": {name: f"{h:016x}" for name, h in sorted(hashes.items())},
    }
    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, "groups.json"), "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1, sort_keys=True)
        fh.write("\n")
    print(
        f"dedupe: {len(hashes)} fingerprints, threshold {threshold}: "
        f"{len(groups)} group(s) of near duplicates, {len(singles)} single(s)"
    )
    for k, members in enumerate(groups, 1):
        print(f"group {k}: {' '.join(members)}")
    if singles:
        print(f"singles: {' '.join(singles)}")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InputError as exc:
        print(f"dedupe: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
