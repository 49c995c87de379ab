"""Array ids and the ids of their items (no I/O).

An array (:meth:`offload.producer.client.Client.map`) has an id of 24 hex digits. Its item
``i`` is a job whose id is the array's id followed by ``i`` in 8 hex digits: 32 hex digits,
a job id like any other. So an item is found from its array and index, and its array from
the item's id, with nothing stored per item to map one to the other; an array holds at
most 2^32 items. ``ARRAY:INDEX`` names an item on the command line.
"""

from __future__ import annotations

import re

ARRAY_ID_RE = re.compile(r"^[0-9a-f]{24}\Z")
ITEM_RE = re.compile(r"^([0-9a-f]{24}):([0-9]+)\Z")
MAX_ITEMS = 1 << 32


def item_id(array_id: str, index: int) -> str:
    """The job id of item ``index`` of array ``array_id``."""
    if not 0 <= index < MAX_ITEMS:
        raise ValueError(f"an array's item index is 0..{MAX_ITEMS - 1}, got {index}")
    return f"{array_id}{index:08x}"


def parse_item(text: str) -> tuple[str, int] | None:
    """``ARRAY:INDEX`` as (array id, index); None when ``text`` is not of that form."""
    m = ITEM_RE.match(text)
    if m is None:
        return None
    index = int(m.group(2))
    if index >= MAX_ITEMS:
        return None
    return m.group(1), index


__all__ = ["ARRAY_ID_RE", "MAX_ITEMS", "item_id", "parse_item"]
