#!/usr/bin/env python3
"""offload end-to-end demo: find near-duplicate photos with two job types.

1. Makes a small photo collection with Pillow: six distinct synthetic pictures
   (gradients, shapes, noise, stripes, a checkerboard, rings; 256-640 px) and,
   for three of them, near-duplicates: a resized copy, a JPEG recompressed at
   quality 40 and a copy brightened by 25 % -- 15 photos in all.
2. Submits the whole pipeline at once, before anything has run: one
   ``offload/fingerprint`` job per photo (each computes a 64-bit perceptual hash
   of its photo) and one ``offload/dedupe`` job whose inputs are those jobs'
   future ``fingerprint.json`` outputs (``job.output(...)``): it waits, and is
   queued by the platform the moment the last fingerprint succeeds; it groups
   the photos whose hashes are within ``--threshold`` bits. Prints the graph.
3. Waits for the dedupe job only, then prints the fingerprints and the groups
   and checks them against the copies it made.

Exit status: 0 when every job succeeded and the groups are exactly the known
near-duplicate sets; 1 otherwise.

Needs a running platform (``offload up``) and the job images
(``infra/setup.sh`` builds them):  ``.venv/bin/python examples/demo.py``
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from PIL import Image, ImageDraw, ImageEnhance, ImageFilter
    from rich.console import Console
    from rich.table import Table
    from rich.tree import Tree
except ImportError as exc:  # pragma: no cover - environment problem
    sys.exit(f"demo: {exc.name} is missing: pip install -e '.[dev]' (or run infra/setup.sh)")

FINGERPRINT_IMAGE = "offload/fingerprint"
DEDUPE_IMAGE = "offload/dedupe"
JPEG_QUALITY = 90  # for the "camera" photos; the recompressed copies use 40

# Pillow >= 9.1 has Image.Resampling; older releases keep the names on Image.
_RESAMPLING: Any = getattr(Image, "Resampling", Image)
LANCZOS = _RESAMPLING.LANCZOS
BILINEAR = _RESAMPLING.BILINEAR
BICUBIC = _RESAMPLING.BICUBIC


# ---------------------------------------------------------------------------
# The photo collection
# ---------------------------------------------------------------------------

RGB = tuple[int, int, int]


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    t = min(1.0, max(0.0, t))
    return (
        round(a[0] + (b[0] - a[0]) * t),
        round(a[1] + (b[1] - a[1]) * t),
        round(a[2] + (b[2] - a[2]) * t),
    )


def _gradient(size: tuple[int, int], c0: RGB, c1: RGB, angle_deg: float) -> Image.Image:
    """A linear gradient from c0 to c1 along angle_deg (0 = left to right)."""
    w, h = size
    dx, dy = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    proj = [x * dx + y * dy for x in (0, w) for y in (0, h)]
    lo, hi = min(proj), max(proj)
    sw, sh = 64, max(1, round(64 * h / w))  # drawn small, scaled up: smooth anyway
    img = Image.new("RGB", (sw, sh))
    img.putdata(
        [
            _mix(c0, c1, ((x + 0.5) * w / sw * dx + (y + 0.5) * h / sh * dy - lo) / (hi - lo))
            for y in range(sh)
            for x in range(sw)
        ]
    )
    return img.resize(size, BILINEAR)


def sunset(size: tuple[int, int], rng: random.Random) -> Image.Image:
    """Vertical gradient sky, a sun, a ridge of mountains."""
    w, h = size
    img = _gradient(size, (255, 170, 60), (70, 20, 110), 90)
    d = ImageDraw.Draw(img)
    r = h // 6
    cx, cy = int(w * 0.68), int(h * 0.42)
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(255, 235, 150))
    ridge = [(0, h)]
    ridge += [(i * w // 8, int(h * (0.55 + 0.2 * rng.random()))) for i in range(9)]
    ridge.append((w, h))
    d.polygon(ridge, fill=(30, 25, 45))
    return img


def shapes(size: tuple[int, int], rng: random.Random) -> Image.Image:
    """Random overlapping ellipses and rectangles."""
    w, h = size
    img = Image.new("RGB", size, (200, 205, 210))
    d = ImageDraw.Draw(img)
    for _ in range(7):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        x1, y1 = x0 + rng.randrange(w // 6, w // 2), y0 + rng.randrange(h // 6, h // 2)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        draw = d.ellipse if rng.random() < 0.5 else d.rectangle
        draw([x0, y0, x1, y1], fill=colour)
    return img


def clouds(size: tuple[int, int], rng: random.Random) -> Image.Image:
    """Smooth value noise: a coarse random grid, scaled up bicubically, blurred."""
    cells = (6, 5)
    grid = Image.new("L", cells)
    grid.putdata([rng.randrange(256) for _ in range(cells[0] * cells[1])])
    grey = grid.resize(size, BICUBIC)
    lo, hi = (30, 60, 140), (200, 210, 230)
    bands = [grey.point(lambda v, i=i: int(lo[i] + (hi[i] - lo[i]) * v / 255)) for i in range(3)]
    return Image.merge("RGB", bands).filter(ImageFilter.GaussianBlur(2))


def stripes(size: tuple[int, int], rng: random.Random) -> Image.Image:
    """Slanted dark stripes over a diagonal green-yellow gradient."""
    w, h = size
    img = _gradient(size, (20, 120, 60), (230, 230, 120), 30)
    d = ImageDraw.Draw(img)
    period = w // 5
    for k in range(-h // period - 2, w // period + 2):
        x = k * period
        d.polygon(
            [(x, 0), (x + period // 2, 0), (x + period // 2 + h // 2, h), (x + h // 2, h)],
            fill=(40, 40, 90),
        )
    return img


def checker(size: tuple[int, int], rng: random.Random) -> Image.Image:
    """A 5x5 checkerboard with a red disc."""
    w, h = size
    n = 5
    img = Image.new("RGB", size)
    d = ImageDraw.Draw(img)
    cw, ch = w / n, h / n
    for i in range(n):
        for j in range(n):
            colour = (230, 230, 230) if (i + j) % 2 else (25, 25, 25)
            d.rectangle([i * cw, j * ch, (i + 1) * cw, (j + 1) * ch], fill=colour)
    r = min(w, h) // 5
    d.ellipse([w // 3 - r, h // 2 - r, w // 3 + r, h // 2 + r], fill=(200, 40, 40))
    return img


def rings(size: tuple[int, int], rng: random.Random) -> Image.Image:
    """Concentric rings off-centre and a white triangle."""
    w, h = size
    img = Image.new("RGB", size, (10, 10, 30))
    d = ImageDraw.Draw(img)
    cx, cy = int(w * 0.4), int(h * 0.6)
    step = max(w, h) // 7
    for k, r in enumerate(range(int(math.hypot(w, h)), 0, -step)):
        colour = (240, 200, 80) if k % 2 else (60, 90, 200)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    d.polygon([(w * 0.75, h * 0.1), (w * 0.95, h * 0.45), (w * 0.6, h * 0.4)], fill=(250, 250, 250))
    return img


Painter = Callable[[tuple[int, int], random.Random], Image.Image]

# name, painter, size, whether the demo makes near-duplicates of it
ORIGINALS: list[tuple[str, Painter, tuple[int, int], bool]] = [
    ("sunset", sunset, (640, 427), True),
    ("shapes", shapes, (512, 512), True),
    ("clouds", clouds, (600, 400), True),
    ("stripes", stripes, (480, 360), False),
    ("checker", checker, (400, 400), False),
    ("rings", rings, (256, 320), False),
]


def _jpeg(img: Image.Image, path: Path, quality: int) -> None:
    img.convert("RGB").save(path, "JPEG", quality=quality)


def near_duplicates(img: Image.Image) -> dict[str, Image.Image]:
    """The three edits the fingerprint must see through."""
    w, h = img.size
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=40)
    return {
        "small": img.resize((max(1, round(w * 0.55)), max(1, round(h * 0.55))), LANCZOS),
        "q40": Image.open(io.BytesIO(buf.getvalue())),
        "bright": ImageEnhance.Brightness(img).enhance(1.25),
    }


@dataclass(frozen=True)
class Photo:
    name: str  # file name, also the input name in the dedupe job
    path: Path
    original: str  # name of the photo this is a copy of (itself for originals)
    edit: str  # "original", "small", "q40", "bright"
    size: tuple[int, int]


def make_photos(directory: Path, seed: int = 2024) -> list[Photo]:
    """Write the collection as JPEG files into directory; deterministic for a seed."""
    directory.mkdir(parents=True, exist_ok=True)
    photos: list[Photo] = []
    for index, (kind, paint, size, with_copies) in enumerate(ORIGINALS):
        img = paint(size, random.Random(seed * 100 + index))
        name = f"{kind}.jpg"
        _jpeg(img, directory / name, JPEG_QUALITY)
        photos.append(Photo(name, directory / name, name, "original", img.size))
        if not with_copies:
            continue
        for edit, copy in near_duplicates(img).items():
            copy_name = f"{kind}-{edit}.jpg"
            _jpeg(copy, directory / copy_name, 40 if edit == "q40" else JPEG_QUALITY)
            photos.append(Photo(copy_name, directory / copy_name, name, edit, copy.size))
    return photos


def expected_groups(photos: list[Photo]) -> tuple[list[list[str]], list[str]]:
    """The groups and singles a correct dedupe reports for this collection."""
    by_original: dict[str, list[str]] = {}
    for p in photos:
        by_original.setdefault(p.original, []).append(p.name)
    groups = sorted(sorted(names) for names in by_original.values() if len(names) > 1)
    singles = sorted(names[0] for names in by_original.values() if len(names) == 1)
    return groups, singles


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


def _describe_failure(exc: BaseException) -> str:
    res = getattr(exc, "result", None)
    if res is None:
        return f"{type(exc).__name__}: {exc}"
    parts = [str(getattr(res, "status", "failed"))]
    if getattr(res, "reason", None):
        parts.append(str(res.reason))
    if getattr(res, "exit_code", None) not in (None, 0):
        parts.append(f"exit code {res.exit_code}")
    if getattr(res, "message", None):
        parts.append(str(res.message))
    return ", ".join(parts)


def _hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def pipeline_tree(dedupe: Any, jobs: dict[str, Any]) -> Tree:
    """The graph as submitted: the dedupe job and, under it, the jobs it waits for."""
    rec = dedupe.record()
    tree = Tree(f"[bold]{rec.name}[/]  {dedupe.id}  [yellow]{rec.status}[/]")
    for name, job in jobs.items():
        tree.add(f"fingerprint.json of [bold]fingerprint {name}[/]  {job.id}  {job.status()}")
    return tree


def run(args: argparse.Namespace, console: Console) -> int:
    from offload import Client, JobFailed, OffloadError

    workdir: Path | None = None
    if args.photos:
        photo_dir = Path(args.photos)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="offload-demo-"))
        photo_dir = workdir
    try:
        photos = make_photos(photo_dir)
        console.print(
            f"[bold]offload demo[/]: {len(photos)} photos in {photo_dir} "
            f"({sum(p.edit == 'original' for p in photos)} pictures, "
            f"{sum(p.edit != 'original' for p in photos)} near-duplicate copies)"
        )
        client = Client()
        started = time.monotonic()
        photo_ids = {p.name: client.put(p.path) for p in photos}  # uploaded (sealed) once
    finally:
        if workdir is not None:  # inputs are stored now; the files can go
            shutil.rmtree(workdir, ignore_errors=True)

    # 1. the whole pipeline in one go: an array of fingerprint jobs, one per photo, and the
    #    dedupe job over their future outputs (it waits for them; nothing here waits)
    submitted, submitted_at = time.monotonic(), time.time()
    array = client.map(
        FINGERPRINT_IMAGE,
        each=[
            {
                "inputs": {"photo": photo_ids[p.name]},
                "params": {"name": p.name},
                "name": f"fingerprint {p.name}",
            }
            for p in photos
        ],
        cpu=0.5,
        memory="256m",
        timeout=120,
    )
    jobs = {p.name: job for p, job in zip(photos, array, strict=True)}
    dedupe = client.submit(
        DEDUPE_IMAGE,
        inputs={name: job.output("fingerprint.json") for name, job in jobs.items()},
        params={"threshold": args.threshold},
        name=f"dedupe {len(jobs)} photos",
        cpu=0.5,
        memory="256m",
        timeout=120,
    )
    console.print(
        f"submitted {len(jobs) + 1} jobs (the array {array.id} of {len(array)} fingerprints "
        f"and the dedupe) in {time.monotonic() - submitted:.1f} s, before any result:"
    )
    console.print(pipeline_tree(dedupe, jobs))

    failures: list[tuple[str, str, str]] = []  # (what, job id, why)
    fingerprints: dict[str, dict[str, Any]] = {}
    groups: list[list[str]] = []
    singles: list[str] = []
    with console.status("waiting for the pipeline (the dedupe job waits for its inputs)…"):
        try:
            res = dedupe.result(timeout=args.timeout)
            report = json.loads(client.read(res.outputs["groups.json"]))
            groups = [sorted(g) for g in report.get("groups", [])]
            singles = sorted(report.get("singles", []))
        except JobFailed as exc:
            failures.append(("dedupe", dedupe.id, _describe_failure(exc)))
        except KeyError:
            failures.append(("dedupe", dedupe.id, "no groups.json output"))
        except (OffloadError, TimeoutError, ValueError) as exc:
            failures.append(("dedupe", dedupe.id, _describe_failure(exc)))
        for name, job in jobs.items():  # ended by now, unless the dedupe job timed out
            try:
                res = job.result(timeout=5)
                fingerprints[name] = json.loads(client.read(res.outputs["fingerprint.json"]))
            except JobFailed as exc:
                failures.insert(0, (f"fingerprint {name}", job.id, _describe_failure(exc)))
            except KeyError:
                failures.insert(0, (f"fingerprint {name}", job.id, "no fingerprint.json output"))
            except (OffloadError, TimeoutError, ValueError) as exc:
                failures.insert(0, (f"fingerprint {name}", job.id, _describe_failure(exc)))
    fp_done = [job.record().finished_at or 0 for job in jobs.values()]
    dedupe_rec = dedupe.record()
    fingerprint_s = max(fp_done) - submitted_at if all(fp_done) else 0.0
    dedupe_s = (
        dedupe_rec.finished_at - dedupe_rec.started_at
        if dedupe_rec.finished_at and dedupe_rec.started_at
        else 0.0
    )
    total_s = time.monotonic() - started

    table = Table(
        title=f"fingerprints ({fingerprint_s:.1f} s); bits off = Hamming distance to the original",
        title_justify="left",
    )
    table.add_column("photo", no_wrap=True)
    table.add_column("copy of", no_wrap=True)
    table.add_column("size", no_wrap=True, justify="right")
    table.add_column("phash", no_wrap=True)
    table.add_column("bits off", no_wrap=True, justify="right")
    for p in photos:
        fp = fingerprints.get(p.name)
        if fp is None:
            table.add_row(p.name, "", "", "[red]failed[/]", "")
            continue
        size = f"{fp.get('width')}x{fp.get('height')}"
        copy_of, off = "", ""
        if p.edit != "original":
            copy_of = p.original
            if p.original in fingerprints:
                off = str(_hamming(fp["phash"], fingerprints[p.original]["phash"]))
        table.add_row(p.name, copy_of, size, fp["phash"], off)
    console.print(table)

    # 3. the groups, checked against the copies we made
    want_groups, want_singles = expected_groups(photos)
    groups_ok = not failures and sorted(groups) == want_groups and singles == want_singles
    if not failures:
        table = Table(
            title=f"near-duplicate groups, threshold {args.threshold} bits ({dedupe_s:.1f} s)",
            title_justify="left",
        )
        table.add_column("#", justify="right")
        table.add_column("photos")
        table.add_column("expected", justify="center")
        for k, members in enumerate(sorted(groups), 1):
            mark = "[green]yes[/]" if members in want_groups else "[red]no[/]"
            table.add_row(str(k), ", ".join(members), mark)
        for members in want_groups:
            if members not in groups:
                table.add_row("-", ", ".join(members), "[red]missing[/]")
        table.add_row("", f"[dim]singles: {', '.join(singles) or 'none'}[/]", "")
        console.print(table)

    for what, job_id, why in failures:
        console.print(f"[red]failed[/]: {what} (job {job_id}): {why}")
        console.print(f"        see its logs: [bold]offload logs {job_id}[/]")
    if failures:
        verdict = f"[red]FAILED[/]: {len(failures)} job(s) did not succeed"
    elif groups_ok:
        verdict = (
            f"[green]OK[/]: found exactly the {len(want_groups)} near-duplicate groups "
            f"and {len(want_singles)} distinct photos"
        )
    else:
        verdict = (
            f"[red]WRONG[/]: expected groups {want_groups} and singles {want_singles}, "
            f"got groups {groups} and singles {singles}"
        )
    console.print(verdict)
    console.print(
        f"{len(jobs) + 1} jobs in {total_s:.1f} s "
        f"(fingerprints {fingerprint_s:.1f} s, dedupe {dedupe_s:.1f} s)"
    )
    flower = os.environ.get("OFFLOAD_FLOWER_URL", "http://127.0.0.1:5555")
    console.print(f"Flower (task dashboard): {flower}")
    console.print(f"the pipeline:            offload status {dedupe.id}")
    console.print(f"the fingerprints array:  offload status {array.id}")
    console.print(f"follow a job's logs:     offload logs {dedupe.id}")
    return 0 if groups_ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--photos",
        metavar="DIR",
        help="write the photos to DIR and keep them (default: a temporary folder)",
    )
    parser.add_argument(
        "--threshold", type=int, default=10, help="max Hamming distance of near duplicates"
    )
    parser.add_argument(
        "--timeout", type=float, default=180, help="seconds to wait for each job's result"
    )
    parser.add_argument(
        "--make-photos-only",
        action="store_true",
        help="only write the photos (needs --photos) and exit; no platform needed",
    )
    args = parser.parse_args(argv)
    console = Console()
    if args.make_photos_only:
        if not args.photos:
            parser.error("--make-photos-only needs --photos DIR")
        for p in make_photos(Path(args.photos)):
            print(f"{p.name}\t{p.original}\t{p.edit}\t{p.size[0]}x{p.size[1]}")
        return 0
    try:
        from offload import OffloadError
    except ImportError:
        console.print("[red]demo[/]: the offload package is not installed; run infra/setup.sh")
        return 1
    try:
        return run(args, console)
    except OffloadError as exc:
        console.print(f"[red]demo failed[/]: {type(exc).__name__}: {exc}")
        console.print("is the platform running? start it with [bold]offload up[/]")
        return 1


if __name__ == "__main__":
    sys.exit(main())
