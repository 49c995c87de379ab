"""offload/fingerprint: a 64-bit perceptual hash (pHash) of one photo.

Contract (offload job image):
  input   /offload/in/photo            any image Pillow reads (if no input is named
                                       "photo" and there is exactly one input, that one)
  param   name                         optional label echoed into the output
                                       (/offload/params.json or OFFLOAD_PARAM_NAME)
  output  /offload/out/fingerprint.json
          {"name": str, "phash": "<16 hex digits>", "width": int, "height": int}
  stdout  one line: "fingerprint <name> <phash>"
  exit    0 ok; 2 input missing / not an image / bad parameter; 1 anything else

The hash: the picture (EXIF orientation applied, alpha flattened on white) is
reduced to 32x32 grey levels; a 2-D DCT-II (pure Python, only the low
frequencies are computed) gives its frequency content; the 64 lowest AC
coefficients in zig-zag order (the DC term, i.e. overall brightness, is left
out) are each compared with their median, one bit each, first coefficient in
the most significant bit. Resizing, JPEG recompression and brightness changes
move few bits; different pictures differ in about half of them.

Python 3 and Pillow only. OFFLOAD_ROOT (default /offload) moves the whole
layout, for running the script outside a container.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

ROOT = os.environ.get("OFFLOAD_ROOT", "/offload")
IN_DIR = os.path.join(ROOT, "in")
OUT_DIR = os.path.join(ROOT, "out")
PARAMS_FILE = os.path.join(ROOT, "params.json")

SIZE = 32  # side of the reduced picture
BITS = 64  # hash length


class InputError(Exception):
    """The job's input or parameters are unusable (exit code 2)."""


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


def param(params: dict[str, Any], name: str, default: Any = None) -> Any:
    if name in params and params[name] is not None:
        return params[name]
    return os.environ.get("OFFLOAD_PARAM_" + name.upper(), default)


def find_input() -> str:
    path = os.path.join(IN_DIR, "photo")
    if os.path.isfile(path):
        return path
    try:
        names = sorted(n for n in os.listdir(IN_DIR) if os.path.isfile(os.path.join(IN_DIR, n)))
    except OSError:
        names = []
    if len(names) == 1:
        return os.path.join(IN_DIR, names[0])
    found = ", ".join(names) if names else "no inputs at all"
    raise InputError(f'input "photo" is missing: expected {path} (found {found})')


def _zigzag(count: int) -> list[tuple[int, int]]:
    """The first `count` (u, v) frequency pairs in zig-zag order, DC excluded."""
    order: list[tuple[int, int]] = []
    d = 1
    while len(order) < count:
        pairs = [(u, d - u) for u in range(d + 1)]
        order.extend(pairs if d % 2 else pairs[::-1])
        d += 1
    return order[:count]


COEFFS = _zigzag(BITS)
MAXF = max(max(u, v) for u, v in COEFFS) + 1  # frequencies needed per axis (11)
# Orthonormal DCT-II basis: COS[k][x] = c(k) * cos(pi * (2x + 1) * k / (2 * SIZE)).
COS = [
    [
        (math.sqrt(1.0 / SIZE) if k == 0 else math.sqrt(2.0 / SIZE))
        * math.cos(math.pi * (2 * x + 1) * k / (2 * SIZE))
        for x in range(SIZE)
    ]
    for k in range(MAXF)
]


def phash(pixels: list[float]) -> int:
    """pHash of SIZE*SIZE grey levels (row-major)."""
    rows = [pixels[y * SIZE : (y + 1) * SIZE] for y in range(SIZE)]
    # Horizontal pass: row_f[y][u] = sum_x rows[y][x] * COS[u][x]
    row_f = [
        [sum(p * c for p, c in zip(row, COS[u], strict=True)) for u in range(MAXF)] for row in rows
    ]
    needed = set(COEFFS)
    coef: dict[tuple[int, int], float] = {}
    for u, v in needed:
        cv = COS[v]
        coef[(u, v)] = sum(row_f[y][u] * cv[y] for y in range(SIZE))
    values = [coef[uv] for uv in COEFFS]
    ordered = sorted(values)
    median = (ordered[BITS // 2 - 1] + ordered[BITS // 2]) / 2.0
    h = 0
    for value in values:
        h = (h << 1) | (1 if value > median else 0)
    return h


def reduce_image(path: str) -> tuple[list[float], int, int]:
    """Open the photo; return (grey SIZE*SIZE pixels, width, height)."""
    try:
        from PIL import Image, ImageOps
    except ImportError as exc:  # pragma: no cover - the image ships Pillow
        raise RuntimeError("Pillow is not installed") from exc
    Image.MAX_IMAGE_PIXELS = 200_000_000
    try:
        img: Image.Image = Image.open(path)
        width, height = img.size
        orientation = img.getexif().get(0x0112, 1)
        if orientation in (5, 6, 7, 8):  # rotated by 90 degrees
            width, height = height, width
        # JPEG: let the decoder scale down (by DCT) for speed; still >= 2x our size.
        img.draft("RGB", (SIZE * 4, SIZE * 4))
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            flat.alpha_composite(rgba)
            img = flat
        img = img.convert("L")
        resample = getattr(Image, "Resampling", Image).LANCZOS
        small = img.resize((SIZE, SIZE), resample, reducing_gap=3.0)
        pixels = [float(p) for p in small.tobytes()]
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # Pillow raises UnidentifiedImageError (an OSError) for non-images and
        # OSError / SyntaxError / ValueError for truncated or corrupt files.
        raise InputError(f"{os.path.basename(path)} is not a readable image: {exc}") from exc
    if width <= 0 or height <= 0:
        raise InputError(f"{os.path.basename(path)} has no pixels")
    return pixels, width, height


def main() -> int:
    params = load_params()
    path = find_input()
    name = param(params, "name", None)
    if name is None or name == "":
        name = os.path.basename(path)
    if not isinstance(name, str):
        name = str(name)
    pixels, width, height = reduce_image(path)
    hex_hash = f"{phash(pixels):0{BITS // 4}x}"
    result = {"name": name, "phash": hex_hash, "width": width, "height": height}
    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, "fingerprint.json"), "w", encoding="utf-8") as fh:
        json.dump(result, fh, sort_keys=True)
        fh.write("\n")
    print(f"fingerprint {name} {hex_hash}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InputError as exc:
        print(f"fingerprint: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
