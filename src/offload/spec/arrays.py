"""Array ids and the ids of their items (no I/O).

An array (:meth:`offload.producer.client.Client.map`) has an id of 24 hex digits. Its item
``i`` is a job whose id is the array's id followed by ``i`` in 8 hex digits: 32 hex digits,
a job id like any other. So an item is found from its array and index, and its array from
the item's id, with nothing stored per item to map one to the other; an array holds at
most 2^32 items. ``ARRAY:INDEX`` names an item on the command line.

A **chunk** is a run of consecutive items of a batched array (``map(..., batch=K)``) that one
message carries, run one after another in one warm container
(:mod:`offload.worker.chunks`). Its id is the array's id, ``x``, its first index and ``x``,
its end (exclusive), each in 8 hex digits: the items it holds are read from its id alone.

An item's **spec** is the array's *common* spec (checked, sealed and signed once) with the
item's own *fields* over it (:func:`item_spec`): ``params``, ``inputs``, ``env`` and
``labels`` merged into the common ones, any other field replacing the common one, ``task``
set to ``(index, count)``. The fields are what the array's item table holds for the item,
as JSON the producer signed (:mod:`offload.cache.jobseal`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from offload.errors import SpecError
from offload.spec import JobSpec, Seal, build_spec

ARRAY_ID_RE = re.compile(r"^[0-9a-f]{24}\Z")
ITEM_RE = re.compile(r"^([0-9a-f]{24}):([0-9]+)\Z")
CHUNK_RE = re.compile(r"^([0-9a-f]{24})x([0-9a-f]{8})x([0-9a-f]{8})\Z")
MAX_ITEMS = 1 << 32
MAX_BATCH = 1000  # items of one chunk, at most


def item_id(array_id: str, index: int) -> str:
    """The job id of item ``index`` of array ``array_id``."""
    if not 0 <= index < MAX_ITEMS:
        raise ValueError(f"an array's item index is 0..{MAX_ITEMS - 1}, got {index}")
    return f"{array_id}{index:08x}"


MERGED = ("params", "inputs", "env", "labels")  # an item's fields merged into the common ones
BOX = "box"  # an item's own sealed secrets, among its fields (not a spec field)


def item_spec(common: JobSpec, fields: str, index: int, sig: str = "") -> JobSpec:
    """Item ``index``'s spec: ``common`` (its ``task`` is ``(0, count)``) with ``fields``
    (JSON, as signed) over it, sealed with the item's box or else the common one;
    :class:`SpecError` when the result is not a valid spec."""
    own: dict[str, Any] = json.loads(fields)
    data = common.model_dump(exclude={"seal", "task"})
    for name, value in own.items():
        if name == BOX:
            continue
        data[name] = {**data[name], **value} if name in MERGED else value
    count = common.task[1] if common.task else index + 1
    data["task"] = (index, count)
    box = own.get(BOX) or (common.seal.box if common.seal else "")
    data["seal"] = Seal(box=box, item=fields, item_sig=sig)
    return build_spec(JobSpec.model_validate, data)


def item_fields(common: dict[str, Any], item: dict[str, Any], box: str = "") -> dict[str, Any]:
    """What item ``item`` (a spec's JSON form) has of its own over ``common`` (the common
    spec's): the inverse of :func:`item_spec`."""
    out: dict[str, Any] = {}
    for name, value in item.items():
        if name in ("seal", "task"):
            continue
        mine = common.get(name)
        if name in MERGED:
            base: dict[str, Any] = mine or {}
            if not set(base) <= set(value):  # merged over: an item cannot drop a key
                raise ValueError(f"{name}: an item's keys must include the common ones")
            own = {k: v for k, v in value.items() if k not in base or base[k] != v}
            if own:
                out[name] = own
        elif value != mine:
            out[name] = value
    if box:
        out[BOX] = box
    return out


def parse_item(text: str) -> tuple[str, int] | None:
    """``ARRAY:INDEX`` as (array id, index); None when ``text`` is not of that form."""
    m = ITEM_RE.match(text)
    if m is None:
        return None
    index = int(m.group(2))
    if index >= MAX_ITEMS:
        return None
    return m.group(1), index


def check_batch(batch: object) -> int:
    """``batch`` as a whole number of items per chunk, 1..MAX_BATCH; SpecError naming
    ``batch`` otherwise."""
    if isinstance(batch, bool) or not isinstance(batch, int):
        raise SpecError("batch", f"expected a whole number of items (1 to {MAX_BATCH}), "
                        f"got {batch!r}")  # fmt: skip
    if not 1 <= batch <= MAX_BATCH:
        raise SpecError("batch", f"expected a whole number from 1 to {MAX_BATCH}, got {batch}")
    return batch


def chunk_id(array_id: str, start: int, stop: int) -> str:
    """The id of the chunk of items ``start..stop-1`` of array ``array_id``."""
    if not 0 <= start < stop <= MAX_ITEMS - 1:
        raise ValueError(f"a chunk holds items start..stop-1 of an array, got {start}..{stop}")
    return f"{array_id}x{start:08x}x{stop:08x}"


def parse_chunk(text: str) -> tuple[str, int, int] | None:
    """A chunk id as (array id, start, stop); None when ``text`` is not one."""
    m = CHUNK_RE.match(text)
    if m is None:
        return None
    start, stop = int(m.group(2), 16), int(m.group(3), 16)
    return (m.group(1), start, stop) if start < stop else None


def chunk_items(chunk: str) -> list[str]:
    """The job ids of a chunk's items, in order; [] when ``chunk`` is not a chunk id."""
    parsed = parse_chunk(chunk)
    if parsed is None:
        return []
    array_id, start, stop = parsed
    return [item_id(array_id, i) for i in range(start, stop)]


def chunks(array_id: str, indexes: list[int], batch: int) -> list[str]:
    """``indexes`` (ascending) cut into chunks of at most ``batch`` consecutive items."""
    out: list[str] = []
    i = 0
    while i < len(indexes):
        j = i + 1
        while j < len(indexes) and j - i < batch and indexes[j] == indexes[j - 1] + 1:
            j += 1
        out.append(chunk_id(array_id, indexes[i], indexes[j - 1] + 1))
        i = j
    return out


__all__ = [
    "ARRAY_ID_RE",
    "BOX",
    "MAX_BATCH",
    "MAX_ITEMS",
    "MERGED",
    "check_batch",
    "chunk_id",
    "chunk_items",
    "chunks",
    "item_fields",
    "item_id",
    "item_spec",
    "parse_chunk",
    "parse_item",
]
