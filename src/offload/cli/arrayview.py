"""Arrays on the command line: ``ARRAY`` (24 hex digits) and ``ARRAY:INDEX`` where a job id
goes, and the array's own view in ``offload status ARRAY``."""

from __future__ import annotations

import json
import time

import click

from offload.broker.status import JobStatus
from offload.errors import SpecError
from offload.producer.client import Client
from offload.spec.arrays import ARRAY_ID_RE, parse_item


def is_array(text: str) -> bool:
    return ARRAY_ID_RE.match(text) is not None


def item_job_id(client: Client, text: str) -> str:
    """``text`` as a job id: itself, or the item ``ARRAY:INDEX`` names (checked against the
    array's size)."""
    item = parse_item(text)
    if item is None:
        return text
    array_id, index = item
    try:
        return client.array(array_id).info.item(index)
    except IndexError as exc:
        raise SpecError("INDEX", str(exc)) from None


def expand(client: Client, ids: list[str]) -> list[str]:
    """Job ids, with each ARRAY replaced by its items' ids and ARRAY:INDEX by that item's."""
    out: list[str] = []
    for text in ids:
        out += client.array(text).ids if is_array(text) else [item_job_id(client, text)]
    return out


def show_status(client: Client, array_id: str, as_json: bool) -> None:
    """Counts by status, progress, rate and time left, the first failures with reasons."""
    array = client.array(array_id)
    st = array.status()
    now = time.time()
    elapsed = max(1e-9, now - array.info.created_at)
    rate = st.ended / elapsed
    left = (st.count - st.ended) / rate if rate > 0 and not st.done else None
    first = [array[i].record() for i in st.failed[:5]]
    if as_json:
        data = {
            "id": array.id,
            "name": array.info.name,
            "count": st.count,
            "batch": array.info.batch or None,
            "by_status": {s.value: n for s, n in st.by_status.items()},
            "by_reason": st.by_reason,
            "ended": st.ended,
            "not_fed": array.not_fed()[0],
            "rate_per_s": rate,
            "seconds_left": left,
            "first_failures": [
                {"index": i, "id": r.id, "status": r.status.value,
                 "reason": r.reason.value if r.reason else None, "message": r.message}
                for i, r in zip(st.failed, first, strict=False)
            ],
        }  # fmt: skip
        click.echo(json.dumps(data, indent=2))
        return
    batched = f", {array.info.batch} a warm container" if array.info.batch else ""
    click.echo(f"{array.id}  {array.info.name}  array of {st.count:,} items{batched}")
    order = [s for s in JobStatus if s in st.by_status]
    click.echo("  ".join(f"{s.value} {st.by_status[s]:,}" for s in order))
    line = f"ended {st.ended:,}/{st.count:,} ({100 * st.ended / st.count:.0f}%)"
    if not st.done:  # once all ended, a rate "since submitted" only decays
        line += f", {rate:.1f} items/s since submitted"
    if left is not None:
        line += f", about {left:.0f}s left at that rate"
    click.echo(line)
    unfed, cancelled = array.not_fed()
    if unfed and not cancelled:
        click.echo(f"{unfed:,} of the queued wait in the array, fed to the queue as "
                   f"{array.info.cls or 'their class'} has room")  # fmt: skip
    if st.by_reason:
        click.echo("why items did not succeed: " + ", ".join(
            f"{reason} {n:,}" for reason, n in sorted(st.by_reason.items())
        ))  # fmt: skip
    for i, rec in zip(st.failed, first, strict=False):
        reason = rec.reason.value if rec.reason else rec.status.value
        click.echo(f"  [{i}] {rec.id}  {rec.status.value}  {reason}  {rec.message or ''}")
    if len(st.failed) > len(first):
        click.echo(f"  … offload ls --array {array.id} --status failed")


def cancel(client: Client, array_id: str) -> None:
    before = client.array(array_id).cancel()
    shown = ", ".join(f"{n:,} {s.value}" for s, n in sorted(before.items()))
    click.echo(f"array {array_id}: cancel asked of every item not ended ({shown} before)")


def not_fed(client: Client, array_id: str) -> int:
    """Items of the array not fed to the queue yet (no record: ``ls`` cannot list them)."""
    return client.array(array_id).not_fed()[0]


def is_cancelled(client: Client, array_id: str) -> bool:
    return client.array(array_id).not_fed()[1]


__all__ = [
    "cancel",
    "expand",
    "is_array",
    "is_cancelled",
    "item_job_id",
    "not_fed",
    "show_status",
]
